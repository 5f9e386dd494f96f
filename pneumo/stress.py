"""Acquisition-shift stress test: the validation split as another hospital might send it.

A carved test split comes from the same machines as training, so it cannot show what happens at
a new site. This stage re-creates the validation radiographs under a fixed, seeded battery of
shifts (exposure, contrast, tone curve, compression, resolution, blur, noise, field of view,
aspect, collimation, burned-in markers), each at two severities, and scores the model on every
version at its validation-chosen threshold. Shifts act on a working copy at twice the model's
side (made by ``decode_radiograph``) and the result enters the model through
``decode_radiograph`` again, as a file from another site would. A new shift is one entry in
:data:`SHIFTS`.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from pneumo.metrics import binary_metrics
from pneumo.workspace import atomic_path

log = logging.getLogger(__name__)

ShiftFunction = Callable[[np.ndarray, float, np.random.Generator], "np.ndarray | bytes"]
SEVERITIES = (1, 2)
# What each stress figure reports per shift (at the validation-chosen threshold).
REPORTED = ("roc_auc", "sensitivity", "specificity", "accuracy")


@dataclass(frozen=True)
class Shift:
    """One acquisition change; ``levels`` are its parameter at severity 1 and 2."""

    name: str
    apply: ShiftFunction
    levels: tuple[float, float]
    describes: str


def _clip(pixels: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def darker(image: np.ndarray, level: float, _: np.random.Generator) -> np.ndarray:
    """Under-exposure: the range shrinks by ``level`` and shadows sink (dark lungs clip)."""
    return _clip(image * level - (1 - level) * 80)


def brighter(image: np.ndarray, level: float, _: np.random.Generator) -> np.ndarray:
    """Over-exposure or fog: the range shrinks by ``level`` towards white, blacks lift."""
    return _clip(image * level + (1 - level) * 255)


def contrast(image: np.ndarray, level: float, _: np.random.Generator) -> np.ndarray:
    """Lower contrast: distances from the image mean shrink to ``level``."""
    mean = image.mean()
    return _clip(mean + level * (image - mean))


def gamma(image: np.ndarray, level: float, _: np.random.Generator) -> np.ndarray:
    """Another detector response curve: (I/255)^level."""
    return _clip(255 * (image / 255.0) ** level)


def jpeg(image: np.ndarray, level: float, _: np.random.Generator) -> bytes:
    """An archive that stores JPEGs at quality ``level``."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=int(level))
    return buffer.getvalue()


def low_resolution(image: np.ndarray, level: float, _: np.random.Generator) -> np.ndarray:
    """An image made at ``level`` of the working resolution, upsampled back."""
    side = image.shape[0]
    small = max(8, round(side * level))
    img = Image.fromarray(image).resize((small, small), Image.Resampling.BOX)
    return np.asarray(img.resize((side, side), Image.Resampling.BILINEAR))


def blur(image: np.ndarray, level: float, _: np.random.Generator) -> np.ndarray:
    """A softer detector or a processing filter: Gaussian blur of ``level`` working pixels."""
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(level)))


def noise(image: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """Quantum noise of a low dose: Gaussian noise of ``level`` (fraction of the range)."""
    return _clip(image + rng.normal(0.0, level * 255.0, image.shape))


def zoom_in(image: np.ndarray, level: float, _: np.random.Generator) -> np.ndarray:
    """Tighter collimation: the central ``level`` of each side fills the frame."""
    side = image.shape[0]
    keep = round(side * level)
    start = (side - keep) // 2
    crop = Image.fromarray(image[start : start + keep, start : start + keep])
    return np.asarray(crop.resize((side, side), Image.Resampling.BILINEAR))


def zoom_out(image: np.ndarray, level: float, _: np.random.Generator) -> np.ndarray:
    """A wider field of view: the image shrinks to ``level`` of each side, black around it."""
    side = image.shape[0]
    small = round(side * level)
    out = np.zeros_like(image)
    start = (side - small) // 2
    resized = Image.fromarray(image).resize((small, small), Image.Resampling.BILINEAR)
    out[start : start + small, start : start + small] = np.asarray(resized)
    return out


def aspect(image: np.ndarray, level: float, _: np.random.Generator) -> np.ndarray:
    """Another aspect ratio: anatomy ``level`` times wider than tall once stretched to a square."""
    side = image.shape[0]
    keep = round(side / level)
    start = (side - keep) // 2
    crop = Image.fromarray(image[:, start : start + keep])
    return np.asarray(crop.resize((side, side), Image.Resampling.BILINEAR))


def collimation(image: np.ndarray, level: float, _: np.random.Generator) -> np.ndarray:
    """Collimator shadows: black bars of ``level`` of the side on all four borders."""
    out = image.copy()
    bar = round(image.shape[0] * level)
    out[:bar], out[-bar:], out[:, :bar], out[:, -bar:] = 0, 0, 0, 0
    return out


MARKER_TEXTS = ("R", "L", "AP", "PORTABLE", "SUPINE", "12/03", "ERECT")


def markers(image: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """Burned-in white text (side markers, 'PORTABLE', dates) of height ``level`` of the side."""
    side = image.shape[0]
    img = Image.fromarray(image)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=max(6, round(side * level)))
    for corner in range(2):
        text = MARKER_TEXTS[int(rng.integers(len(MARKER_TEXTS)))]
        x = (
            int(rng.uniform(0.02, 0.25) * side)
            if corner == 0
            else int(rng.uniform(0.6, 0.8) * side)
        )
        y = int(rng.uniform(0.02, 0.85) * side)
        draw.text((x, y), text, fill=255, font=font)
    return np.asarray(img)


SHIFTS: tuple[Shift, ...] = (
    Shift("darker", darker, (0.8, 0.6), "range x level, shadows sink"),
    Shift("brighter", brighter, (0.8, 0.6), "range x level towards white"),
    Shift("contrast", contrast, (0.7, 0.5), "distances from the mean x level"),
    Shift("gamma_up", gamma, (1.5, 2.0), "tone curve (I/255)^level"),
    Shift("gamma_down", gamma, (0.67, 0.5), "tone curve (I/255)^level"),
    Shift("jpeg", jpeg, (30, 10), "JPEG quality"),
    Shift("low_resolution", low_resolution, (0.5, 0.3), "made at level x the resolution"),
    Shift("blur", blur, (1.0, 2.0), "Gaussian sigma, working pixels"),
    Shift("noise", noise, (0.03, 0.06), "Gaussian sigma, fraction of range"),
    Shift("zoom_in", zoom_in, (0.9, 0.8), "central fraction of each side kept"),
    Shift("zoom_out", zoom_out, (0.9, 0.8), "image shrunk to level, black border"),
    Shift("aspect", aspect, (1.15, 1.3), "anatomy widened by level"),
    Shift("collimation", collimation, (0.05, 0.1), "black bars, fraction of side"),
    Shift("markers", markers, (0.06, 0.1), "burned-in text height, fraction of side"),
)


def shifted_images(
    working: np.ndarray, shift: Shift, severity: int, image_size: int, seed: int
) -> np.ndarray:
    """The working copies under one shift and severity, decoded to the model's pixels."""
    from pneumo.data.preprocess import decode_radiograph

    level = shift.levels[severity - 1]
    out = np.empty((len(working), image_size, image_size), dtype=np.uint8)
    for index, image in enumerate(working):
        rng = np.random.default_rng([seed, index, severity, SHIFTS.index(shift)])
        changed = shift.apply(image, level, rng)
        source = changed if isinstance(changed, bytes) else Image.fromarray(changed)
        out[index] = decode_radiograph(source, image_size)
    return out


def working_copies(paths: list[str], image_size: int, workers: int = 0) -> np.ndarray:
    """The validation radiographs at twice the model's side: where the shifts act."""
    from pneumo.data.preprocess import decode_many

    return decode_many(paths, 2 * image_size, workers, desc="stress working copies")


def stress_report(
    predict: Callable[[np.ndarray], np.ndarray],
    working: np.ndarray,
    labels: np.ndarray,
    threshold: float,
    image_size: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Score ``predict`` on the clean working copies and on every shift and severity."""
    from pneumo.data.preprocess import decode_radiograph

    def scored(images: np.ndarray) -> dict[str, float]:
        values = binary_metrics(labels, predict(images), threshold)
        return {name: values[name] for name in REPORTED}

    clean = np.stack([decode_radiograph(Image.fromarray(i), image_size) for i in working])
    report: dict[str, Any] = {"threshold": threshold, "n": len(labels), "clean": scored(clean)}
    shifts: dict[str, Any] = {}
    for shift in SHIFTS:
        shifts[shift.name] = {"describes": shift.describes}
        for severity in SEVERITIES:
            images = shifted_images(working, shift, severity, image_size, seed)
            shifts[shift.name][str(severity)] = {
                "level": shift.levels[severity - 1],
                **scored(images),
            }
        log.info("stress %s: ROC-AUC %.4f / %.4f", shift.name,
                 shifts[shift.name]["1"]["roc_auc"], shifts[shift.name]["2"]["roc_auc"])  # fmt: skip
    report["shifts"] = shifts
    report["summary"] = summarise(shifts)
    return report


def summarise(shifts: dict[str, Any]) -> dict[str, Any]:
    """Mean and worst case over every shift and severity, naming the worst."""
    rows = [
        (f"{name}@{severity}", values[str(severity)])
        for name, values in shifts.items()
        for severity in SEVERITIES
    ]
    summary: dict[str, Any] = {}
    for metric in REPORTED:
        numbers = [row[metric] for _, row in rows]
        worst = int(np.nanargmin(numbers))
        summary[f"mean_{metric}"] = float(np.nanmean(numbers))
        summary[f"worst_{metric}"] = float(numbers[worst])
        summary[f"worst_{metric}_shift"] = rows[worst][0]
    return summary


def write_outputs(report: dict[str, Any], metrics_path: Path, plots_dir: Path) -> list[Path]:
    """metrics/stress.json, a CSV per shift for `dvc plots`, and one figure."""
    with atomic_path(metrics_path) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    rows = [
        {"shift": name, "severity": severity, **values[str(severity)]}
        for name, values in report["shifts"].items()
        for severity in SEVERITIES
    ]
    import pandas as pd

    frame = pd.DataFrame(rows)
    plots_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(plots_dir / "stress.csv") as tmp:
        frame.to_csv(tmp, index=False)
    from pneumo import plots

    figure = plots.stress_chart(plots_dir / "stress.png", frame, report["clean"])
    return [metrics_path, plots_dir / "stress.csv", figure]


def stress(settings: Any, workspace: Any) -> dict[str, Any]:
    """The `stress` stage: this workspace's model on the shifted validation split."""
    from pneumo.accel import configure_threads
    from pneumo.data.preprocess import load_arrays
    from pneumo.predict import Predictor

    configure_threads(settings.model.threads)
    predictor = Predictor.from_workspace(
        workspace, settings.model.accelerator(), settings.model.runtime
    )
    val = load_arrays(workspace.arrays("val"))
    root = Path(settings.data.root)
    root = root if root.is_absolute() else workspace.root / root
    working = working_copies([str(root / p) for p in val["paths"]], predictor.image_size,
                             settings.preprocess.workers)  # fmt: skip
    report = stress_report(
        lambda images: predictor.probabilities(images, settings.model.batch_size),
        working, val["labels"], predictor.threshold, predictor.image_size, settings.stress.seed,
    )  # fmt: skip
    files = write_outputs(report, workspace.stress_metrics, workspace.stress_plots)
    if workspace.run_id.is_file():
        from pneumo import tracking

        flat = {f"stress/{k}": v for k, v in report["summary"].items() if isinstance(v, float)}
        tracking.log_to_run(settings, workspace, workspace.run_id.read_text().strip(), flat,
                            files, "stress")  # fmt: skip
    s = report["summary"]
    log.info("stress: mean ROC-AUC %.4f, worst %.4f (%s); worst specificity %.3f (%s)",
             s["mean_roc_auc"], s["worst_roc_auc"], s["worst_roc_auc_shift"],
             s["worst_specificity"], s["worst_specificity_shift"])  # fmt: skip
    return report
