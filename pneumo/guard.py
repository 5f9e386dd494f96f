"""Know when not to answer: flag inputs that are not paediatric chest radiographs like the training's.

Two layers, both shipped with the model:
- a cheap screen before the network, from the file itself: real colour, an aspect ratio no
  radiograph has, a near-constant image;
- a Mahalanobis detector (Lee et al. 2018, pytorch-ood's implementation) on the network's own
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pneumo.errors import PipelineOrderError
from pneumo.workspace import atomic_path

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# Screen limits: the Kermany release's most extreme image is 384x127 (3.0:1).
MAX_ASPECT = 3.2
MAX_CHROMA = 12.0  # mean max-channel difference (0..255) of a small copy: grey JPEGs stay under 3
MIN_SPREAD = 3.0  # grey levels of standard deviation at the model's size


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
    """The fitted feature detector and its validation-calibrated cut-off."""

    mean: torch.Tensor  # (D,) feature standardisation
    scale: torch.Tensor  # (D,)
    centres: torch.Tensor  # (classes, D)
    precision: torch.Tensor  # (D, D)
    cutoff: float
    max_val_flag_rate: float
    # The sha256 of the weights file whose features it was fitted on: another network's features
    # would be far from all of it, and every image flagged.
    weights_sha256: str = ""

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

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Outlier score per image: the Mahalanobis distance to the closest class (higher = stranger)."""
        detector = self._detector()
        z = (torch.as_tensor(features, dtype=torch.float32) - self.mean) / self.scale
        return detector.predict_features(z).double().numpy()

    def flags(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.cutoff

    def _detector(self) -> Any:
        from pytorch_ood.detector import Mahalanobis

        detector = Mahalanobis(None)
        detector.mu, detector.precision = self.centres, self.precision
        return detector

    def save(self, path: Path) -> None:
        payload = {
            "format_version": FORMAT_VERSION,
            "method": "mahalanobis",
            "mean": self.mean, "scale": self.scale, "centres": self.centres,
            "precision": self.precision, "cutoff": self.cutoff,
            "max_val_flag_rate": self.max_val_flag_rate, "weights_sha256": self.weights_sha256,
        }  # fmt: skip
        with atomic_path(Path(path)) as tmp:
            torch.save(payload, tmp)

    @classmethod
    def load(cls, path: Path) -> Guard:
        path = Path(path)
        if not path.is_file():
            raise PipelineOrderError(f"{path} not found: run `pneumo guard` after `pneumo train`")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            if payload.get("format_version") != FORMAT_VERSION:
                raise PipelineOrderError(f"{path} has another format: rerun `pneumo guard`")
            return cls(payload["mean"], payload["scale"], payload["centres"], payload["precision"],
                       float(payload["cutoff"]), float(payload["max_val_flag_rate"]),
                       str(payload.get("weights_sha256", "")))  # fmt: skip
        except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, KeyError) as exc:
            raise PipelineOrderError(
                f"{path} is not a guard file ({exc}): rerun `pneumo guard`"
            ) from exc


def fit(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    max_val_flag_rate: float,
) -> Guard:
    """Fit the class-conditional Gaussians on train and the cut-off on validation."""
    from pytorch_ood.detector import Mahalanobis

    features = torch.as_tensor(train_features, dtype=torch.float32)
    mean, scale = features.mean(0), features.std(0).clamp_min(1e-6)
    detector = Mahalanobis(None).fit_features((features - mean) / scale,
                                              torch.as_tensor(train_labels, dtype=torch.long))  # fmt: skip
    guard = Guard(mean, scale, detector.mu, detector.precision, float("inf"), max_val_flag_rate)
    val_scores = guard.scores(val_features)
    guard.cutoff = float(np.quantile(val_scores, 1.0 - max_val_flag_rate, method="higher"))
    return guard


def reasons(
    guard: Guard | None, scores: np.ndarray | None, screened: list[str | None]
) -> list[str | None]:
    """Per image: why it is out of distribution (the screen first, then the detector), or None."""
    flagged = guard.flags(scores) if guard is not None and scores is not None else None
    out: list[str | None] = []
    for index, screen in enumerate(screened):
        if screen is not None:
            out.append(screen)
        elif flagged is not None and flagged[index]:
            out.append(
                "unlike the paediatric chest radiographs the model was trained on (outlier "
                f"score {scores[index]:.0f}, cut-off {guard.cutoff:.0f})"  # type: ignore[index, union-attr]
            )
        else:
            out.append(None)
    return out


def guard_stage(settings: Any, workspace: Any) -> dict[str, Any]:
    """The `guard` stage: fit on train, calibrate on validation, measure on the probe kinds."""
    import json

    from pneumo.accel import configure_threads
    from pneumo.data.preprocess import decode_radiograph, load_arrays
    from pneumo.guard_probes import NON_RADIOGRAPHS, probe_kinds
    from pneumo.inference import predict
    from pneumo.models import load_model

    configure_threads(settings.model.threads)
    from pneumo.runtime import compile_network

    model, metadata = load_model(workspace.model)
    # Fitted on the features the served network computes (model.runtime), so the cut-off holds.
    model = compile_network(model, settings.model.runtime, settings.model.accelerator(),
                            features=True)  # fmt: skip
    size, accel, batch = (
        int(metadata["image_size"]),
        settings.model.accelerator(),
        settings.model.batch_size,
    )

    def features(images: np.ndarray) -> np.ndarray:
        return predict(model, images, batch, accel=accel, features=True).features  # type: ignore[return-value]

    train, val = (load_arrays(workspace.arrays(s)) for s in ("train", "val"))
    guard = fit(features(train["images"]), train["labels"], features(val["images"]),
                settings.guard.max_val_flag_rate)  # fmt: skip
    from pneumo.workspace import sha256_file

    guard.weights_sha256 = sha256_file(workspace.model)
    guard.save(workspace.guard)
    val_screened = [Screening(size, size, 0.0).reason(p) for p in val["images"]]
    val_reasons = reasons(guard, guard.scores(features(val["images"])), val_screened)
    report: dict[str, Any] = {
        "method": "mahalanobis on pooled conv-block features (pytorch-ood) + file screen",
        "cutoff": guard.cutoff,
        "max_val_flag_rate": guard.max_val_flag_rate,
        "val": {
            "n": len(val_reasons),
            "flagged": float(np.mean([r is not None for r in val_reasons])),
        },
        "kinds": {},
    }
    for kind, probes in probe_kinds(
        val["images"], settings.guard.probes_per_kind, settings.guard.seed
    ).items():
        pixels = np.stack([decode_radiograph(img, size) for img in probes])
        screened = [Screening.of(img).reason(p) for img, p in zip(probes, pixels, strict=True)]
        found = reasons(guard, guard.scores(features(pixels)), screened)
        report["kinds"][kind] = {
            "n": len(found),
            "flagged": float(np.mean([r is not None for r in found])),
            "by_screen": float(np.mean([s is not None for s in screened])),
        }
    non = [report["kinds"][k] for k in NON_RADIOGRAPHS]
    report["non_radiographs_flagged"] = sum(k["flagged"] * k["n"] for k in non) / sum(
        k["n"] for k in non
    )
    with atomic_path(workspace.guard_metrics) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    log.info("guard: %.1f %% of validation flagged, %.1f %% of non-radiographs",
             100 * report["val"]["flagged"], 100 * report["non_radiographs_flagged"])  # fmt: skip
    return report
