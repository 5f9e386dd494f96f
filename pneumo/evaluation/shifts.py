"""The acquisition-shift battery: the validation split as another hospital might send it.

Exposure, contrast, tone curve, compression, resolution, blur, noise, field of view, aspect,
collimation and burned-in markers, each at two severities, on a working copy at twice the model's
side (made by ``decode_radiograph``); the result enters the model through ``decode_radiograph``
again, as a file from another site would. A new shift is one entry in :data:`SHIFTS`. The stress
stage (:mod:`pneumo.evaluation.stress`) scores the model on each.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

ShiftFunction = Callable[[np.ndarray, float, np.random.Generator], "np.ndarray | bytes"]
SEVERITIES = (1, 2)


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


def on_every_core(function: Callable[[int], np.ndarray], count: int) -> list[np.ndarray]:
    """``function`` of 0..count-1 on one thread per core. The image work (PIL filters and
    codecs, numpy) releases the GIL, and each image's randomness is seeded by its index, so the
    result is the one a single thread gives."""
    from concurrent.futures import ThreadPoolExecutor

    from pneumo.accel import available_cores

    with ThreadPoolExecutor(available_cores(), thread_name_prefix="stress") as pool:
        return list(pool.map(function, range(count)))


def shifted_images(
    working: np.ndarray, shift: Shift, severity: int, image_size: int, seed: int
) -> np.ndarray:
    """The working copies under one shift and severity, decoded to the model's pixels."""
    from pneumo.data.preprocess import decode_radiograph

    level = shift.levels[severity - 1]

    def one(index: int) -> np.ndarray:
        rng = np.random.default_rng([seed, index, severity, SHIFTS.index(shift)])
        changed = shift.apply(working[index], level, rng)
        source = changed if isinstance(changed, bytes) else Image.fromarray(changed)
        return decode_radiograph(source, image_size)

    images = on_every_core(one, len(working))
    return np.stack(images) if images else np.empty((0, image_size, image_size), np.uint8)


def working_copies(paths: list[str], image_size: int, workers: int = 0) -> np.ndarray:
    """The validation radiographs at twice the model's side: where the shifts act."""
    from pneumo.data.preprocess import decode_many

    return decode_many(paths, 2 * image_size, workers, desc="stress working copies")
