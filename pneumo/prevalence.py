"""A site's pneumonia prevalence from unlabelled probabilities: EM and BBSE, with intervals.

Shared by `pneumo adapt` (move a site's operating point) and the monitor flow (the live
prevalence of a window of the prediction log). EM on the posteriors is the maximum-likelihood
label-shift estimate of Saerens, Latinne & Decaestecker (2002); it needs calibrated posteriors, so
the network's probabilities are first Platt-scaled on validation. BBSE (Lipton et al. 2018)
inverts validation's confusion matrix at the threshold and cross-checks it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pneumo.metrics import binary_metrics

_EPS = 1e-6


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


@dataclass(frozen=True)
class Calibration:
    """Platt scaling fitted on validation: calibrated logit = slope * logit(p) + intercept, for
    a population with the validation split's prevalence (``source_prior``)."""

    slope: float
    intercept: float
    source_prior: float

    def __call__(self, probabilities: np.ndarray) -> np.ndarray:
        return _sigmoid(self.slope * logit(probabilities) + self.intercept)


def fit_calibration(labels: np.ndarray, probabilities: np.ndarray) -> Calibration:
    """Platt scaling (scikit-learn's logistic regression on the logit, lightly regularised)."""
    from sklearn.linear_model import LogisticRegression

    x = logit(probabilities).reshape(-1, 1)
    fitted = LogisticRegression(C=10.0).fit(x, labels)
    return Calibration(float(fitted.coef_[0, 0]), float(fitted.intercept_[0]),
                       float(np.mean(labels)))  # fmt: skip


def em_prevalence(calibrated: np.ndarray, source_prior: float, max_iter: int = 500) -> float:
    """The prior that maximises the likelihood of unlabelled posteriors (Saerens et al. 2002)."""
    p = np.clip(np.asarray(calibrated, dtype=float), _EPS, 1 - _EPS)
    prior = source_prior
    for _ in range(max_iter):
        positive = prior / source_prior * p
        negative = (1 - prior) / (1 - source_prior) * (1 - p)
        updated = float(np.mean(positive / (positive + negative)))
        if abs(updated - prior) < 1e-7:
            return updated
        prior = updated
    return prior


def bbse_prevalence(positive_rate: float, tpr: float, fpr: float) -> float:
    """Black-box shift estimation for two classes: q = tpr * pi + fpr * (1 - pi), solved for pi."""
    if tpr - fpr < 1e-3:
        return math.nan
    return float(np.clip((positive_rate - fpr) / (tpr - fpr), 0.0, 1.0))


@dataclass(frozen=True)
class PrevalenceEstimate:
    em: float
    em_interval: tuple[float, float]
    bbse: float
    bbse_interval: tuple[float, float]
    n: int

    @property
    def width(self) -> float:
        return self.em_interval[1] - self.em_interval[0]


def estimate_prevalence(
    site: np.ndarray,
    calibration: Calibration,
    val_labels: np.ndarray,
    val_probabilities: np.ndarray,
    threshold: float,
    samples: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> PrevalenceEstimate:
    """EM and BBSE estimates of the site's prevalence from its raw probabilities, with
    percentile bootstrap intervals over the site's images."""
    val = binary_metrics(val_labels, val_probabilities, threshold)
    tpr, fpr = val["sensitivity"], 1 - val["specificity"]
    calibrated = calibration(site)
    positive = np.asarray(site) >= threshold
    rng = np.random.default_rng(seed)
    em_draws, bbse_draws = [], []
    for _ in range(samples):
        index = rng.integers(0, len(site), len(site))
        em_draws.append(em_prevalence(calibrated[index], calibration.source_prior))
        bbse_draws.append(bbse_prevalence(float(positive[index].mean()), tpr, fpr))
    tail = (1 - level) / 2 * 100

    def interval(draws: list[float]) -> tuple[float, float]:
        low, high = np.nanpercentile(draws, [tail, 100 - tail])
        return float(low), float(high)

    return PrevalenceEstimate(
        em=em_prevalence(calibrated, calibration.source_prior), em_interval=interval(em_draws),
        bbse=bbse_prevalence(float(positive.mean()), tpr, fpr), bbse_interval=interval(bbse_draws),
        n=len(site),
    )  # fmt: skip
