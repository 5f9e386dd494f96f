import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo.data.preprocess import ImageDecodeError, decode_many, decode_radiograph
from pneumo.workspace import atomic_path
from tests.conftest import write_image


def _encode(img: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16"])
def test_any_mode_becomes_square_grayscale_uint8(mode: str) -> None:
    gradient = np.tile(np.linspace(0, 255, 300, dtype=np.uint8), (200, 1))
    img = Image.fromarray(gradient)
    img = img.convert(mode) if mode != "I;16" else Image.fromarray(gradient.astype(np.uint16) * 257)
    out = decode_radiograph(_encode(img, "PNG"), 64)
    assert out.shape == (64, 64) and out.dtype == np.uint8
    assert out[:, 0].mean() < 20 and out[:, -1].mean() > 235  # intensity order preserved


def test_jpeg_draft_decoding_matches_full_decoding_closely() -> None:
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (25, 20)), np.ones((64, 64))).astype(np.uint8)
    data = _encode(Image.fromarray(smooth), "JPEG")
    fast = decode_radiograph(data, 128).astype(float)
    slow = np.asarray(
        Image.open(io.BytesIO(data)).convert("L").resize((128, 128), Image.Resampling.BILINEAR)
    )
    assert np.abs(fast - slow).mean() < 6


def test_same_pixels_from_path_bytes_and_file_object(tmp_path: Path) -> None:
    path = write_image(tmp_path / "a.png", size=(90, 70), seed=3)
    from_path = decode_radiograph(path, 48)
    np.testing.assert_array_equal(from_path, decode_radiograph(path.read_bytes(), 48))
    with path.open("rb") as handle:
        np.testing.assert_array_equal(from_path, decode_radiograph(handle, 48))


@pytest.mark.parametrize("payload", [b"", b"not an image", b"\xff\xd8\xff\xe0" + b"\x00" * 40])
def test_garbage_raises_decode_error(payload: bytes) -> None:
    with pytest.raises(ImageDecodeError):
        decode_radiograph(payload, 64)


def test_pixel_limit_rejects_before_decoding() -> None:
    data = _encode(Image.new("L", (400, 300)), "PNG")
    with pytest.raises(ImageDecodeError, match="above the limit"):
        decode_radiograph(data, 64, max_pixels=100_000)


def test_decode_many_parallel_equals_serial(tmp_path: Path) -> None:
    paths = [str(write_image(tmp_path / f"{i}.jpeg", seed=i)) for i in range(12)]
    np.testing.assert_array_equal(
        decode_many(paths, 32, workers=1), decode_many(paths, 32, workers=2)
    )


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("good")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "good"
    assert list(tmp_path.iterdir()) == [target]
