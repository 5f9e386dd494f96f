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

from pneumo.data.imagefile import (
    CorruptImageError,
    ImageDecodeError,
    ImageTooLargeError,
    UnsupportedImageError,
    check_decoded_size,
    check_png,
    decode_jpeg,
    to_grayscale,
)
from pneumo.data.kermany import LABEL_INDEX
from pneumo.errors import PipelineOrderError
from pneumo.workspace import Workspace, atomic_path

log = logging.getLogger(__name__)

ImageSource = str | os.PathLike[str] | bytes | BinaryIO
EXIF_KEYS = ("exif", "xmp", "XML:com.adobe.xmp")  # where Pillow finds an image's orientation
__all__ = [  # the decoding errors live with the integrity rule, in pneumo/data/imagefile.py
    "CorruptImageError", "ImageDecodeError", "ImageSource", "ImageTooLargeError",
    "UnsupportedImageError", "decode_files", "decode_many",
    "decode_radiograph", "load_arrays", "preprocess", "save_arrays",
]  # fmt: skip


def _open(source: ImageSource) -> tuple[Image.Image, bytes | None]:
    """The lazily opened image and, for files, their bytes (the integrity rule needs them)."""
    if isinstance(source, bytes):
        data = source
    elif isinstance(source, str | os.PathLike):
        data = Path(source).read_bytes()
    else:
        data = source.read()
    return Image.open(io.BytesIO(data)), data


def _decode_checked(img: Image.Image, data: bytes | None, image_size: int) -> Image.Image:
    """Decode the pixels (JPEGs at reduced scale) and refuse a damaged file: the one rule."""
    if data is not None and img.format in ("JPEG", "MPO"):
        decoded = decode_jpeg(data, img, image_size)
        if decoded is not None:
            for key in EXIF_KEYS:  # the orientation travels with the decoded pixels
                if key in img.info:
                    decoded.info[key] = img.info[key]
            return decoded
    if data is not None and img.format == "PNG":
        check_png(data)
    if img.format == "JPEG":
        img.draft("L", (image_size, image_size))
    img.load()
    return img


def decode_radiograph(
    source: ImageSource | Image.Image, image_size: int, max_pixels: int | None = None
) -> np.ndarray:
    """Decode one radiograph into the model's pixels: grayscale uint8 of shape (size, size).

    JPEGs are decoded at reduced scale (DCT scaling, as PIL's draft mode) when they are much
    larger than the target, so a 2000 px original never becomes a full-resolution copy. Damaged
    files are refused (:class:`CorruptImageError`), never filled in: a JPEG scan with any
    corrupt-data warning, a PNG failing a checksum or shorter than its header says
    (pneumo/data/imagefile.py). Images are stretched to a square, as the Kermany release itself
    was resized. ``max_pixels`` rejects decompression bombs and images whose decoded form would
    exceed ``max_pixels`` bytes, from the header, before any pixel is decoded.
    """
    try:
        img, data = (source, None) if isinstance(source, Image.Image) else _open(source)
        with img:
            check_decoded_size(img, max_pixels)
            decoded = _decode_checked(img, data, image_size)
            gray = to_grayscale(ImageOps.exif_transpose(decoded))
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
