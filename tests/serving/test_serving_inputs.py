"""Uploads -> pixels: DICOM variants decode to the same pixels as a PNG of the image; bad files
are refused with the right status before anything large is decoded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo.data.dicom import (
    DicomError,
    DicomTooLargeError,
    UnsupportedDicomError,
    dicom_to_image,
)
from pneumo.data.preprocess import decode_radiograph
from serving.inputs import InputError, media_type, read_radiograph, sniff_format
from tests.serving.serving_samples import (
    dicom8,
    dicom16_inverted_rescaled,
    dicom_bytes,
    full_range,
    png_bytes,
)

SIZE = 64


@pytest.fixture(scope="module")
def radiograph(originals_root: Path) -> np.ndarray:
    """One real full-size radiograph as 8-bit grayscale, spanning 0..255."""
    path = sorted(originals_root.rglob("*.jpeg"))[0]
    with Image.open(path) as img:
        return full_range(np.asarray(img.convert("L")))


def read(data: bytes, content_type: str | None = None, **limits: int):
    options = {"max_pixels": 50_000_000, "min_side": 64, **limits}
    return read_radiograph(data, content_type, SIZE, **options)


def test_dicom_variants_decode_like_the_png(radiograph: np.ndarray) -> None:
    expected = decode_radiograph(png_bytes(radiograph), SIZE)
    for data in (dicom8(radiograph), dicom16_inverted_rescaled(radiograph)):
        decoded = read(data, "application/dicom")
        assert decoded.format == "DICOM"
        assert (decoded.width, decoded.height) == (radiograph.shape[1], radiograph.shape[0])
        np.testing.assert_array_equal(decoded.pixels, expected)


def test_monochrome1_is_inverted_and_16_bit_kept_16_bit() -> None:
    ramp = np.tile(np.arange(0, 256, dtype=np.uint16) * 257, (80, 1))
    image = dicom_to_image(dicom_bytes(ramp, bits=16, photometric="MONOCHROME1"))
    assert image.mode == "I;16"
    values = np.asarray(image)
    assert values[0, 0] > values[0, -1]  # stored 0 is white in MONOCHROME1
    eight = dicom_to_image(dicom_bytes(ramp.astype(np.uint8) // 1, photometric="MONOCHROME1"))
    assert eight.mode == "L" and np.asarray(eight)[0, 0] == 255


def test_window_is_applied_when_present() -> None:
    ramp = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (80, 1))
    windowed = np.asarray(dicom_to_image(dicom_bytes(ramp, bits=16, window=(1024, 512))))
    # Everything above the window's top is equally white, everything below equally black.
    assert len(np.unique(windowed[0, ramp[0] >= 1280])) == 1
    assert len(np.unique(windowed[0, ramp[0] <= 768])) == 1


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\0" * 200, DicomError),
        (dicom_bytes(np.zeros((80, 80), np.uint8), with_pixels=False), UnsupportedDicomError),
        (
            dicom_bytes(np.zeros((80, 80, 3), np.uint8), samples=3, photometric="RGB"),
            UnsupportedDicomError,
        ),
        (dicom_bytes(np.zeros((80, 80), np.uint8), rows=9000, columns=9000), DicomTooLargeError),
    ],
    ids=["not_dicom", "no_pixels", "rgb", "too_large"],
)
def test_dicom_errors_are_specific(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        dicom_to_image(data, max_pixels=10_000_000)


def test_pixel_limit_runs_before_decoding(radiograph: np.ndarray) -> None:
    with pytest.raises(InputError) as raised:
        read(png_bytes(radiograph), "image/png", max_pixels=1000)
    assert raised.value.status == 413 and raised.value.code == "too_many_pixels"


def test_formats_and_content_types() -> None:
    assert sniff_format(b"\xff\xd8\xff\xe0") == "JPEG"
    assert sniff_format(b"\x89PNG\r\n\x1a\n") == "PNG"
    assert sniff_format(b"\0" * 128 + b"DICM") == "DICOM"
    assert sniff_format(b"GIF89a") is None
    assert media_type("Image/JPEG; charset=binary") == "image/jpeg"
    assert media_type(None) == "application/octet-stream"


def test_error_messages_hold_no_object_reprs() -> None:
    with pytest.raises(InputError) as raised:
        read(b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "image/png")
    assert raised.value.status == 400
    assert "0x" not in raised.value.message and "<" not in raised.value.message


@pytest.mark.parametrize(
    "case",
    [
        "dicom_nested_40_explicit_False",
        "dicom_nested_40_implicit_False",
        "dicom_nested_40_explicit_True",
        "dicom_nested_3000_by_hand",
        "dicom_25000_elements",
    ],
)
def test_dicom_structure_is_bounded_before_pydicom_parses_it(
    radiograph: np.ndarray, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.serving.hostile_corpus import dicom_cases

    data = {c.name: c.data for c in dicom_cases(radiograph[:300, :300])}[case]
    with pytest.raises(DicomError, match="nests sequences more than 16 deep|more than 20000"):
        dicom_to_image(data)
    assert len(caplog.records) < 5  # no flood of log lines


def test_shallow_sequences_are_read(radiograph: np.ndarray) -> None:
    from tests.serving.hostile_corpus import _nested

    nested = _nested(dicom8(radiograph[:200, :200]), depth=3, undefined=True)
    assert np.asarray(dicom_to_image(nested)).shape == (200, 200)


def test_damaged_jpeg_upload_is_400_corrupt_image(originals_root: Path) -> None:
    from tests.serving.hostile_corpus import jpeg_damage

    path = sorted(originals_root.rglob("*.jpeg"))[1]
    damaged = next(jpeg_damage(path.stem, path.read_bytes(), seed=3))  # 64 flipped bits
    with pytest.raises(InputError) as raised:
        read(damaged.data, "image/jpeg")
    assert (raised.value.status, raised.value.code) == (400, "corrupt_image")
    assert read(path.read_bytes(), "image/jpeg").pixels.std() > 10


def _wrapped(jpeg: bytes, **attributes: object) -> bytes:
    """A JPEG radiograph as the DX instance modalities and `pneumo dicom-send` write."""
    from serving.dicom.results import part10
    from serving.dicom.send import wrap_radiograph

    ds = wrap_radiograph(jpeg)
    for key, value in attributes.items():
        setattr(ds, key, value)
    return part10(ds)


def test_a_wrapped_jpeg_dicom_reads_as_the_jpeg_it_wraps(originals_root: Path) -> None:
    """JPEG-baseline DICOM is decoded at reduced scale as a JPEG upload: the very pixels (the
    ones training saw), not a full-size decode resized, which differed by up to 49 grey levels."""
    grey = 0
    for path in sorted(originals_root.rglob("*.jpeg")):
        jpeg = path.read_bytes()
        as_jpeg = read_radiograph(jpeg, "image/jpeg", 128, 50_000_000, 64)
        as_dicom = read_radiograph(_wrapped(jpeg), "application/dicom", 128, 50_000_000, 64)
        assert (as_dicom.width, as_dicom.height) == (as_jpeg.width, as_jpeg.height), path.name
        assert as_dicom.screen_reason == as_jpeg.screen_reason
        if Image.open(path).mode == "L":  # colour JPEGs are wrapped uncompressed, as grey
            grey += 1
            np.testing.assert_array_equal(as_dicom.pixels, as_jpeg.pixels, err_msg=path.name)
    assert grey >= 40


def test_jpeg_dicom_at_full_size_is_pydicoms_decode(originals_root: Path) -> None:
    """The strict decoder changes no pixel of a full-size JPEG-baseline frame."""
    import io

    import pydicom

    for path in sorted(originals_root.rglob("*.jpeg"))[::6]:
        data = _wrapped(path.read_bytes())
        expected = pydicom.dcmread(io.BytesIO(data)).pixel_array
        np.testing.assert_array_equal(np.asarray(dicom_to_image(data)), expected)


def test_jpeg_dicom_with_a_window_or_monochrome1(originals_root: Path) -> None:
    """A window needs the full-size values (read as the uncompressed twin); MONOCHROME1 is the
    reduced-scale decode inverted (resizing before or after inverting: 1 grey level at most)."""
    import io

    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian

    jpeg = next(p for p in sorted(originals_root.rglob("*.jpeg"))
                if Image.open(p).mode == "L").read_bytes()  # fmt: skip
    windowed = _wrapped(jpeg, WindowCenter=100, WindowWidth=120)
    twin = pydicom.dcmread(io.BytesIO(windowed))
    twin.PixelData = twin.pixel_array.tobytes()
    twin["PixelData"].VR = "OB"
    twin.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    twin.save_as(buffer, enforce_file_format=True)
    np.testing.assert_array_equal(
        read(windowed, "application/dicom").pixels, read(buffer.getvalue()).pixels
    )
    inverted = read(_wrapped(jpeg, PhotometricInterpretation="MONOCHROME1")).pixels
    plain = read(jpeg, "image/jpeg").pixels.astype(int)
    assert np.abs(inverted.astype(int) - (255 - plain)).max() <= 1


def test_damaged_jpeg_dicom_is_refused_not_predicted(originals_root: Path) -> None:
    from tests.serving.hostile_corpus import dicom_jpeg_damage

    path = sorted(originals_root.rglob("*.jpeg"))[1]
    cases = dicom_jpeg_damage(path.stem, path.read_bytes(), seed=3)
    cases = [c for c in cases if c.code == "invalid_dicom"]  # the two bombs are 422
    assert len(cases) >= 20
    for case in cases:
        with pytest.raises(InputError) as raised:
            read(case.data, "application/dicom")
        assert (raised.value.status, raised.value.code) == (400, "invalid_dicom"), case.name
        with pytest.raises(DicomError, match="damaged or truncated"):
            dicom_to_image(case.data)  # the full-size decode refuses it too


def test_a_jpeg_frame_larger_than_its_dicom_header_is_refused_undecoded(
    originals_root: Path,
) -> None:
    """A 64 px header over a frame declaring 7000 or 30000 px: refused from the frame's header
    (pydicom decoded the 49-megapixel one before failing, and the other escaped as Pillow's
    DecompressionBombError, a 500)."""
    from tests.serving.hostile_corpus import dicom_jpeg_damage

    path = sorted(originals_root.rglob("*.jpeg"))[0]
    bombs = [c for c in dicom_jpeg_damage(path.stem, path.read_bytes(), 0) if "declares" in c.name]
    assert len(bombs) == 2
    for case in bombs:
        with pytest.raises(InputError) as raised:
            read(case.data)
        assert (raised.value.status, raised.value.code) == (422, "unsupported_dicom"), case.name
