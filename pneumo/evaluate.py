"""Honest evaluation: a threshold chosen on validation only, test metrics with bootstrap intervals.

The decision threshold is fixed by a documented rule (params.yaml ``evaluate.threshold_rule``) on
the validation split before the test split is scored, so no test label can shape the decision.
Intervals come from a patient-level bootstrap: images of one patient are resampled together.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from pneumo.config import EvaluateSettings, Settings
from pneumo.workspace import Workspace, atomic_path

log = logging.getLogger(__name__)

POINT_METRICS: tuple[str, ...] = (
    "accuracy", "precision", "sensitivity", "specificity", "f1",
    "roc_auc", "pr_auc", "brier", "ece",
)  # fmt: skip
SLICES: tuple[str, ...] = ("bacterial", "viral")


@dataclass(frozen=True)
class Decision:
    """The operating point: what probability counts as pneumonia, and how it was chosen."""

    threshold: float
    rule: str
    val_sensitivity: float
    val_specificity: float

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Mean |observed pneumonia rate - mean predicted probability| over equal-width bins."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        in_bin = index == b
        if in_bin.any():
            error += in_bin.mean() * abs(y[in_bin].mean() - p[in_bin].mean())
    return float(error)


def binary_metrics(
    y: np.ndarray, p: np.ndarray, threshold: float, bins: int = 10
) -> dict[str, Any]:
    """Every metric reviewers ask for, at one threshold; AUCs are NaN when one class is absent."""
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    both = len(np.unique(y)) == 2
    return {
        "accuracy": float(skm.accuracy_score(y, pred)),
        "precision": float(skm.precision_score(y, pred, zero_division=0)),
        "sensitivity": float(skm.recall_score(y, pred, zero_division=0)),
        "specificity": float(tn / (tn + fp)) if tn + fp else float("nan"),
        "f1": float(skm.f1_score(y, pred, zero_division=0)),
        "roc_auc": float(skm.roc_auc_score(y, p)) if both else float("nan"),
        "pr_auc": float(skm.average_precision_score(y, p)) if both else float("nan"),
        "brier": float(skm.brier_score_loss(y, p, pos_label=1)),
        "ece": expected_calibration_error(y, p, bins),
        "confusion": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
        "n": len(y),
    }


def choose_threshold(y_val: np.ndarray, p_val: np.ndarray, settings: EvaluateSettings) -> Decision:
    """Pick the decision threshold from validation labels and probabilities only."""
    y_val = np.asarray(y_val).astype(int)
    fpr, tpr, thresholds = skm.roc_curve(y_val, p_val)
    finite = np.isfinite(thresholds)
    fpr, tpr, thresholds = fpr[finite], tpr[finite], thresholds[finite]
    if settings.threshold_rule == "fixed":
        threshold = settings.fixed_threshold
    elif settings.threshold_rule == "target_sensitivity":
        reaching = thresholds[tpr >= settings.target_sensitivity]
        threshold = float(reaching.max()) if len(reaching) else float(thresholds.min())
    else:
        # On a near-separable validation split many thresholds tie for the best J. Acquisition
        # shift (new scanners, new sites) raises normal radiographs' scores, so specificity is
        # what collapses out of distribution: by default take the most specific of the near-best
        # thresholds; `centre` takes the middle of that plateau in logit space instead.
        j = tpr - fpr
        plateau = thresholds[j >= j.max() - settings.youden_tolerance]
        if settings.youden_tiebreak == "most_specific":
            threshold = float(plateau.max())
        else:
            low, high = _logit(plateau.min()), _logit(plateau.max())
            threshold = float(1.0 / (1.0 + np.exp(-(low + high) / 2)))
    threshold = float(np.clip(threshold, 1e-6, 1 - 1e-6))
    at = binary_metrics(y_val, p_val, threshold)
    return Decision(threshold, settings.threshold_rule, at["sensitivity"], at["specificity"])


def _logit(p: float) -> float:
    p = float(np.clip(p, 1e-6, 1 - 1e-6))
    return float(np.log(p / (1 - p)))


def bootstrap_intervals(
    y: np.ndarray,
    p: np.ndarray,
    groups: np.ndarray,
    threshold: float,
    settings: EvaluateSettings,
) -> dict[str, list[float]]:
    """Percentile intervals of every metric, resampling whole patients with replacement."""
    if settings.bootstrap_samples == 0:
        return {}
    rng = np.random.default_rng(settings.seed)
    codes, uniques = pd.factorize(pd.Series(groups))
    members = [np.flatnonzero(codes == g) for g in range(len(uniques))]
    samples = {name: [] for name in POINT_METRICS}
    for _ in range(settings.bootstrap_samples):
        chosen = rng.integers(0, len(members), len(members))
        idx = np.concatenate([members[g] for g in chosen])
        values = binary_metrics(y[idx], p[idx], threshold, settings.calibration_bins)
        for name in POINT_METRICS:
            samples[name].append(values[name])
    alpha = (1.0 - settings.ci_level) / 2
    return {
        name: [float(np.nanquantile(v, alpha)), float(np.nanquantile(v, 1 - alpha))]
        for name, v in samples.items()
    }


def slice_mask(subtypes: np.ndarray, labels: np.ndarray, subtype: str) -> np.ndarray:
    """Normals plus the pneumonias of one subtype: keeps specificity and AUC defined per slice."""
    return (labels == 0) | (subtypes == subtype)


def evaluation_report(
    labels: np.ndarray,
    probabilities: np.ndarray,
    subtypes: np.ndarray,
    patient_ids: np.ndarray,
    decision: Decision,
    settings: EvaluateSettings,
) -> dict[str, Any]:
    """Overall and per-subtype metrics with intervals, at the validation-chosen threshold."""
    report: dict[str, Any] = {"threshold": decision.to_json()}
    parts = {"test": np.ones(len(labels), dtype=bool)}
    parts.update({f"test_{s}": slice_mask(subtypes, labels, s) for s in SLICES})
    for name, mask in parts.items():
        if not mask.any():
            continue
        y, p, g = labels[mask], probabilities[mask], patient_ids[mask]
        values = binary_metrics(y, p, decision.threshold, settings.calibration_bins)
        values["ci"] = bootstrap_intervals(y, p, g, decision.threshold, settings)
        report[name] = values
    return report


def write_plots(
    out_dir: Path,
    labels: np.ndarray,
    probabilities: np.ndarray,
    threshold: float,
    bins: int,
) -> list[Path]:
    """ROC, PR, calibration and confusion: CSV for `dvc plots`, PNG for people and MLflow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    fpr, tpr, _ = skm.roc_curve(labels, probabilities)
    precision, recall, _ = skm.precision_recall_curve(labels, probabilities)
    frac_pos, mean_pred = _calibration_curve(labels, probabilities, bins)
    curves = {
        "roc": pd.DataFrame({"fpr": fpr, "tpr": tpr}),
        "pr": pd.DataFrame({"recall": recall, "precision": precision}),
        "calibration": pd.DataFrame({"mean_predicted": mean_pred, "observed_rate": frac_pos}),
    }
    for name, frame in curves.items():
        with atomic_path(out_dir / f"{name}.csv") as tmp:
            frame.to_csv(tmp, index=False)
        written.append(out_dir / f"{name}.csv")

    at = binary_metrics(labels, probabilities, threshold, bins)
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.4))
    ax = axes[0]
    ax.plot(fpr, tpr, lw=2, label=f"AUC {at['roc_auc']:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.scatter([1 - at["specificity"]], [at["sensitivity"]], c="red", zorder=3, label="threshold")
    ax.set(title="ROC (test)", xlabel="1 - specificity", ylabel="sensitivity")
    ax.legend(loc="lower right")
    ax = axes[1]
    ax.plot(recall, precision, lw=2, label=f"AP {at['pr_auc']:.3f}")
    ax.set(title="Precision-recall (test)", xlabel="recall", ylabel="precision", ylim=(0, 1.02))
    ax.legend(loc="lower left")
    ax = axes[2]
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.plot(mean_pred, frac_pos, marker="o", lw=2, label=f"ECE {at['ece']:.3f}")
    ax.set(title="Calibration (test)", xlabel="mean predicted P(pneumonia)", ylabel="observed rate")
    ax.legend(loc="upper left")
    ax = axes[3]
    c = at["confusion"]
    matrix = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
    ax.imshow(matrix, cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=14,
                color="white" if v > matrix.max() / 2 else "black")  # fmt: skip
    ax.set(title=f"Confusion at threshold {threshold:.3f}", xlabel="predicted", ylabel="actual",
           xticks=[0, 1], yticks=[0, 1], xticklabels=["NORMAL", "PNEUMONIA"],
           yticklabels=["NORMAL", "PNEUMONIA"])  # fmt: skip
    fig.tight_layout()
    with atomic_path(out_dir / "evaluation.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    written.append(out_dir / "evaluation.png")
    return written


def _calibration_curve(y: np.ndarray, p: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    filled = [b for b in range(bins) if (index == b).any()]
    observed = np.array([y[index == b].mean() for b in filled])
    predicted = np.array([p[index == b].mean() for b in filled])
    return observed, predicted


def evaluate(settings: Settings, workspace: Workspace = Workspace()) -> dict[str, Any]:
    """Score the trained model: threshold on val, metrics on test, plots, MLflow logging."""
    from pneumo.data.preprocess import load_arrays
    from pneumo.inference import configure_threads, predict_proba
    from pneumo.models import load_model

    configure_threads(settings.train.threads)
    model, metadata = load_model(workspace.model)
    val = load_arrays(workspace.arrays("val"))
    test = load_arrays(workspace.arrays("test"))
    tta = bool(metadata.get("tta", settings.model.tta))
    batch = settings.evaluate.batch_size
    p_val = predict_proba(model, val["images"], batch, tta=tta)
    decision = choose_threshold(val["labels"], p_val, settings.evaluate)
    # The test split is touched only now, after the decision is frozen.
    p_test = predict_proba(model, test["images"], batch, tta=tta)
    report = evaluation_report(
        test["labels"], p_test, test["subtypes"], test["patient_ids"], decision, settings.evaluate
    )
    report["val"] = binary_metrics(val["labels"], p_val, decision.threshold)
    with atomic_path(workspace.decision) as tmp:
        tmp.write_text(json.dumps({**decision.to_json(), "tta": tta}, indent=2) + "\n")
    with atomic_path(workspace.eval_metrics) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    predictions = pd.DataFrame(
        {
            "path": test["paths"],
            "actual": np.where(test["labels"] == 1, "PNEUMONIA", "NORMAL"),
            "predicted": np.where(p_test >= decision.threshold, "PNEUMONIA", "NORMAL"),
            "probability": p_test.round(6),
            "subtype": test["subtypes"],
        }
    )
    with atomic_path(workspace.test_predictions) as tmp:
        predictions.to_csv(tmp, index=False)
    plots = write_plots(
        workspace.eval_plots,
        test["labels"],
        p_test,
        decision.threshold,
        settings.evaluate.calibration_bins,
    )
    _log_to_mlflow(
        settings, workspace, report, [*plots, workspace.eval_metrics, workspace.decision]
    )
    t = report["test"]
    log.info(
        "test: accuracy %.4f, ROC-AUC %.4f, sensitivity %.4f, specificity %.4f at threshold %.4f (%s)",
        t["accuracy"], t["roc_auc"], t["sensitivity"], t["specificity"], decision.threshold, decision.rule,
    )  # fmt: skip
    return report


def flat_metrics(report: dict[str, Any]) -> dict[str, float]:
    """{'test': {'accuracy': ..}} -> {'test_accuracy': ..}, numbers only, for MLflow."""
    flat: dict[str, float] = {"threshold": float(report["threshold"]["threshold"])}
    for part, values in report.items():
        if part == "threshold":
            continue
        for name in POINT_METRICS:
            value = values.get(name)
            if value is not None and np.isfinite(value):
                flat[f"{part}_{name}"] = float(value)
        for name, (low, high) in values.get("ci", {}).items():
            if np.isfinite(low) and np.isfinite(high):
                flat[f"{part}_{name}_ci_low"] = float(low)
                flat[f"{part}_{name}_ci_high"] = float(high)
    return flat


def _log_to_mlflow(
    settings: Settings, workspace: Workspace, report: dict[str, Any], files: list[Path]
) -> None:
    """Add the evaluation to the training's MLflow run (its id is the train stage's output)."""
    if not workspace.run_id.is_file():
        log.warning("no MLflow run id at %s; evaluation is not tracked", workspace.run_id)
        return
    from pneumo import tracking

    tracking.log_to_run(
        settings,
        workspace,
        workspace.run_id.read_text().strip(),
        flat_metrics(report),
        files,
        "evaluate",
    )
