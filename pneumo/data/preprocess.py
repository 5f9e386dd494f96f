"""Decode radiographs once into compact uint8 arrays; the single preprocessing function.

``decode_radiograph`` is what training, evaluation, batch prediction and serving all call, so a
model never sees pixels prepared any other way than the ones it was trained on.
"""

from __future__ import annotations

import io
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
from PIL import Image, ImageOps
from tqdm import tqdm

from pneumo.data.kermany import LABEL_INDEX
from pneumo.errors import PipelineOrderError, PneumoError
from pneumo.workspace import Workspace, atomic_path

log = logging.getLogger(__name__)

ImageSource = str | os.PathLike[str] | bytes | BinaryIO


class ImageDecodeError(PneumoError):
    """A file could not be decoded as a radiograph (corrupt, truncated, not an image, too large)."""


def _to_grayscale(img: Image.Image) -> Image.Image:
    """8-bit grayscale; 16-bit and float images are windowed to their own min..max range."""
    if img.mode == "L":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        pixels = np.asarray(img, dtype=np.float32)
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
        return Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("L")


def decode_radiograph(
    source: ImageSource | Image.Image, image_size: int, max_pixels: int | None = None
) -> np.ndarray:
    """Decode one radiograph into the model's pixels: grayscale uint8 of shape (size, size).

    JPEGs are decoded at reduced scale (PIL draft mode) when they are much larger than the target,
    so a 2000 px original never becomes a full-resolution float copy. Images are stretched to a
    square, as the Kermany release itself was resized. ``max_pixels`` rejects decompression bombs
    from the header, before any pixel is decoded.
    """
    try:
        if isinstance(source, Image.Image):
            img = source
        else:
            stream = io.BytesIO(source) if isinstance(source, bytes) else source
            img = Image.open(stream)
        with img:
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise ImageDecodeError(
                    f"image is {img.width}x{img.height} pixels, above the limit of {max_pixels}"
                )
            if img.format == "JPEG":
                img.draft("L", (image_size, image_size))
            img = ImageOps.exif_transpose(img)
            gray = _to_grayscale(img)
            if gray.size != (image_size, image_size):
                gray = gray.resize((image_size, image_size), Image.Resampling.BILINEAR)
            return np.asarray(gray, dtype=np.uint8).copy()
    except ImageDecodeError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"cannot decode image: {exc}") from exc


def _decode_path(args: tuple[str, int]) -> tuple[np.ndarray | None, str | None]:
    path, image_size = args
    try:
        return decode_radiograph(path, image_size), None
    except ImageDecodeError as exc:
        return None, str(exc)
    except OSError as exc:  # unreadable file: permissions, vanished, a folder
        return None, f"cannot read file: {exc.strerror or exc}"


def decode_files(
    paths: list[str], image_size: int, workers: int = 0, desc: str = "decode"
) -> tuple[np.ndarray, list[str | None]]:
    """Decode many files on every core; a file that fails gets a blank image and its error."""
    out = np.zeros((len(paths), image_size, image_size), dtype=np.uint8)
    errors: list[str | None] = [None] * len(paths)
    if not paths:
        return out, errors
    workers = workers or os.cpu_count() or 1
    jobs = [(p, image_size) for p in paths]
    chunksize = max(1, min(64, len(jobs) // (workers * 8) or 1))
    bar = tqdm(total=len(jobs), desc=desc, unit="img", disable=None)
    if workers == 1:
        results = map(_decode_path, jobs)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=workers)
        results = pool.map(_decode_path, jobs, chunksize=chunksize)
    try:
        for i, (pixels, error) in enumerate(results):
            if pixels is not None:
                out[i] = pixels
            errors[i] = error
            bar.update()
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown()
    return out, errors


def decode_many(
    paths: list[str], image_size: int, workers: int = 0, desc: str = "decode"
) -> np.ndarray:
    """Decode many files into one (N, size, size) uint8 array; any unreadable file is an error."""
    images, errors = decode_files(paths, image_size, workers, desc)
    for path, error in zip(paths, errors, strict=True):
        if error is not None:
            raise ImageDecodeError(f"{path}: {error}")
    return images


def save_arrays(path: Path, images: np.ndarray, frame: pd.DataFrame) -> None:
    """One split as an uncompressed .npz (fast to memory-map back) with its labels and ids."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(
                handle,
                images=images,
                labels=frame["label"].map(LABEL_INDEX).to_numpy(np.int64),
                paths=frame["path"].to_numpy(str),
                patient_ids=frame["patient_id"].to_numpy(str),
                subtypes=frame["subtype"].to_numpy(str),
            )


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """Load one split written by :func:`save_arrays`."""
    if not Path(path).is_file():
        raise PipelineOrderError(
            f"{path} not found: run `pneumo preprocess` (or `dvc repro`) first"
        )
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def preprocess(
    split_path: Path,
    data_root: Path,
    image_size: int,
    workspace: Workspace = Workspace(),
    workers: int = 0,
) -> dict[str, int]:
    """Decode every image of every split once and store it as uint8 arrays plus train statistics."""
    if not Path(split_path).is_file():
        raise PipelineOrderError(f"{split_path} not found: run `pneumo split` first")
    frame = pd.read_parquet(split_path)
    counts: dict[str, int] = {}
    stats: dict[str, float | int] = {"image_size": image_size}
    for split_name, part in frame.groupby("split", sort=True):
        part = part.sort_values("path").reset_index(drop=True)
        files = [str(Path(data_root) / p) for p in part["path"]]
        images = decode_many(files, image_size, workers, desc=f"preprocess {split_name}")
        save_arrays(workspace.arrays(str(split_name)), images, part)
        counts[str(split_name)] = len(part)
        if split_name == "train":
            # Normalisation statistics come from the train split only (no peeking at val/test).
            stats.update(mean=float(images.mean()), std=float(images.std()), n_train=len(part))
    with atomic_path(workspace.array_stats) as tmp:
        tmp.write_text(json.dumps(stats, indent=2) + "\n")
    log.info("preprocessed %s images at %d px", counts, image_size)
    return counts
