"""DICOM radiographs -> a plain grayscale image, so DICOM enters the one preprocessing path.

Hospitals send DICOM, the model was trained on JPEGs. This module only turns the DICOM pixel data
into display values (rescale slope/intercept, VOI window when the file has one, MONOCHROME1
inverted so bone is always bright) and hands back a PIL image; resizing and grayscale conversion
stay in :func:`pneumo.data.preprocess.decode_radiograph`. Anything it cannot read faithfully is
refused with :class:`DicomError` rather than guessed at.
"""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
from PIL import Image

from pneumo.errors import PneumoError

log = logging.getLogger(__name__)

DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"
# Deflated Explicit VR Little Endian: pydicom inflates the whole dataset in memory before any
# check could run, so a small upload could expand to gigabytes. Refused from the raw file meta.
DEFLATED_TRANSFER_SYNTAX = b"1.2.840.10008.1.2.1.99"
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


class DicomError(PneumoError):
    """A DICOM file that cannot be used: not DICOM, damaged, or a kind pneumo does not read."""


class UnsupportedDicomError(DicomError):
    """A readable DICOM file of a kind pneumo refuses (colour, multi-frame, no pixels, ...)."""


class DicomTooLargeError(DicomError):
    """The header announces more pixels than allowed; refused before the pixels are decoded."""


def is_dicom(data: bytes) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble."""
    return data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == DICOM_MAGIC


def _file_meta_bytes(data: bytes) -> bytes:
    """The raw file meta group (0002,xxxx), located from its group length when present."""
    start = DICOM_MAGIC_OFFSET + 4
    tag, vr = data[start : start + 4], data[start + 4 : start + 6]
    if tag == b"\x02\x00\x00\x00" and vr == b"UL":
        length = int.from_bytes(data[start + 8 : start + 12], "little")
        return data[start : start + 12 + length]
    return data  # no group length: search everything (over-cautious, never under)


def _to_image(pixels: np.ndarray, invert: bool, passthrough_8bit: bool) -> Image.Image:
    """Display values -> an 8-bit ('L') or 16-bit ('I;16') image; MONOCHROME1 inverted here."""
    if passthrough_8bit:
        out = pixels.astype(np.uint8)
        return Image.fromarray(255 - out if invert else out, mode="L")
    values = pixels.astype(np.float64)
    integral = np.array_equal(values, np.round(values))
    if not (integral and values.min() >= 0 and values.max() <= 65535):
        # Negative, fractional or wide values (e.g. Hounsfield-like rescales): keep their order
        # on 0..65535; decode_radiograph windows 16-bit images to their own min..max anyway.
        low, high = float(values.min()), float(values.max())
        scale = 65535.0 / (high - low) if high > low else 0.0
        values = np.rint((values - low) * scale)
    out16 = values.astype(np.uint16)
    if invert:
        out16 = 65535 - out16
    return Image.fromarray(out16)  # uint16 -> mode 'I;16'


def dicom_to_image(data: bytes, max_pixels: int | None = None) -> Image.Image:
    """One DICOM radiograph (file bytes) -> a grayscale PIL image of display values.

    Accepts single-frame MONOCHROME1/2 images of 8 or 16 bits, uncompressed or in any
    compression pydicom can decode here; ``max_pixels`` is checked from the header first.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if not is_dicom(data):
        raise DicomError(
            "not a DICOM file: the 'DICM' marker after the 128-byte preamble is missing"
        )
    if DEFLATED_TRANSFER_SYNTAX in _file_meta_bytes(data):
        raise UnsupportedDicomError(
            "deflate-compressed DICOM is not accepted: send it uncompressed or JPEG-compressed"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about every non-conformant tag
            ds = pydicom.dcmread(io.BytesIO(data), force=False)
    except (InvalidDicomError, ValueError, TypeError, KeyError, EOFError, OSError) as exc:
        raise DicomError(f"cannot parse DICOM file: {exc}") from exc
    if "PixelData" not in ds:
        raise UnsupportedDicomError("the DICOM file holds no image (no PixelData element)")
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1))
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        bits_allocated = int(ds.BitsAllocated)
        photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    except (AttributeError, TypeError, ValueError) as exc:
        raise DicomError(f"the DICOM image attributes are missing or invalid: {exc}") from exc
    if rows < 1 or columns < 1:
        raise DicomError(f"the DICOM image has an invalid size of {columns}x{rows} pixels")
    if max_pixels is not None and rows * columns > max_pixels:
        raise DicomTooLargeError(
            f"image is {columns}x{rows} pixels, above the limit of {max_pixels}"
        )
    if frames != 1:
        raise UnsupportedDicomError(
            f"multi-frame DICOM ({frames} frames) is not supported: send one radiograph per file"
        )
    if samples != 1 or photometric not in MONOCHROME:
        raise UnsupportedDicomError(
            f"colour DICOM ({photometric or 'unknown'} with {samples} samples per pixel) is not "
            "supported: chest radiographs are MONOCHROME1 or MONOCHROME2"
        )
    if bits_allocated not in (8, 16):
        raise UnsupportedDicomError(
            f"{bits_allocated}-bit DICOM pixels are not supported: send 8- or 16-bit images"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = ds.pixel_array
    except (NotImplementedError, RuntimeError, ImportError) as exc:
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown")
        name = getattr(syntax, "name", str(syntax))
        raise UnsupportedDicomError(
            f"cannot decode DICOM pixel data compressed as '{name}': send it uncompressed"
        ) from exc
    except (ValueError, TypeError, AttributeError, KeyError, EOFError, OSError) as exc:
        raise DicomError(f"the DICOM pixel data is damaged or truncated: {exc}") from exc
    if raw.shape != (rows, columns):
        raise UnsupportedDicomError(
            f"the DICOM pixel data has shape {raw.shape}, expected one {rows}x{columns} image"
        )
    has_rescale = "RescaleSlope" in ds or "RescaleIntercept" in ds or "ModalityLUTSequence" in ds
    has_voi = "WindowCenter" in ds or "VOILUTSequence" in ds
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    passthrough = bits_allocated == 8 and not (has_rescale or has_voi or signed)
    try:
        values = raw
        if has_rescale:
            values = apply_modality_lut(values, ds)
        if has_voi:
            values = apply_voi_lut(values, ds)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        raise DicomError(f"the DICOM rescale or window attributes are invalid: {exc}") from exc
    if not np.isfinite(values).all():
        raise DicomError("the DICOM rescale produced non-finite pixel values")
    log.debug("DICOM %dx%d, %d-bit, %s", columns, rows, bits_allocated, photometric)
    return _to_image(np.asarray(values), photometric == "MONOCHROME1", passthrough)
