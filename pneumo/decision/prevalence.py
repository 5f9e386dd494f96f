"""A site's pneumonia prevalence from unlabelled probabilities: EM and BBSE, with intervals.

Shared by `pneumo adapt` (move a site's operating point) and the monitor flow (the live
prevalence of a window of the prediction log). EM on the posteriors is the maximum-likelihood
label-shift estimate of Saerens, Latinne & Decaestecker (2002); it needs calibrated posteriors, so
the network's probabilities are first Platt-scaled on validation. BBSE (Lipton et al. 2018)
inverts validation's confusion matrix at the threshold and cross-checks it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from pneumo.decision import Decision
from pneumo.decision.metrics import binary_metrics, point_metrics

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
    return float(em_prevalences(np.asarray(calibrated)[None, :], source_prior, max_iter)[0])


def em_prevalences(
    calibrated: np.ndarray, source_prior: float, max_iter: int = 500
) -> np.ndarray:
    """EM on each row of ``calibrated`` at once (a bootstrap's draws): each row stops when its
    own prior moves less than 1e-7, so every row gets what `em_prevalence` alone would give."""
    p = np.clip(np.asarray(calibrated, dtype=float), _EPS, 1 - _EPS)
    prior = np.full(len(p), float(source_prior))
    active = np.arange(len(p))
    for _ in range(max_iter):
        rows, current = p[active], prior[active, None]
        positive = current / source_prior * rows
        negative = (1 - current) / (1 - source_prior) * (1 - rows)
        updated = np.mean(positive / (positive + negative), axis=1)
        moving = np.abs(updated - prior[active]) >= 1e-7
        prior[active] = updated
        active = active[moving]
        if not len(active):
            break
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
    draws = [rng.integers(0, len(site), len(site)) for _ in range(samples)]
    drawn = np.array(draws, dtype=int).reshape(samples, len(site))
    em_draws = list(em_prevalences(calibrated[drawn], calibration.source_prior))
    bbse_draws = [bbse_prevalence(float(positive[index].mean()), tpr, fpr) for index in draws]
    tail = (1 - level) / 2 * 100

    def interval(draws: list[float]) -> tuple[float, float]:
        low, high = np.nanpercentile(draws, [tail, 100 - tail])
        return float(low), float(high)

    return PrevalenceEstimate(
        em=em_prevalence(calibrated, calibration.source_prior), em_interval=interval(em_draws),
        bbse=bbse_prevalence(float(positive.mean()), tpr, fpr), bbse_interval=interval(bbse_draws),
        n=len(site),
    )  # fmt: skip


def moved_decision(base: Decision, calibration: Calibration, site_prior: float) -> Decision:
    """``base`` with the prior-shift correction from the validation prior to ``site_prior``.

    The shift is computed on the calibrated scale and divided by the Platt slope, so it applies
    to the network's raw probabilities with the validation-chosen threshold unchanged.
    """
    source = calibration.source_prior
    shift = float(logit(np.array(site_prior))[()] - logit(np.array(source))[()])
    return replace(base, prior_log_odds=base.prior_log_odds + shift / calibration.slope,
                   rule=f"{base.rule}+adapt")  # fmt: skip


def simulated_site(labels: np.ndarray, prevalence: float, n: int, seed: int) -> np.ndarray:
    """Indices of the validation split resampled (with replacement) to ``prevalence``."""
    rng = np.random.default_rng(seed)
    positives = round(n * prevalence)
    return np.concatenate([
        rng.choice(np.flatnonzero(labels == 1), positives, replace=True),
        rng.choice(np.flatnonzero(labels == 0), n - positives, replace=True),
    ])  # fmt: skip


def judge_move(
    estimate: PrevalenceEstimate,
    base: Decision,
    moved: Decision,
    val_labels: np.ndarray,
    val_probabilities: np.ndarray,
    min_sensitivity: float,
    reference_prior: float,
    seed: int = 0,
    ranking: bool = True,
) -> tuple[bool, list[str], dict[str, dict[str, float]]]:
    """(move?, why, metrics of both decisions on simulated sites at the estimated prevalence).

    The judgement reads rates only; ``ranking=False`` skips the sites' ROC/PR curves (NaN).
    """
    low, high = estimate.em_interval
    reasons = []
    simulated: dict[str, list[dict[str, float]]] = {"validation": [], "adapted": []}
    for draw in range(20):
        index = simulated_site(val_labels, estimate.em, 2000, seed + draw)
        y, p = val_labels[index], val_probabilities[index]
        for name, decision in (("validation", base), ("adapted", moved)):
            simulated[name].append(point_metrics(binary_metrics(
                y, decision.adjust(p), decision.threshold, ranking=ranking)))  # fmt: skip
    mean = {name: {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
            for name, rows in simulated.items()}  # fmt: skip
    if low <= reference_prior <= high:
        reasons.append(f"the site's prevalence {estimate.em:.3f} [{low:.3f}-{high:.3f}] does not "
                       f"differ from validation's {reference_prior:.3f}: nothing to adapt")  # fmt: skip
    if mean["adapted"]["sensitivity"] < min_sensitivity:
        reasons.append(f"moving would lower sensitivity to {mean['adapted']['sensitivity']:.3f} "
                       f"on simulated sites at that prevalence (floor {min_sensitivity})")  # fmt: skip
    if mean["adapted"]["accuracy"] < mean["validation"]["accuracy"]:
        reasons.append("moving would not raise accuracy on simulated sites at that prevalence")
    if reasons:
        return False, reasons, mean
    gain = mean["adapted"]["accuracy"] - mean["validation"]["accuracy"]
    return True, [f"prevalence {estimate.em:.3f} [{low:.3f}-{high:.3f}] differs from "
                  f"validation's {reference_prior:.3f}; accuracy +{gain:.3f} on simulated sites, "
                  f"sensitivity {mean['adapted']['sensitivity']:.3f}"], mean  # fmt: skip
