"""Honest evaluation: a threshold chosen on validation only, test metrics with bootstrap intervals.

The decision threshold is fixed by a documented rule (params.yaml ``evaluate.threshold_rule``) on
the validation split before the test split is scored, so no test label can shape the decision.
Intervals come from a patient-level bootstrap: images of one patient are resampled together.
:func:`score_split` is the one way a labelled set is scored: the test split here, the champion's
re-scoring at the gate, external folders and site samples all call it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumo.config import EvaluateSettings, Settings
from pneumo.data.kermany import CLASSES
from pneumo.decision import Decision, choose_threshold
from pneumo.decision.metrics import POINT_METRICS, binary_metrics, bootstrap_intervals
from pneumo.evaluation import plots
from pneumo.workspace import Workspace, atomic_path

log = logging.getLogger(__name__)

SLICES: tuple[str, ...] = ("bacterial", "viral")


def slice_mask(subtypes: np.ndarray, labels: np.ndarray, subtype: str) -> np.ndarray:
    """Normals plus the pneumonias of one subtype: keeps specificity and AUC defined per slice."""
    return (labels == 0) | (subtypes == subtype)


def score_split(
    labels: np.ndarray,
    probabilities: np.ndarray,
    patient_ids: np.ndarray,
    decision: Decision,
    settings: EvaluateSettings,
    subtypes: np.ndarray | None = None,
    name: str = "test",
) -> dict[str, Any]:
    """Metrics with patient-bootstrap intervals at ``decision``, overall and per pneumonia subtype."""
    report: dict[str, Any] = {"threshold": decision.to_json()}
    parts = {name: np.ones(len(labels), dtype=bool)}
    if subtypes is not None:
        parts.update({f"{name}_{s}": slice_mask(subtypes, labels, s) for s in SLICES})
    for part, mask in parts.items():
        if not mask.any():
            continue
        y, p, groups = labels[mask], probabilities[mask], patient_ids[mask]
        values = binary_metrics(y, p, decision.threshold, settings.calibration_bins)
        values["ci"] = bootstrap_intervals(
            y, p, groups, decision.threshold, settings.bootstrap_samples, settings.ci_level,
            settings.seed, settings.calibration_bins,
        )  # fmt: skip
        report[part] = values
    return report


def evaluate(settings: Settings, workspace: Workspace = Workspace()) -> dict[str, Any]:
    """Score the trained model: threshold on val, metrics on test, plots, MLflow logging."""
    from pneumo.accel import configure_threads
    from pneumo.data.preprocess import load_arrays
    from pneumo.inference import predict_proba
    from pneumo.models import load_model

    configure_threads(settings.model.threads)
    from pneumo.inference.runtime import compile_network

    model, _ = load_model(workspace.model)
    # The runtime serving uses (model.runtime): the threshold is chosen on the same numbers.
    model = compile_network(model, settings.model.runtime, settings.model.accelerator())
    accel = settings.model.accelerator()
    tta, batch = settings.model.tta, settings.model.batch_size
    val = load_arrays(workspace.arrays("val"))
    p_val = predict_proba(model, val["images"], batch, tta=tta, accel=accel)
    decision = choose_threshold(val["labels"], p_val, settings.evaluate, tta=tta)
    # The test split is touched only now, after the decision is frozen.
    test = load_arrays(workspace.arrays("test"))
    p_test = predict_proba(model, test["images"], batch, tta=tta, accel=accel)
    report = score_split(test["labels"], p_test, test["patient_ids"], decision, settings.evaluate,
                   test["subtypes"])  # fmt: skip
    report["test_source"] = test_source(workspace)
    report["val"] = binary_metrics(val["labels"], p_val, decision.threshold)
    referred = decision.refers(p_val)
    wrong = decision.positive(p_val) != val["labels"].astype(bool)
    report["val_referral"] = {
        "rule": settings.evaluate.referral, "band": list(decision.referral_band),
        "rate": float(referred.mean()),
        "error_unreferred": float(wrong[~referred].mean()) if (~referred).any() else 0.0,
    }  # fmt: skip
    decision.save(workspace.decision)
    with atomic_path(workspace.eval_metrics) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    test_figures = report.get("test") or {}
    workspace.write_summary("evaluate", {f"test_{k}": test_figures.get(k)
                                         for k in ("roc_auc", "sensitivity", "specificity")})  # fmt: skip
    predictions = pd.DataFrame(
        {
            "path": test["paths"],
            "actual": np.asarray(CLASSES)[test["labels"]],
            "predicted": decision.labels(p_test),
            "probability": p_test.round(6),
            "subtype": test["subtypes"],
        }
    )
    with atomic_path(workspace.test_predictions) as tmp:
        predictions.to_csv(tmp, index=False)
    figures = plots.evaluation_curves(workspace.eval_plots, test["labels"], p_test,
                                      decision.threshold, settings.evaluate.calibration_bins)  # fmt: skip
    _log_to_mlflow(
        settings, workspace, report, [*figures, workspace.eval_metrics, workspace.decision], test
    )
    t = report["test"]
    log.info(
        "test: accuracy %.4f, ROC-AUC %.4f, sensitivity %.4f, specificity %.4f at threshold %.4f (%s)",
        t["accuracy"], t["roc_auc"], t["sensitivity"], t["specificity"], decision.threshold, decision.rule,
    )  # fmt: skip
    return report


def test_source(workspace: Workspace) -> str:
    """Where the test split came from (split.json): the dataset's own test/ folder or carved."""
    if not workspace.split_metrics.is_file():
        return "unknown"
    return str(json.loads(workspace.split_metrics.read_text()).get("test_source", "unknown"))


def mlflow_metrics(report: dict[str, Any], part: str = "test") -> dict[str, float]:
    """The report's test point metrics as MLflow names (intervals go to :func:`metrics_table`).

    test -> ``test/roc_auc``, test_viral -> ``test/viral/roc_auc``; the threshold chosen on the
    validation split -> ``val/threshold``.
    """
    flat: dict[str, float] = {"val/threshold": float(report["threshold"]["threshold"])}
    for name_of_part, values in _parts(report, part):
        prefix = name_of_part.replace("_", "/", 1)
        for name in POINT_METRICS:
            value = values.get(name)
            if value is not None and np.isfinite(value):
                flat[f"{prefix}/{name}"] = float(value)
    return flat


def metrics_table(report: dict[str, Any], part: str = "test") -> pd.DataFrame:
    """One row per scored part and metric: value and its bootstrap interval (NaN when none)."""
    rows = []
    for name_of_part, values in _parts(report, part):
        for name in POINT_METRICS:
            low, high = values.get("ci", {}).get(name, (np.nan, np.nan))
            value = values.get(name, np.nan)
            rows.append({"split": name_of_part, "metric": name, "value": value, "ci_low": low,
                         "ci_high": high})  # fmt: skip
    return pd.DataFrame(rows, columns=["split", "metric", "value", "ci_low", "ci_high"])


def _parts(report: dict[str, Any], part: str) -> list[tuple[str, dict[str, Any]]]:
    """The scored parts of a report: ``part`` and its slices (``test``, ``test_viral``, ...)."""
    return [
        (k, v) for k, v in report.items()
        if (k == part or k.startswith(f"{part}_")) and isinstance(v, dict) and "n" in v
    ]  # fmt: skip


def _log_to_mlflow(
    settings: Settings,
    workspace: Workspace,
    report: dict[str, Any],
    files: list[Path],
    test: dict[str, np.ndarray],
) -> None:
    """Add the evaluation to the training's MLflow run (its id is the train stage's output).

    test/ metrics, one table of every metric with its interval, and the test split as an input.
    """
    if not workspace.run_id.is_file():
        log.warning("no MLflow run id at %s; evaluation is not tracked", workspace.run_id)
        return
    from pneumo import tracking

    path = workspace.arrays("test")
    split = tracking.dataset_input(path, test["images"], test["labels"], "test")
    table = metrics_table(report).to_csv(index=False)
    tracking.log_to_run(settings, workspace, workspace.run_id.read_text().strip(),
                        mlflow_metrics(report), files, "evaluate",
                        texts={"metrics_with_intervals.csv": table}, datasets=[split])  # fmt: skip
