"""The integrity rule changed no pixel: every intact shared image decodes exactly as before.

The reference is the decoding pneumo used before damaged files were refused: Pillow's draft
decode, EXIF orientation, grayscale, bilinear resize. The preprocessed arrays of the shared
images (224 px copies and full-size originals) must be bit-identical to it, so models trained
before and after see the same pixels.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from pneumo.data.imagefile import to_grayscale
from pneumo.data.preprocess import decode_radiograph


def reference_decode(data: bytes, image_size: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        if img.format == "JPEG":
            img.draft("L", (image_size, image_size))
        gray = to_grayscale(ImageOps.exif_transpose(img))
        if gray.size != (image_size, image_size):
            gray = gray.resize((image_size, image_size), Image.Resampling.BILINEAR)
        return np.asarray(gray, dtype=np.uint8)


def _differing(paths: list[Path], image_size: int) -> list[str]:
    wrong = []
    for path in paths:
        data = path.read_bytes()
        if not np.array_equal(
            decode_radiograph(data, image_size), reference_decode(data, image_size)
        ):
            wrong.append(path.name)
    return wrong


def test_every_shared_224px_image_decodes_as_before(real_root: Path) -> None:
    paths = sorted(real_root.rglob("*.jpeg"))
    assert len(paths) > 5000
    assert _differing(paths, 128) == []


@pytest.mark.parametrize("image_size", [64, 128, 224])
def test_full_size_originals_decode_as_before(originals_root: Path, image_size: int) -> None:
    assert _differing(sorted(originals_root.rglob("*.jpeg")), image_size) == []


def test_the_reference_grayscale_matches_a_whole_image_conversion(originals_root: Path) -> None:
    """to_grayscale works in strips; on an RGBA and a 16-bit image that equals converting whole."""
    with Image.open(sorted(originals_root.rglob("*.jpeg"))[0]) as img:
        gray = np.asarray(img.convert("L"))
    rgba = np.dstack([gray, gray, gray, (gray // 2 + 60).astype(np.uint8)])
    whole = Image.alpha_composite(
        Image.new("RGBA", (gray.shape[1], gray.shape[0]), (0, 0, 0, 255)),
        Image.fromarray(rgba, "RGBA"),
    ).convert("L")
    assert np.array_equal(to_grayscale(Image.fromarray(rgba, "RGBA")), np.asarray(whole))
    wide = gray.astype(np.uint16) * 200 + 7
    expected = np.clip((wide - 7.0) * (255.0 / (wide.max() - 7.0)) + 0.5, 0, 255).astype(np.uint8)
    assert np.array_equal(np.asarray(to_grayscale(Image.fromarray(wide))), expected)
