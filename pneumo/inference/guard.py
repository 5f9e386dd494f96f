"""Know when not to answer: flag inputs that are not paediatric chest radiographs like the training's.

Two layers, both shipped with the model:
- a cheap screen before the network, from the file itself: real colour, an aspect ratio no
  radiograph has, a near-constant image;
- a Mahalanobis detector (Lee et al. 2018, fitted by pytorch-ood) on the network's own
  features: the mean activation of every convolution block, standardised, with one centre per
  class and a shared covariance fitted on the train split. Its cut-off is the validation split's
  ``1 - guard.max_val_flag_rate`` quantile, so at most that share of in-distribution images is
  flagged.

A flagged image still gets a probability, but is always referred to a radiologist with the reason.
The fitted detector is a weights-only file (``models/guard.pt``), registered and packaged beside
the threshold.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pneumo.errors import PipelineOrderError
from pneumo.inference.scope import (
    DETECTORS,
    KIND_SEGMENTS,
    LAYOUT_SEGMENT,
    PIXELS_SEGMENT,
    ScopeSet,
    fit_kinds,
    fit_layout,
    kind_probabilities,
    kind_reason,
    layout_scores,
    out_of_scope_log_odds,
    segment,
    with_pixels,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 3  # 2: the scope check (layout, kinds, norms); 3: the pixel prior
# Screen limits: the Kermany release's most extreme image is 384x127 (3.0:1).
MAX_ASPECT = 3.2
MAX_CHROMA = 12.0  # mean max-channel difference (0..255) of a small copy: grey JPEGs stay under 3
MIN_SPREAD = 3.0  # grey levels of standard deviation at the model's size
GLOBAL_TAIL_SHARE = 0.25  # of guard.max_val_flag_rate: where the global detector's scale puts 1


@dataclass(frozen=True)
class Screening:
    """What the file itself says, read while it is decoded: size and colour."""

    width: int
    height: int
    chroma: float

    @classmethod
    def of(cls, img: Image.Image) -> Screening:
        """Measure an opened (not yet grey) image; colour from a small copy, so it is cheap.

        A JPEG is drafted (decoded at 1/8 scale) for this: pass an image that is not used after.
        """
        width, height, chroma = int(img.width), int(img.height), 0.0
        if img.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV"):
            try:
                if img.format == "JPEG":
                    img.draft("RGB", (64, 64))
                small = img.convert("RGB")
                small.thumbnail((64, 64))
                rgb = np.asarray(small, dtype=np.int16)
                chroma = float((rgb.max(axis=2) - rgb.min(axis=2)).mean())
            except (OSError, ValueError, SyntaxError):
                pass  # a damaged file: decoding refuses it with the reason
        return cls(width, height, chroma)

    def reason(self, pixels: np.ndarray | None) -> str | None:
        """Why the image is not a radiograph the model can judge, or None (pixels: model's view)."""
        if self.chroma > MAX_CHROMA:
            return "a colour image, not a radiograph"
        aspect = max(self.width, self.height) / max(1, min(self.width, self.height))
        if aspect > MAX_ASPECT:
            return f"an aspect ratio of {aspect:.1f}:1, which no chest radiograph has"
        if pixels is not None and float(np.asarray(pixels).std()) < MIN_SPREAD:
            return "an almost uniform image, with nothing to judge"
        return None


def screen_file(path: str | Path) -> str | None:
    """The screen of a file on disk (colour, aspect), for batch prediction; None if unreadable."""
    try:
        with Image.open(path) as img:
            return Screening.of(img).reason(None)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None  # the decoder reports why the file cannot be read


class GuardMismatchError(PipelineOrderError):
    """The guard was fitted on another network's features than the model it is loaded with."""


@dataclass
class Guard:
    """The fitted scope check (pneumo/inference/scope.py) and its validation-calibrated cut-off."""

    mean: torch.Tensor  # (D,) standardisation of the block means (the global detector)
    scale: torch.Tensor  # (D,)
    centres: torch.Tensor  # (classes, D)
    precision: torch.Tensor  # (D, D)
    cutoff: float
    max_val_flag_rate: float
    # The sha256 of the weights file whose features it was fitted on: another network's features
    # would be far from all of it, and every image flagged.
    weights_sha256: str = ""
    segments: dict[str, tuple[int, int]] = field(default_factory=dict)  # feature columns
    layout: dict[str, torch.Tensor] = field(default_factory=dict)  # the one-class layout Gaussian
    kinds: dict[str, torch.Tensor] = field(default_factory=dict)  # the kind classifier, if fitted
    kind_names: list[str] = field(default_factory=list)
    prior: dict[str, torch.Tensor] = field(default_factory=dict)  # the pixel classifier, if any
    prior_names: list[str] = field(default_factory=list)
    # Per detector (DETECTORS order): the validation median, and its 1 - max_val_flag_rate
    # quantile minus the median.
    norms: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 2))

    def check_weights(self, model_path: Path, guard_path: Path | str = "the guard") -> None:
        """Refuse to judge another network's features (the guard and the model travel together)."""
        from pneumo.workspace import sha256_file

        actual = sha256_file(Path(model_path))
        if not self.weights_sha256:
            log.warning("%s records no weights digest (made before pneumo bound guards to their "
                        "weights): rerun `pneumo guard` to bind it", guard_path)  # fmt: skip
        elif self.weights_sha256 != actual:
            raise GuardMismatchError(
                f"{guard_path} was fitted on the features of other weights (sha256 "
                f"{self.weights_sha256[:12]}…, the model is {actual[:12]}…): its verdicts would "
                "flag every image. Run `pneumo guard` (or `dvc repro guard`) after training, then "
                "package or serve again"
            )

    @property
    def detectors(self) -> list[str]:
        return [d for d in DETECTORS if d == "global" or getattr(self, d)]

    def raw_scores(self, features: np.ndarray) -> np.ndarray:
        """(N, detectors): each detector's own score, higher = further from the scope."""
        features = np.asarray(features, dtype=np.float32)
        columns = [self._global(segment(features, self.segments, "means"))]
        if self.layout:
            columns.append(layout_scores(self.layout, segment(features, self.segments,
                                                              LAYOUT_SEGMENT)))  # fmt: skip
        if self.kinds:
            columns.append(out_of_scope_log_odds(self.kind_probabilities(features)))
        if self.prior:
            columns.append(out_of_scope_log_odds(self.prior_probabilities(features)))
        return np.stack(columns, axis=1)

    def features_of(self, network_features: np.ndarray, images: np.ndarray) -> np.ndarray:
        """What the guard reads: the network's features, and the pixels' when it has a prior."""
        return with_pixels(network_features, images, self.segments)

    def prior_probabilities(self, features: np.ndarray) -> np.ndarray:
        return kind_probabilities(self.prior, segment(np.asarray(features, dtype=np.float32),
                                                      self.segments, PIXELS_SEGMENT))  # fmt: skip

    def kind_probabilities(self, features: np.ndarray) -> np.ndarray:
        return kind_probabilities(self.kinds, segment(np.asarray(features, dtype=np.float32),
                                                      self.segments, *KIND_SEGMENTS))  # fmt: skip

    def scores(self, features: np.ndarray) -> np.ndarray:
        """One outlier score per image: the highest detector on the validation scale."""
        raw = self.raw_scores(features)
        norms = self.norms.double().numpy()
        return ((raw - norms[:, 0]) / norms[:, 1]).max(axis=1)

    def flags(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.cutoff

    def judge(self, features: np.ndarray) -> tuple[np.ndarray, list[str | None]]:
        """Scores, and per image why it is out of scope (None when it is in)."""
        scores = self.scores(features)
        flagged = self.flags(scores)
        # Which kind it is: the network's kind classifier when fitted here, else the pixel prior.
        kinds, names = None, self.kind_names
        if flagged.any() and (self.kinds or self.prior):
            kinds = self.kind_probabilities(features) if self.kinds else None
            if kinds is None:
                kinds, names = self.prior_probabilities(features), self.prior_names
        why: list[str | None] = []
        for index, flag in enumerate(flagged):
            if not flag:
                why.append(None)
            elif kinds is not None and kinds[index, 1:].max() > kinds[index, 0]:
                why.append(kind_reason(names[1 + int(kinds[index, 1:].argmax())]))
            else:
                why.append(
                    "unlike the paediatric frontal chest radiographs the model was trained on "
                    f"(outlier score {scores[index]:.1f}, cut-off {self.cutoff:.1f})"
                )
        return scores, why

    def _global(self, means: np.ndarray) -> np.ndarray:
        """pytorch-ood's Mahalanobis score of its fitted centres and precision: half the squared
        distance to the nearest centre, by the same operations as its ``predict_features``
        (tests/model/test_guard.py compares them). Scored here because importing pytorch-ood
        loads torchvision and ``torch._dynamo``: ~3 s in every process that serves or scores."""
        z = (torch.as_tensor(means, dtype=torch.float32) - self.mean) / self.scale
        per_class = []
        with torch.no_grad():
            for centre in self.centres:
                centred = z - centre
                per_class.append(-0.5 * ((centred @ self.precision) * centred).sum(dim=1))
        return (-torch.stack(per_class, 1).max(dim=1).values).double().numpy()

    def calibrate(self, val_features: np.ndarray) -> Guard:
        """Put each detector on the validation scale and cut at 1 - max_val_flag_rate of it."""
        raw = self.raw_scores(val_features)
        median = np.median(raw, axis=0)
        # Scaled so each detector's own cut-off would sit at 1, the global one's further out:
        # what it exists for (photographs, documents, noise) lies far beyond any validation tail,
        # and the budget of flagged validation images goes to the detectors that see anatomy
        # (measured: adults flagged 67-82 % with equal tails, 74-87 % with these).
        rates = np.array([GLOBAL_TAIL_SHARE if d == "global" else 1.0 for d in self.detectors])
        tail = np.array([np.quantile(raw[:, i], 1.0 - self.max_val_flag_rate * r)
                         for i, r in enumerate(rates)])  # fmt: skip
        spread = np.maximum(tail - median, 1e-6)
        self.norms = torch.as_tensor(np.stack([median, spread], axis=1), dtype=torch.float64)
        self.cutoff = float(np.quantile(self.scores(val_features), 1.0 - self.max_val_flag_rate,
                                        method="higher"))  # fmt: skip
        return self

    def save(self, path: Path) -> None:
        payload = {
            "format_version": FORMAT_VERSION,
            "method": "mahalanobis + layout gaussian + kind classifier + pixel prior",
            "mean": self.mean, "scale": self.scale, "centres": self.centres,
            "precision": self.precision, "cutoff": self.cutoff,
            "max_val_flag_rate": self.max_val_flag_rate, "weights_sha256": self.weights_sha256,
            "segments": {k: list(v) for k, v in self.segments.items()}, "layout": self.layout,
            "kinds": self.kinds, "kind_names": self.kind_names, "norms": self.norms,
            "prior": self.prior, "prior_names": self.prior_names,
        }  # fmt: skip
        from pneumo.models import write_torch

        write_torch(payload, Path(path))

    @classmethod
    def load(cls, path: Path) -> Guard:
        path = Path(path)
        if not path.is_file():
            raise PipelineOrderError(f"{path} not found: run `pneumo guard` after `pneumo train`")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            # 2 (no pixel prior) is still read: registered versions keep serving with theirs.
            if payload.get("format_version") not in (2, FORMAT_VERSION):
                raise PipelineOrderError(
                    f"{path} was made by an older pneumo (no scope check): rerun `pneumo guard`"
                )
            return cls(payload["mean"], payload["scale"], payload["centres"], payload["precision"],
                       float(payload["cutoff"]), float(payload["max_val_flag_rate"]),
                       str(payload.get("weights_sha256", "")),
                       {k: (int(v[0]), int(v[1])) for k, v in payload["segments"].items()},
                       layout=dict(payload["layout"]), kinds=dict(payload["kinds"]),
                       kind_names=list(payload["kind_names"]), norms=payload["norms"],
                       prior=dict(payload.get("prior", {})),
                       prior_names=list(payload.get("prior_names", [])))  # fmt: skip
        except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, KeyError) as exc:
            raise PipelineOrderError(
                f"{path} is not a guard file ({exc}): rerun `pneumo guard`"
            ) from exc


def fit(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    max_val_flag_rate: float,
    segments: dict[str, tuple[int, int]],
    scope: ScopeSet | None = None,
    scope_features: np.ndarray | None = None,
    prior: tuple[dict[str, torch.Tensor], list[str]] = ({}, []),
) -> Guard:
    """Fit the detectors on train (and on the real out-of-scope set, when given), calibrate on
    validation; ``prior`` is the fitted pixel classifier (``segments`` then has the pixels)."""
    from pytorch_ood.detector import Mahalanobis

    means = torch.as_tensor(segment(train_features, segments, "means"), dtype=torch.float32)
    mean, scale = means.mean(0), means.std(0).clamp_min(1e-6)
    detector = Mahalanobis(None).fit_features((means - mean) / scale,
                                              torch.as_tensor(train_labels, dtype=torch.long))  # fmt: skip
    guard = Guard(mean, scale, detector.mu, detector.precision, float("inf"), max_val_flag_rate,
                  segments=segments,
                  layout=fit_layout(segment(train_features, segments, LAYOUT_SEGMENT)),
                  prior=prior[0], prior_names=prior[1])  # fmt: skip
    if scope is not None and len(scope) and scope_features is not None:
        guard.kinds, guard.kind_names = fit_kinds(
            segment(train_features, segments, *KIND_SEGMENTS),
            segment(scope_features, segments, *KIND_SEGMENTS),
            scope.kinds,
        )
    return guard.calibrate(val_features)


def reasons(
    guard: Guard | None, features: np.ndarray | None, screened: list[str | None]
) -> tuple[np.ndarray, list[str | None]]:
    """Per image: the outlier score (NaN without a guard) and why it is out of scope (the
    file's screen first, then the scope check), or None."""
    scores = np.full(len(screened), np.nan)
    judged: list[str | None] = [None] * len(screened)
    if guard is not None and features is not None and len(screened):
        scores, judged = guard.judge(features)
    return scores, [screen or why for screen, why in zip(screened, judged, strict=True)]
