import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from pneumo.data.preprocess import (
    CorruptImageError,
    ImageDecodeError,
    ImageTooLargeError,
    UnsupportedImageError,
    decode_many,
    decode_radiograph,
)
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


# ---------------------------------------------------------------- the integrity rule


@pytest.fixture(scope="module")
def original(originals_root: Path) -> bytes:
    return sorted(originals_root.rglob("*.jpeg"))[0].read_bytes()


def _damaged_jpegs(data: bytes) -> dict[str, bytes]:
    from tests.serving.hostile_corpus import _flip_bits, _replace, jpeg_segments

    _, (scan, size) = jpeg_segments(data)
    half = size // 2
    return {
        "64_flips": _flip_bits(data, scan, size, 64, seed=1),
        "ff_run": _replace(data, scan + half, b"\xff" * 64),
        "second_half_zeroed": _replace(data, scan + half, bytes(size - half)),
        "cut_with_end_marker": data[: scan + half] + b"\xff\xd9",
        "truncated": data[: scan + half],
        "no_end_marker": data[:-2],
    }


@pytest.mark.parametrize(
    "damage",
    [
        "64_flips",
        "ff_run",
        "second_half_zeroed",
        "cut_with_end_marker",
        "truncated",
        "no_end_marker",
    ],
)
def test_damaged_scans_of_a_real_jpeg_are_refused(original: bytes, damage: str) -> None:
    intact = decode_radiograph(original, 64)  # the same file decodes when intact
    assert intact.std() > 10
    with pytest.raises(CorruptImageError, match="JPEG data is corrupt or truncated"):
        decode_radiograph(_damaged_jpegs(original)[damage], 64)


def test_truncated_files_are_refused_even_if_pillow_is_told_to_fill_them(
    original: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # some other library did this
    with pytest.raises(CorruptImageError):
        decode_radiograph(_damaged_jpegs(original)["truncated"], 64)
    png = _encode(Image.fromarray(decode_radiograph(original, 200)), "PNG")
    with pytest.raises(CorruptImageError):
        decode_radiograph(png[: len(png) * 3 // 4], 64)


def test_a_declared_size_the_data_cannot_fill_is_refused(original: bytes) -> None:
    from tests.serving.hostile_corpus import jpeg_bombs

    bomb = next(jpeg_bombs(original))  # 7000 x 7000 declared, 64 x 64 of data
    with pytest.raises(CorruptImageError):
        decode_radiograph(bomb.data, 64, max_pixels=50_000_000)


def test_arithmetic_coded_jpeg_is_refused(original: bytes) -> None:
    sof = original.index(b"\xff\xc0")
    arithmetic = original[:sof] + b"\xff\xc9" + original[sof + 2 :]
    with pytest.raises(UnsupportedImageError, match="arithmetic-coded"):
        decode_radiograph(arithmetic, 64)


@pytest.mark.parametrize("case", ["png_second_half_zeroed_crc_recomputed", "png_idat_flip_crc_kept_0",
                                  "png_stream_shorter_than_declared", "png_data_after_stream",
                                  "png_no_iend", "png_declares_more_rows_than_it_holds",
                                  "png_compression_method_1", "png_filter_method_1",
                                  "png_interlace_method_2"])  # fmt: skip
def test_damaged_pngs_are_refused(original: bytes, case: str) -> None:
    from tests.serving.hostile_corpus import png_cases

    gray = decode_radiograph(original, 300)
    data = {c.name: c.data for c in png_cases(gray)}[case]
    with pytest.raises(ImageDecodeError):
        decode_radiograph(data, 64)


def test_decoded_bytes_are_bounded_whatever_the_bit_depth() -> None:
    from tests.serving.hostile_corpus import png_cases

    gray = np.random.default_rng(0).integers(0, 256, (200, 200), dtype=np.uint8)
    bomb = {c.name: c.data for c in png_cases(gray)}["png_16bit_rgba_7071px"]  # 0.2 MB file
    with pytest.raises(ImageTooLargeError, match="takes 200 MB, above the limit of 50 MB"):
        decode_radiograph(bomb, 64, max_pixels=50_000_000)


PEAK_SCRIPT = """
import io, resource, sys
import numpy as np
from PIL import Image
from pneumo.data.preprocess import decode_radiograph
buffer = io.BytesIO()
Image.fromarray(np.tile(np.arange(5000, dtype=np.uint16) * 13, (5000, 1))).save(buffer, "PNG")
data = buffer.getvalue()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
decode_radiograph(data, 128, max_pixels=50_000_000)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_a_16_bit_image_is_converted_without_full_size_float_copies() -> None:
    """5000 x 5000 16-bit: 50 MB decoded; full-size float32 copies would add 200 MB more."""
    out = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT], capture_output=True, text=True, check=True
    )
    assert int(out.stdout.strip()) < 120  # MB above the peak before decoding


def test_a_jpeg_smaller_than_the_model_side_is_enlarged(tmp_path) -> None:  # noqa: ANN001
    from PIL import Image

    from pneumo.data.imagefile import draft_scale
    from pneumo.data.preprocess import decode_radiograph

    assert draft_scale((100, 80), 224) == 1 and draft_scale((1800, 1700), 224) == 4
    path = tmp_path / "small.jpeg"
    Image.new("L", (100, 80), 90).save(path)
    pixels = decode_radiograph(path, 224)
    assert pixels.shape == (224, 224) and abs(int(pixels.mean()) - 90) <= 2
