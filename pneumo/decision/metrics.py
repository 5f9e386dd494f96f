"""Every score pneumo reports: one definition, used by training, evaluation, the gate and stress.

Pneumonia is the positive class. AUCs are NaN when a class is absent, so a one-class slice can
never look perfect.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import sklearn
from sklearn import metrics as skm

# The numbers of :func:`binary_metrics` that are single scores (confusion and n are not).
POINT_METRICS: tuple[str, ...] = (
    "accuracy", "precision", "sensitivity", "specificity", "f1",
    "roc_auc", "pr_auc", "brier", "ece", "log_loss",
)  # fmt: skip
# The smallest probability used in the log loss: a confident mistake costs ~16, not infinity.
_LOG_LOSS_EPS = 1e-7


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Mean |observed pneumonia rate - mean predicted probability| over equal-width bins."""
    observed, predicted, weights = _binned(np.asarray(y), np.asarray(p, dtype=float), bins)
    return float(np.sum(weights * np.abs(observed - predicted)))


def calibration_curve(
    y: np.ndarray, p: np.ndarray, bins: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """(observed rate, mean predicted probability) of each non-empty equal-width bin."""
    observed, predicted, _ = _binned(np.asarray(y), np.asarray(p, dtype=float), bins)
    return observed, predicted


def _binned(y: np.ndarray, p: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    index = np.clip(np.digitize(p, np.linspace(0.0, 1.0, bins + 1)[1:-1]), 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    filled = counts > 0
    observed = np.bincount(index, weights=y, minlength=bins)[filled] / counts[filled]
    predicted = np.bincount(index, weights=p, minlength=bins)[filled] / counts[filled]
    return observed, predicted, counts[filled] / len(p)


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Binary cross-entropy of probabilities against 0/1 labels."""
    clipped = np.clip(np.asarray(p, dtype=float), _LOG_LOSS_EPS, 1 - _LOG_LOSS_EPS)
    positive = np.asarray(y).astype(bool)
    return float(-np.mean(np.where(positive, np.log(clipped), np.log(1 - clipped))))


def binary_metrics(
    y: np.ndarray, p: np.ndarray, threshold: float = 0.5, bins: int = 10, ranking: bool = True
) -> dict[str, Any]:
    """Every metric reviewers ask for, at one threshold (a probability >= it means pneumonia).

    ``ranking=False`` leaves ROC-AUC and PR-AUC NaN: the site simulation judges thousands of
    resampled sets by their rates at one threshold, and the curves were most of its minutes.
    """
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    predicted = (p >= threshold).astype(int)
    # The confusion counts directly (skm.confusion_matrix's input checks cost more than the
    # counting, and the stress and site simulations score thousands of small sets).
    tn, fp, fn, tp = (int(n) for n in np.bincount(2 * y + predicted, minlength=4)[:4])
    both = ranking and len(np.unique(y)) == 2
    with sklearn.config_context(skip_parameter_validation=True):
        roc_auc = float(skm.roc_auc_score(y, p)) if both else float("nan")
        pr_auc = float(skm.average_precision_score(y, p)) if both else float("nan")
    return {
        "accuracy": float((tp + tn) / len(y)) if len(y) else float("nan"),
        "precision": float(tp / (tp + fp)) if tp + fp else 0.0,
        "sensitivity": float(tp / (tp + fn)) if tp + fn else float("nan"),
        "specificity": float(tn / (tn + fp)) if tn + fp else float("nan"),
        "f1": float(2 * tp / (2 * tp + fp + fn)) if tp else 0.0,
        "roc_auc": roc_auc,
        "pr_auc": pr_auc,
        "brier": float(np.mean((p - y) ** 2)),
        "ece": expected_calibration_error(y, p, bins),
        "log_loss": log_loss(y, p),
        "confusion": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
        "n": len(y),
    }


def point_metrics(
    values: dict[str, Any], names: tuple[str, ...] = POINT_METRICS
) -> dict[str, float]:
    """The single-number metrics of a report part (NaN for the ones it lacks)."""
    return {name: float(values.get(name, float("nan"))) for name in names}


def bootstrap_intervals(
    y: np.ndarray,
    p: np.ndarray,
    groups: np.ndarray,
    threshold: float,
    samples: int,
    level: float = 0.95,
    seed: int = 0,
    bins: int = 10,
) -> dict[str, list[float]]:
    """Percentile intervals of every point metric, resampling whole patients with replacement."""
    if samples == 0:
        return {}
    y, p = np.asarray(y), np.asarray(p, dtype=float)
    rng = np.random.default_rng(seed)
    codes, uniques = pd.factorize(pd.Series(groups))
    members = [np.flatnonzero(codes == g) for g in range(len(uniques))]
    drawn: dict[str, list[float]] = {name: [] for name in POINT_METRICS}
    for _ in range(samples):
        chosen = rng.integers(0, len(members), len(members))
        index = np.concatenate([members[g] for g in chosen])
        values = binary_metrics(y[index], p[index], threshold, bins)
        for name in POINT_METRICS:
            drawn[name].append(values[name])
    alpha = (1.0 - level) / 2
    return {
        name: [float(np.nanquantile(v, alpha)), float(np.nanquantile(v, 1 - alpha))]
        for name, v in drawn.items()
    }


def precision_tolerance(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float, precision: float
) -> dict[str, float]:
    """How far each metric can move when every probability may move by up to ``precision``.

    Two routes that agree on every probability to ``precision`` (pneumo.inference rounds to
    1e-6) can still break a tie one way and the other: a (pneumonia, normal) pair closer than
    2 x ``precision`` may flip in ROC-AUC, an image that close to the threshold may change its
    call. This bounds the difference, so equality tests say exactly what they tolerate.
    """
    y = np.asarray(labels).astype(bool)
    p = np.asarray(probabilities, dtype=float)
    near = np.abs(p - threshold) <= precision
    positives, negatives = p[y], p[~y]
    close_pairs = np.abs(positives[:, None] - negatives[None, :]) <= 2 * precision
    return {
        "accuracy": near.sum() / max(len(p), 1),
        "sensitivity": near[y].sum() / max(y.sum(), 1),
        "specificity": near[~y].sum() / max((~y).sum(), 1),
        "roc_auc": close_pairs.sum() / max(close_pairs.size, 1),
    }
