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
# At most this many (resample, image) cells at once in a bootstrap: ~32 MB per float array.
_BOOTSTRAP_CELLS = 4_000_000


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


def _bin_index(p: np.ndarray, bins: int) -> np.ndarray:
    return np.clip(np.digitize(p, np.linspace(0.0, 1.0, bins + 1)[1:-1]), 0, bins - 1)


def _binned(y: np.ndarray, p: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    index = _bin_index(p, bins)
    counts = np.bincount(index, minlength=bins)
    filled = counts > 0
    observed = np.bincount(index, weights=y, minlength=bins)[filled] / counts[filled]
    predicted = np.bincount(index, weights=p, minlength=bins)[filled] / counts[filled]
    return observed, predicted, counts[filled] / len(p)


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Binary cross-entropy of probabilities against 0/1 labels."""
    return float(-np.mean(_log_likelihood(np.asarray(y).astype(bool), np.asarray(p, dtype=float))))


def _log_likelihood(positive: np.ndarray, p: np.ndarray) -> np.ndarray:
    clipped = np.clip(p, _LOG_LOSS_EPS, 1 - _LOG_LOSS_EPS)
    return np.where(positive, np.log(clipped), np.log(1 - clipped))


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


def weighted_point_metrics(
    y: np.ndarray, p: np.ndarray, weights: np.ndarray, threshold: float, bins: int = 10
) -> dict[str, np.ndarray]:
    """The point metrics of many resamples of one scored set at once: row s of ``weights``
    (S, N) says how often each image was drawn into resample s.

    Each row gives what :func:`binary_metrics` gives for the resample written out (ROC-AUC as the
    area under the ROC curve over distinct scores, PR-AUC as average precision, NaN where a class
    is absent), to floating-point rounding: only the order of the sums differs. A bootstrap of
    1,000 resamples is one pass over a few (S, N) arrays instead of 1,000 calls to scikit-learn.
    """
    y = np.asarray(y).astype(bool)
    p = np.asarray(p, dtype=float)
    w = np.asarray(weights, dtype=float)
    called = p >= threshold
    positives, negatives = w[:, y].sum(axis=1), w[:, ~y].sum(axis=1)
    total = positives + negatives
    tp, fp = w[:, y & called].sum(axis=1), w[:, ~y & called].sum(axis=1)
    fn, tn = positives - tp, negatives - fp
    with np.errstate(divide="ignore", invalid="ignore"):
        out = {
            "accuracy": (tp + tn) / total,
            "precision": np.where(tp + fp > 0, tp / (tp + fp), 0.0),
            "sensitivity": np.where(positives > 0, tp / positives, np.nan),
            "specificity": np.where(negatives > 0, tn / negatives, np.nan),
            "f1": np.where(tp > 0, 2 * tp / (2 * tp + fp + fn), 0.0),
            **_weighted_ranking(y, p, w, positives, negatives),
            "brier": w @ (p - y) ** 2 / total,
            "ece": _weighted_ece(y, p, w, total, bins),
            "log_loss": -(w @ _log_likelihood(y, p)) / total,
        }
    return out


def _weighted_ece(
    y: np.ndarray, p: np.ndarray, w: np.ndarray, total: np.ndarray, bins: int
) -> np.ndarray:
    one_hot = np.eye(bins)[_bin_index(p, bins)]  # (N, bins)
    counts = w @ one_hot
    filled = np.where(counts > 0, counts, 1.0)
    gap = np.abs((w @ (one_hot * y[:, None])) - (w @ (one_hot * p[:, None]))) / filled
    return (counts / total[:, None] * gap).sum(axis=1)


def _weighted_ranking(
    y: np.ndarray, p: np.ndarray, w: np.ndarray, positives: np.ndarray, negatives: np.ndarray
) -> dict[str, np.ndarray]:
    """ROC-AUC (trapezoids between the ROC points of the distinct scores) and average precision
    (sum over thresholds of recall gained x precision), as scikit-learn defines them."""
    order = np.argsort(-p, kind="mergesort")
    scores = p[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # end of each distinct score
    tps = np.cumsum(w[:, order] * y[order], axis=1)[:, last]
    fps = np.cumsum(w[:, order] * ~y[order], axis=1)[:, last]
    zero = np.zeros((len(w), 1))
    tps_before, fps_before = np.hstack([zero, tps[:, :-1]]), np.hstack([zero, fps[:, :-1]])
    both = (positives > 0) & (negatives > 0)
    area = ((fps - fps_before) * (tps + tps_before)).sum(axis=1) / 2
    called = tps + fps
    precision = np.divide(tps, called, out=np.zeros_like(tps), where=called > 0)
    gained = ((tps - tps_before) * precision).sum(axis=1)
    return {
        "roc_auc": np.where(both, area / (positives * negatives), np.nan),
        "pr_auc": np.where(both, gained / positives, np.nan),
    }


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
    """Percentile intervals of every point metric, resampling whole patients with replacement.

    Each resample draws as many patients as there are from ``seed``, one draw per resample (so
    the resamples do not depend on how many are scored together), and is scored as the images it
    holds, many resamples at a time (:func:`weighted_point_metrics`).
    """
    if samples == 0:
        return {}
    y, p = np.asarray(y), np.asarray(p, dtype=float)
    rng = np.random.default_rng(seed)
    codes, uniques = pd.factorize(pd.Series(groups))
    patients = len(uniques)
    drawn: dict[str, list[np.ndarray]] = {name: [] for name in POINT_METRICS}
    rows = max(1, _BOOTSTRAP_CELLS // max(1, len(y)))  # resamples scored together
    for start in range(0, samples, rows):
        weights = np.stack([
            np.bincount(rng.integers(0, patients, patients), minlength=patients)[codes]
            for _ in range(min(rows, samples - start))
        ])  # fmt: skip
        values = weighted_point_metrics(y, p, weights, threshold, bins)
        for name in POINT_METRICS:
            drawn[name].append(values[name])
    alpha = (1.0 - level) / 2
    return {
        name: [float(np.nanquantile(v, alpha)), float(np.nanquantile(v, 1 - alpha))]
        for name, v in ((name, np.concatenate(parts)) for name, parts in drawn.items())
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
