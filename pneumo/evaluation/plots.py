"""Figures people look at instead of reading tables: training curves, ROC/PR/calibration/confusion,
and the stress benchmark. CSVs beside them feed `dvc plots`; PNGs go to MLflow and the reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from pneumo.data.kermany import CLASSES
from pneumo.decision.metrics import binary_metrics, calibration_curve
from pneumo.workspace import atomic_path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path, dpi: int = 100) -> Path:
    with atomic_path(path) as tmp:
        # tight: legends and long tick labels placed outside the axes stay in the picture
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.15)
    _pyplot().close(fig)
    return path


def training_curves(path: Path, history: list[dict[str, float]], best_epoch: int) -> Path:
    """Loss (train vs validation) and validation ROC-AUC/accuracy/specificity per epoch."""
    plt = _pyplot()
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], label="train (augmented)")
    ax_loss.plot(epochs, [r["val_log_loss"] for r in history], label="validation")
    ax_loss.set(xlabel="epoch", ylabel="binary cross-entropy", title="loss")
    for key in ("val_roc_auc", "val_accuracy", "val_specificity"):
        ax_val.plot(epochs, [r[key] for r in history], label=key.removeprefix("val_"))
    ax_val.set(xlabel="epoch", title="validation (threshold 0.5)", ylim=(0.5, 1.0))
    for ax in (ax_loss, ax_val):
        ax.axvline(best_epoch, color="grey", linestyle=":", label="selected epoch")
        ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def evaluation_curves(
    out_dir: Path, labels: np.ndarray, probabilities: np.ndarray, threshold: float, bins: int,
    split: str = "test",
) -> list[Path]:  # fmt: skip
    """ROC, PR, calibration and confusion: CSV for `dvc plots`, one PNG for people and MLflow."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fpr, tpr, _ = skm.roc_curve(labels, probabilities)
    precision, recall, _ = skm.precision_recall_curve(labels, probabilities)
    observed, predicted = calibration_curve(labels, probabilities, bins)
    curves = {
        "roc": pd.DataFrame({"fpr": fpr, "tpr": tpr}),
        "pr": pd.DataFrame({"recall": recall, "precision": precision}),
        "calibration": pd.DataFrame({"mean_predicted": predicted, "observed_rate": observed}),
    }
    written = []
    for name, frame in curves.items():
        with atomic_path(out_dir / f"{name}.csv") as tmp:
            frame.to_csv(tmp, index=False)
        written.append(out_dir / f"{name}.csv")
    at = binary_metrics(labels, probabilities, threshold, bins)
    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.4))
    ax = axes[0]
    ax.plot(fpr, tpr, lw=2, label=f"AUC {at['roc_auc']:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.scatter([1 - at["specificity"]], [at["sensitivity"]], c="red", zorder=3, label="threshold")
    ax.set(title=f"ROC ({split})", xlabel="1 - specificity", ylabel="sensitivity")
    ax.legend(loc="lower right")
    ax = axes[1]
    ax.plot(recall, precision, lw=2, label=f"AP {at['pr_auc']:.3f}")
    ax.set(title=f"Precision-recall ({split})", xlabel="recall", ylabel="precision", ylim=(0, 1.02))
    ax.legend(loc="lower left")
    ax = axes[2]
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.plot(predicted, observed, marker="o", lw=2, label=f"ECE {at['ece']:.3f}")
    ax.set(title=f"Calibration ({split})", xlabel="mean predicted P(pneumonia)", ylabel="observed")
    ax.legend(loc="upper left")
    ax = axes[3]
    c = at["confusion"]
    matrix = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
    ax.imshow(matrix, cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=14,
                color="white" if v > matrix.max() / 2 else "black")  # fmt: skip
    ax.set(title=f"Confusion at threshold {threshold:.3f}", xlabel="predicted", ylabel="actual",
           xticks=[0, 1], yticks=[0, 1], xticklabels=CLASSES, yticklabels=CLASSES)  # fmt: skip
    fig.tight_layout()
    written.append(_save(fig, out_dir / "evaluation.png", dpi=110))
    return written


def stress_chart(path: Path, frame: pd.DataFrame, clean: dict[str, float]) -> Path:
    """ROC-AUC and specificity per shift and severity, against the clean validation split."""
    plt = _pyplot()
    shifts = list(dict.fromkeys(frame["shift"]))
    x = np.arange(len(shifts))
    fig, axes = plt.subplots(1, 2, figsize=(16, 4.6))
    for ax, metric in zip(axes, ("roc_auc", "specificity"), strict=True):
        for offset, severity in ((-0.2, 1), (0.2, 2)):
            values = frame[frame["severity"] == severity].set_index("shift").loc[shifts, metric]
            ax.bar(x + offset, values, width=0.4, label=f"severity {severity}")
        ax.axhline(clean[metric], color="black", linestyle="--", label="clean")
        ax.set_xticks(x, shifts, rotation=45, ha="right")
        ax.set(title=f"{metric} under acquisition shifts (validation)", ylim=(0.0, 1.0))
        ax.legend(loc="lower left")
    fig.tight_layout()
    return _save(fig, path)
