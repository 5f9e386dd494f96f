"""Batch prediction: files or folders in, one CSV row per image out.

Uses exactly what evaluation uses: ``decode_radiograph`` for pixels, ``load_model`` for the
network, ``predict_proba`` for probabilities and the validation-chosen decision threshold.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumo.accel import Accelerator
from pneumo.data.kermany import CLASSES, IMAGE_SUFFIXES
from pneumo.decision import Decision
from pneumo.errors import PneumoError
from pneumo.inference import CPU_FP32
from pneumo.inference.guard import Guard, Screening, screen_file
from pneumo.inference.guard import reasons as guard_reasons
from pneumo.workspace import Workspace, atomic_path, sha256_file

log = logging.getLogger(__name__)

OUTPUT_COLUMNS: tuple[str, ...] = (
    "path", "probability", "predicted_label", "threshold", "refer_to_radiologist",
    "out_of_distribution", "ood_score", "ood_reason", "model", "true_label", "error",
)  # fmt: skip


@dataclass(frozen=True)
class Assessment:
    """Per image: the probability, and whether (and why) the image is out of distribution."""

    probabilities: np.ndarray
    ood_scores: np.ndarray  # NaN without a guard
    ood_reasons: list[str | None]

    @property
    def out_of_distribution(self) -> np.ndarray:
        return np.array([reason is not None for reason in self.ood_reasons], dtype=bool)


@dataclass
class Predictor:
    """A trained network with its decision and guard: everything needed to call a radiograph."""

    model: Any
    metadata: dict[str, Any]
    decision: Decision
    model_id: str
    accel: Accelerator = CPU_FP32
    guard: Guard | None = None  # shipped with the model; None for models packaged without one
    # What runs the forward pass: the model itself, or its export (pneumo/inference/runtime.py).
    network: Any = None

    def __post_init__(self) -> None:
        if self.network is None:
            self.network = self.model

    @property
    def image_size(self) -> int:
        return int(self.metadata["image_size"])

    @property
    def threshold(self) -> float:
        return self.decision.threshold

    @classmethod
    def from_files(
        cls,
        model_path: Path,
        decision_path: Path,
        accel: Accelerator = CPU_FP32,
        runtime: str = "torch",
        guard_path: Path | None = None,
        precision_path: Path | None = None,
    ) -> Predictor:
        """The model, its decision and (when ``guard_path`` exists) its input guard; ``runtime``
        is ``model.runtime`` (torch: the model as is; else exported once, here, and checked).
        ``precision_path``: the model's precision evidence, which may allow bf16 (the service
        passes it; evaluation and batch scoring stay fp32, the evidence's reference)."""
        from pneumo.inference.runtime import ServedPrecision, compile_network
        from pneumo.models import load_model

        decision = Decision.load(decision_path)
        model, metadata = load_model(model_path)
        model_id = f"{metadata['arch']}@{sha256_file(Path(model_path))[:12]}"
        guard = Guard.load(guard_path) if guard_path and Path(guard_path).is_file() else None
        if guard is not None:
            guard.check_weights(Path(model_path), guard_path)
        evidence = ServedPrecision.load(precision_path)
        network = compile_network(model, runtime, accel, features=guard is not None,
                                  evidence=evidence)  # fmt: skip
        return cls(model, metadata, decision, model_id, accel, guard, network)

    @classmethod
    def from_workspace(
        cls,
        workspace: Workspace = Workspace(),
        accel: Accelerator = CPU_FP32,
        runtime: str = "torch",
    ) -> Predictor:
        return cls.from_files(workspace.model, workspace.decision, accel, runtime, workspace.guard)

    def assess(
        self, images: np.ndarray, screened: list[str | None] | None = None, batch_size: int = 64
    ) -> Assessment:
        """Probabilities plus the guard's verdict, from one forward pass."""
        from pneumo.inference import forward_pass

        screened = screened if screened is not None else [None] * len(images)
        screened = [s or Screening(self.image_size, self.image_size, 0.0).reason(p)
                    for s, p in zip(screened, images, strict=True)]  # fmt: skip
        result = forward_pass(self.network, images, batch_size, self.decision.tta, self.accel,
                         features=self.guard is not None)  # fmt: skip
        features = result.features
        if self.guard is not None and features is not None:
            features = self.guard.features_of(features, images)  # the pixel prior reads pixels
        scores, reasons = guard_reasons(self.guard, features, screened)
        return Assessment(self.decision.adjust(result.probabilities), scores, reasons)

    def probabilities(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        from pneumo.inference import predict_proba

        raw = predict_proba(self.network, images, batch_size, self.decision.tta, self.accel)
        return self.decision.adjust(raw)

    def label(self, probability: float) -> str:
        return self.decision.label(probability)


def collect_images(inputs: list[Path]) -> list[Path]:
    """Expand folders (recursively, a Kermany-layout folder included) into image files."""
    found: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found.extend(
                sorted(
                    p for p in item.rglob("*")
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
                )
            )  # fmt: skip
        else:
            found.append(item)  # missing or odd files still get a row that says why
    if not found:
        raise PneumoError(f"no images found in {', '.join(map(str, inputs))} (.jpeg, .jpg or .png)")
    return found


def predict_paths(
    inputs: list[Path], predictor: Predictor, workers: int = 0, batch_size: int = 64
) -> pd.DataFrame:
    """Predict every image; unreadable files get a row with the error instead of stopping the run."""
    from pneumo.data.preprocess import decode_files

    files = collect_images(inputs)
    images, errors = decode_files([str(f) for f in files], predictor.image_size, workers, "predict")
    ok = np.array([e is None for e in errors])
    probabilities, scores = np.full(len(files), np.nan), np.full(len(files), np.nan)
    reasons: list[str | None] = [None] * len(files)
    if ok.any():
        readable = np.flatnonzero(ok)
        assessed = predictor.assess(
            images[ok], [screen_file(files[i]) for i in readable], batch_size
        )
        probabilities[ok], scores[ok] = assessed.probabilities, assessed.ood_scores
        for i, reason in zip(readable, assessed.ood_reasons, strict=True):
            reasons[i] = reason
    rows = []
    for path, p, score, reason, error in zip(files, probabilities, scores, reasons, errors,
                                              strict=True):  # fmt: skip
        parent = path.parent.name
        read = error is None
        rows.append(
            {
                "path": str(path),
                "probability": round(float(p), 6) if read else None,
                "predicted_label": predictor.label(float(p)) if read else None,
                "threshold": round(predictor.threshold, 6),
                "refer_to_radiologist": predictor.decision.refer(float(p), reason is not None)
                if read
                else None,
                "out_of_distribution": (reason is not None) if read else None,
                "ood_score": round(float(score), 3) if read and np.isfinite(score) else None,
                "ood_reason": reason,
                "model": predictor.model_id,
                "true_label": parent if parent in CLASSES else None,
                "error": error,
            }
        )
    return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))


def write_predictions(
    inputs: list[Path], output: Path, predictor: Predictor, workers: int = 0, batch_size: int = 64
) -> pd.DataFrame:
    """Write predictions as CSV (atomically) and return them."""
    frame = predict_paths(inputs, predictor, workers, batch_size)
    with atomic_path(Path(output)) as tmp:
        frame.to_csv(tmp, index=False)
    failed = frame["error"].notna().sum()
    if failed:
        log.warning(
            "%d of %d files could not be read; see the error column of %s",
            failed,
            len(frame),
            output,
        )
    return frame
