"""Baselines on the same split as the default model, beside the published results.

A logistic regression on downsampled pixels and the seed paper's 1-4-block CNNs are trained on our
train split, thresholded on our validation split and scored on our test split, exactly like the
default model. Published numbers are on the official Kermany test split: a different test set,
shown for orientation, not as a like-for-like comparison.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumo.config import Settings
from pneumo.decision import choose_threshold
from pneumo.decision.metrics import binary_metrics
from pneumo.workspace import Workspace, atomic_path

log = logging.getLogger(__name__)

PUBLISHED: tuple[dict[str, Any], ...] = (
    {"model": "paper CNN, 1 block", "accuracy": 0.8974},
    {"model": "paper CNN, 2 blocks", "accuracy": 0.8526},
    {"model": "paper CNN, 3 blocks", "accuracy": 0.9231},
    {"model": "paper CNN, 4 blocks", "accuracy": 0.9167},
    {
        "model": "Kermany et al. 2018 (transfer learning)",
        "accuracy": 0.928,
        "sensitivity": 0.932,
        "specificity": 0.901,
        "roc_auc": 0.968,
    },
)
COLUMNS: tuple[str, ...] = (
    "model", "source", "test_split", "accuracy", "sensitivity", "specificity", "f1", "roc_auc",
    "threshold",
)  # fmt: skip


def _row(
    name: str, y_val, p_val, y_test, p_test, settings: Settings, test_split: str
) -> dict[str, Any]:
    decision = choose_threshold(y_val, p_val, settings.evaluate)
    m = binary_metrics(y_test, p_test, decision.threshold)
    return {
        "model": name,
        "source": "measured here",
        "test_split": test_split,
        **{k: m[k] for k in ("accuracy", "sensitivity", "specificity", "f1", "roc_auc")},
        "threshold": decision.threshold,
    }


def logistic_pixels(
    data: dict[str, dict[str, np.ndarray]], settings: Settings
) -> tuple[np.ndarray, np.ndarray]:
    """Logistic regression on per-image standardised, area-downsampled pixels -> (p_val, p_test)."""
    import torch
    from sklearn.linear_model import LogisticRegression

    from pneumo.data.transforms import standardize

    side = settings.compare.logistic_image_size

    def features(images: np.ndarray) -> np.ndarray:
        x = standardize(torch.from_numpy(images))
        x = torch.nn.functional.adaptive_avg_pool2d(x, side)
        return x.flatten(1).numpy()

    classifier = LogisticRegression(
        C=settings.compare.logistic_c, class_weight="balanced", max_iter=3000
    )
    classifier.fit(features(data["train"]["images"]), data["train"]["labels"])
    return tuple(  # type: ignore[return-value]
        classifier.predict_proba(features(data[s]["images"]))[:, 1] for s in ("val", "test")
    )


def paper_cnn(
    arch: str, data: dict[str, dict[str, np.ndarray]], settings: Settings, workspace: Workspace
) -> tuple[np.ndarray, np.ndarray]:
    """Train one of the paper's CNNs with our training loop in a scratch workspace."""
    from pneumo.inference import predict_proba
    from pneumo.models import load_model
    from pneumo.training.train import train

    variant = settings.model_copy(
        update={
            "model": settings.model.model_copy(update={"arch": arch, "tta": False}),
            "train": settings.train.model_copy(
                update={"epochs": settings.compare.epochs,
                        "warmup_epochs": min(settings.train.warmup_epochs, settings.compare.epochs - 1)}
            ),
        }
    )  # fmt: skip
    scratch = Workspace(
        workspace.root / "reports" / "compare" / arch, shared_arrays=workspace.arrays_dir
    )
    train(variant, scratch, track=False)
    model, _ = load_model(scratch.model)
    batch, accel = settings.model.batch_size, settings.model.accelerator()
    return tuple(  # type: ignore[return-value]
        predict_proba(model, data[s]["images"], batch, accel=accel) for s in ("val", "test")
    )


def compare(settings: Settings, workspace: Workspace = Workspace()) -> pd.DataFrame:
    """Build the comparison table, write it as markdown and CSV, and log it to MLflow."""
    import json

    from pneumo.data.preprocess import load_arrays

    data = {s: load_arrays(workspace.arrays(s)) for s in ("train", "val", "test")}
    y_val, y_test = data["val"]["labels"], data["test"]["labels"]
    from pneumo.evaluation.evaluate import test_source

    source = test_source(workspace)
    rows = []
    p_val, p_test = logistic_pixels(data, settings)
    rows.append(
        _row("logistic regression on pixels", y_val, p_val, y_test, p_test, settings, source)
    )
    for arch in settings.compare.paper_archs:
        log.info("training %s for the comparison", arch)
        p_val, p_test = paper_cnn(arch, data, settings, workspace)
        blocks = arch.removeprefix("paper_cnn")
        rows.append(
            _row(
                f"paper CNN, {blocks} block{'s' if blocks != '1' else ''}",
                y_val,
                p_val,
                y_test,
                p_test,
                settings,
                source,
            )
        )
    if workspace.eval_metrics.is_file():
        report = json.loads(workspace.eval_metrics.read_text())
        t = report["test"]
        rows.append({
            "model": f"pneumo default ({settings.model.arch})",
            "source": "measured here (pneumo evaluate)",
            "test_split": source,
            **{k: t[k] for k in ("accuracy", "sensitivity", "specificity", "f1", "roc_auc")},
            "threshold": report["threshold"]["threshold"],
        })  # fmt: skip
    else:
        log.warning(
            "%s not found: run `pneumo evaluate` to add the default model", workspace.eval_metrics
        )
    for published in PUBLISHED:
        rows.append(
            {"source": "published", "test_split": "official Kermany test (624 images)", **published}
        )
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    write_table(table, workspace.comparison)
    _log_to_mlflow(settings, workspace)
    return table


def to_markdown(table: pd.DataFrame) -> str:
    """A plain markdown table (no extra dependency), numbers as percentages / 3 decimals."""
    shown = table.copy()
    for column in ("accuracy", "sensitivity", "specificity", "f1"):
        shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{100 * v:.1f} %")
    for column in ("roc_auc", "threshold"):
        shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
    header = "| " + " | ".join(shown.columns) + " |"
    rule = "|" + "|".join("---" for _ in shown.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    note = (
        "\nMeasured rows use this workspace's patient-disjoint test split; published rows use the "
        "official Kermany test split, so they orient rather than compare like for like.\n"
    )
    return "\n".join([header, rule, *body]) + "\n" + note


def write_table(table: pd.DataFrame, markdown_path: Path) -> None:
    with atomic_path(markdown_path) as tmp:
        tmp.write_text(to_markdown(table))
    with atomic_path(markdown_path.with_suffix(".csv")) as tmp:
        table.to_csv(tmp, index=False)


def _log_to_mlflow(settings: Settings, workspace: Workspace) -> None:
    from pneumo import tracking

    files = [workspace.comparison, workspace.comparison.with_suffix(".csv")]
    tracking.log_standalone_run(settings, workspace, "compare", files)
