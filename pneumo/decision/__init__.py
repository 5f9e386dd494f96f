"""The operating point: which probability means pneumonia, and which calls go to a radiologist.

One :class:`Decision` is chosen on the validation split (``evaluate.threshold_rule``) and saved
as ``decision.json`` beside the weights; evaluation, prediction, explanation, serving and the web
page all call :meth:`Decision.label` and :meth:`Decision.refer`, so the rule cannot drift apart.
A new threshold rule is added in :func:`choose_threshold` and nowhere else.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.config import EvaluateSettings
from pneumo.data.kermany import CLASSES
from pneumo.errors import PipelineOrderError
from pneumo.workspace import atomic_path


@dataclass(frozen=True)
class Decision:
    """Threshold, how it was chosen, and the referral band around it."""

    threshold: float
    rule: str
    val_sensitivity: float = math.nan
    val_specificity: float = math.nan
    # Calls within this distance of the threshold are referred: a small change could flip them.
    referral_margin: float = 0.0
    # The threshold holds for probabilities computed this way (test-time augmentation or not).
    tta: bool = False
    # A site's prior-shift correction (pneumo calibrate): added to every logit before the rule.
    prior_log_odds: float = 0.0
    # A referral band of its own (evaluate.referral: conformal) instead of threshold +- margin.
    referral_low: float | None = None
    referral_high: float | None = None

    def adjust(self, probabilities: np.ndarray) -> np.ndarray:
        """The network's probabilities as this decision reads them (prior-corrected for a site)."""
        p = np.asarray(probabilities, dtype=float)
        if self.prior_log_odds == 0.0:
            return p
        p = np.clip(p, 1e-7, 1 - 1e-7)
        return 1.0 / (1.0 + np.exp(-(np.log(p / (1 - p)) + self.prior_log_odds)))

    def positive(self, probabilities: np.ndarray) -> np.ndarray:
        """True where a probability means pneumonia."""
        return np.asarray(probabilities, dtype=float) >= self.threshold

    def label(self, probability: float) -> str:
        """'PNEUMONIA' or 'NORMAL'."""
        return CLASSES[int(probability >= self.threshold)]

    def labels(self, probabilities: np.ndarray) -> np.ndarray:
        return np.where(self.positive(probabilities), CLASSES[1], CLASSES[0])

    def refer(self, probability: float, out_of_distribution: bool = False) -> bool:
        """Refer to a radiologist: a close call, or an image unlike the training data."""
        return out_of_distribution or bool(self.refers(np.array([probability]))[0])

    def refers(self, probabilities: np.ndarray) -> np.ndarray:
        """:meth:`refer` for many in-distribution probabilities."""
        p = np.asarray(probabilities, dtype=float)
        if self.referral_low is not None and self.referral_high is not None:
            return (p >= self.referral_low) & (p <= self.referral_high)
        return np.abs(p - self.threshold) < self.referral_margin

    @property
    def referral_band(self) -> tuple[float, float]:
        if self.referral_low is not None and self.referral_high is not None:
            return (self.referral_low, self.referral_high)
        return (
            max(0.0, self.threshold - self.referral_margin),
            min(1.0, self.threshold + self.referral_margin),
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Decision:
        known = cls.__dataclass_fields__.keys()
        return cls(**{key: value for key, value in data.items() if key in known})

    def save(self, path: Path) -> None:
        with atomic_path(Path(path)) as tmp:
            tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Decision:
        path = Path(path)
        if not path.is_file():
            raise PipelineOrderError(
                f"{path} not found: run `pneumo evaluate` to choose the decision threshold"
            )
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as exc:
            raise PipelineOrderError(
                f"{path} is not a decision file ({exc}): rerun evaluate"
            ) from exc


def choose_threshold(
    y_val: np.ndarray, p_val: np.ndarray, settings: EvaluateSettings, tta: bool = False
) -> Decision:
    """Pick the decision threshold from validation labels and probabilities only."""
    from sklearn import metrics as skm  # here: the service loads this module, not scikit-learn

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
    predicted = np.asarray(p_val) >= threshold
    positives, negatives = y_val == 1, y_val == 0
    low, high = (
        conformal_band(y_val, np.asarray(p_val), threshold, settings.referral_alpha)
        if settings.referral == "conformal" else (None, None)
    )  # fmt: skip
    return Decision(
        threshold=threshold,
        rule=settings.threshold_rule,
        val_sensitivity=float(predicted[positives].mean()) if positives.any() else math.nan,
        val_specificity=float((~predicted[negatives]).mean()) if negatives.any() else math.nan,
        referral_margin=settings.referral_margin,
        tta=tta,
        referral_low=low,
        referral_high=high,
    )


def conformal_band(
    y: np.ndarray, p: np.ndarray, threshold: float, alpha: float
) -> tuple[float, float]:
    """The probabilities a class-conditional (Mondrian) split-conformal classifier is unsure of.

    With nonconformity 1 - p(true class), PNEUMONIA stays in the prediction set while
    p >= 1 - q_pneumonia and NORMAL while p <= q_normal (each q the finite-sample (1 - alpha)
    quantile of its class's validation scores), so each class is covered with probability
    >= 1 - alpha. Between the two cut points the set holds both classes or none: refer. The band
    is widened to the threshold, so a call outside it always agrees with its conformal set.
    """

    def quantile(scores: np.ndarray) -> float:
        n = len(scores)
        rank = min(n, int(np.ceil((n + 1) * (1 - alpha))))
        return float(np.sort(scores)[rank - 1])

    y = np.asarray(y).astype(int)
    pneumonia_cut = 1.0 - quantile(1.0 - p[y == 1])
    normal_cut = quantile(p[y == 0])
    cuts = (pneumonia_cut, normal_cut, threshold)
    return float(min(cuts)), float(max(cuts))


def sensitivity_lower_bound(
    hits: int | np.ndarray, n: int, level: float
) -> float | np.ndarray:
    """Clopper-Pearson lower bound of a sensitivity of ``hits`` out of ``n``; for an array of
    counts, each one's bound (SciPy's beta quantile element by element)."""
    from scipy.stats import beta

    counts = np.asarray(hits)
    with np.errstate(invalid="ignore"):  # no hit: beta(0, .) is undefined, the bound is 0
        bounds = np.where(counts == 0, 0.0, beta.ppf((1 - level) / 2, counts, n - counts + 1))
    return float(bounds) if bounds.ndim == 0 else bounds


def floor_threshold(
    labels: np.ndarray, probabilities: np.ndarray, floor: float, level: float
) -> tuple[float, bool]:
    """(threshold, held on the interval?): the highest threshold whose sensitivity's lower bound
    reaches ``floor``; when no threshold can (too few pneumonia cases), the highest whose point
    sensitivity does."""
    positives = np.sort(np.asarray(probabilities)[np.asarray(labels) == 1])[::-1]
    n = len(positives)
    if n == 0:
        raise ValueError("no pneumonia case to hold a sensitivity floor on")
    # Every count of hits at once: the threshold at the hits-th highest pneumonia score.
    held = np.flatnonzero(sensitivity_lower_bound(np.arange(1, n + 1), n, level) >= floor)
    if len(held):
        return float(positives[held[0]]), True
    needed = int(np.ceil(floor * n))
    return float(positives[max(needed, 1) - 1]), False


def _logit(p: float) -> float:
    p = float(np.clip(p, 1e-6, 1 - 1e-6))
    return float(np.log(p / (1 - p)))
