"""DICOM radiographs -> a plain grayscale image, so DICOM enters the one preprocessing path.

Hospitals send DICOM, the model was trained on JPEGs. This module only turns the DICOM pixel data
into display values (rescale slope/intercept, VOI window when the file has one, MONOCHROME1
inverted so bone is always bright) and hands back a PIL image; resizing and grayscale conversion
stay in :func:`pneumo.data.preprocess.decode_radiograph`. Anything it cannot read faithfully is
refused with :class:`DicomError` rather than guessed at.

For the model (:func:`dicom_for_model`), an 8-bit JPEG-baseline image with no rescale or window
(what modalities and ``pneumo dicom-send`` write for a JPEG radiograph) is decoded the way a JPEG
upload is: in the DCT domain at the smallest scale that covers the model's side, with the same
strict integrity check. A DICOM-wrapped JPEG then gets the very pixels of the JPEG it wraps, the
pixels training saw, at the JPEG route's speed instead of a full-resolution decode and resize.
Every JPEG-baseline frame is decoded by that strict decoder (full size where a rescale or window
follows), so a damaged frame is refused here as a damaged JPEG upload is, never predicted.
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
from typing import Any

import numpy as np
from PIL import Image

from pneumo.data.imagefile import ImageDecodeError, UnsupportedImageError, decode_jpeg
from pneumo.errors import PneumoError

log = logging.getLogger(__name__)

DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"
# Deflated Explicit VR Little Endian: pydicom inflates the whole dataset in memory before any
# check could run, so a small upload could expand to gigabytes. Refused from the raw file meta.
DEFLATED_TRANSFER_SYNTAX = b"1.2.840.10008.1.2.1.99"
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
# Bounds on the dataset's structure, checked by a flat walk before pydicom parses it: pydicom
# parses nested sequences recursively (a 58 KB file nested 200 deep raised RecursionError), and
# a radiograph's header holds a few hundred elements, nested a few levels deep.
MAX_SEQUENCE_DEPTH = 16
MAX_ELEMENTS = 20_000
IMPLICIT_LITTLE_ENDIAN = b"1.2.840.10008.1.2"
EXPLICIT_BIG_ENDIAN = b"1.2.840.10008.1.2.2"
UNDEFINED_LENGTH = 0xFFFFFFFF
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT",
                      b"SV", b"UV"})  # fmt: skip
ITEM, ITEM_END, SEQUENCE_END = 0xE000, 0xE00D, 0xE0DD


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


def _dataset_start(data: bytes, meta: bytes) -> tuple[int, bool, str]:
    """Where the dataset begins after the file meta, whether its VR is explicit, its byte order."""
    start = DICOM_MAGIC_OFFSET + 4 + len(meta) if meta is not data else _skip_meta(data)
    syntax = _transfer_syntax(meta).rstrip(b"\0 ")
    if syntax == IMPLICIT_LITTLE_ENDIAN:
        return start, False, "<"
    return start, True, ">" if syntax == EXPLICIT_BIG_ENDIAN else "<"


def _skip_meta(data: bytes) -> int:
    """End of a file meta group without a group length: its elements are explicit VR LE."""
    pos = DICOM_MAGIC_OFFSET + 4
    while pos + 8 <= len(data) and data[pos : pos + 2] == b"\x02\x00":
        vr = data[pos + 4 : pos + 6]
        if vr in LONG_VRS:
            pos += 12 + int.from_bytes(data[pos + 8 : pos + 12], "little")
        else:
            pos += 8 + int.from_bytes(data[pos + 6 : pos + 8], "little")
    return pos


def _transfer_syntax(meta: bytes) -> bytes:
    at = meta.find(b"\x02\x00\x10\x00UI")
    if at < 0:
        return b""
    length = int.from_bytes(meta[at + 6 : at + 8], "little")
    return meta[at + 8 : at + 8 + length]


def check_structure(data: bytes) -> None:
    """Refuse a dataset nested deeper than MAX_SEQUENCE_DEPTH sequences or holding more than
    MAX_ELEMENTS elements, walking it without recursion before pydicom parses it."""
    start, explicit, order = _dataset_start(data, _file_meta_bytes(data))
    stack: list[tuple[int | None, str]] = []  # (end offset or None: undefined, kind)
    pos, count = start, 0
    while pos + 8 <= len(data):
        while stack and stack[-1][0] is not None and pos >= stack[-1][0]:
            stack.pop()
        count += 1
        if count > MAX_ELEMENTS:
            raise DicomError(f"the DICOM file holds more than {MAX_ELEMENTS} elements")
        group, element = struct.unpack_from(order + "HH", data, pos)
        if group == 0xFFFE:
            length = struct.unpack_from(order + "I", data, pos + 4)[0]
            pos += 8
            if element == ITEM and stack and stack[-1][1] == "pixels":
                pos += 0 if length == UNDEFINED_LENGTH else length  # a pixel data fragment
            elif element == ITEM:
                stack.append((None if length == UNDEFINED_LENGTH else pos + length, "item"))
            elif element == ITEM_END and stack and stack[-1][1] == "item":
                stack.pop()
            elif element == SEQUENCE_END:
                while stack and stack.pop()[1] == "item":
                    pass
            continue
        vr = data[pos + 4 : pos + 6] if explicit else b""
        if explicit and vr in LONG_VRS:
            length, pos = struct.unpack_from(order + "I", data, pos + 8)[0], pos + 12
        elif explicit:
            length, pos = struct.unpack_from(order + "H", data, pos + 6)[0], pos + 8
        else:
            length, pos = struct.unpack_from(order + "I", data, pos + 4)[0], pos + 8
        undefined = length == UNDEFINED_LENGTH
        starts_item = data[pos : pos + 4] == struct.pack(order + "HH", 0xFFFE, ITEM)
        if (group, element) == (0x7FE0, 0x0010) and undefined:
            stack.append((None, "pixels"))  # encapsulated pixel data: items of raw bytes
        elif vr == b"SQ" or undefined or (not explicit and starts_item):
            stack.append((None if undefined else pos + length, "sequence"))
            if sum(kind == "sequence" for _, kind in stack) > MAX_SEQUENCE_DEPTH:
                raise DicomError(
                    f"the DICOM file nests sequences more than {MAX_SEQUENCE_DEPTH} deep"
                )
        else:
            pos += length


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


def _parse(data: bytes) -> Any:
    """The dataset, after the checks that must run before pydicom reads anything."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not is_dicom(data):
        raise DicomError(
            "not a DICOM file: the 'DICM' marker after the 128-byte preamble is missing"
        )
    if DEFLATED_TRANSFER_SYNTAX in _file_meta_bytes(data):
        raise UnsupportedDicomError(
            "deflate-compressed DICOM is not accepted: send it uncompressed or JPEG-compressed"
        )
    check_structure(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about every non-conformant tag
            return pydicom.dcmread(io.BytesIO(data), force=False)
    except (InvalidDicomError, ValueError, TypeError, KeyError, EOFError, OSError) as exc:
        raise DicomError(f"cannot parse DICOM file: {exc}") from exc
    except RecursionError:  # bounded by check_structure; never let it reach the logs
        raise DicomError("the DICOM file nests its elements too deeply") from None


def _check_image_attributes(ds: Any, max_pixels: int | None) -> tuple[int, int, int, str]:
    """(rows, columns, bits allocated, photometric) of a single-frame grey image within limits."""
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
    stored = rows * columns * samples * frames * max(1, bits_allocated // 8)
    if max_pixels is not None and stored > max_pixels:  # bytes, as for JPEG and PNG
        raise DicomTooLargeError(
            f"the {columns}x{rows} pixel data takes {stored / 1e6:.0f} MB, above the limit of "
            f"{max_pixels / 1e6:.0f} MB: send a smaller or single-frame image"
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
    return rows, columns, bits_allocated, photometric


def _pixels(ds: Any, rows: int, columns: int) -> np.ndarray:
    """The stored pixel values, decompressed; damaged or unknown compression is refused."""
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
    return raw


def _jpeg_frame(ds: Any, rows: int, columns: int, image_size: int) -> np.ndarray:
    """The one JPEG-baseline frame, decoded and checked as a JPEG upload is (scaled down to
    cover ``image_size``); a frame that is not the grey image of the header's size is refused
    before it is decoded (a small header over a huge frame would bypass the pixel limit)."""
    from pydicom.encaps import get_frame

    try:
        frame = get_frame(ds.PixelData, 0, number_of_frames=1)
        with warnings.catch_warnings():  # the size is compared with the header's next
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            header = Image.open(io.BytesIO(frame), formats=["JPEG"])
    except Image.DecompressionBombError:
        raise UnsupportedDicomError(
            f"the DICOM's JPEG frame declares far more pixels than its header's {columns}x{rows}"
        ) from None
    except (ValueError, TypeError, KeyError, EOFError, OSError, SyntaxError) as exc:
        raise DicomError(f"the DICOM pixel data is damaged or truncated: {exc}") from exc
    with header:
        if header.size != (columns, rows) or header.mode != "L":
            raise UnsupportedDicomError(
                f"the DICOM's JPEG frame is a {header.size[0]}x{header.size[1]} {header.mode} "
                f"image, but its header declares one {columns}x{rows} grey image"
            )
        try:
            decoded = decode_jpeg(frame, header, image_size)
        except UnsupportedImageError as exc:
            raise UnsupportedDicomError(f"the DICOM's JPEG frame: {exc}") from exc
        except ImageDecodeError as exc:  # any libjpeg corrupt-data warning: never predicted
            raise DicomError(f"the DICOM pixel data is damaged or truncated: {exc}") from exc
    if decoded is None:  # not reached for a grey frame; never fall back to a lenient decoder
        raise UnsupportedDicomError("the DICOM's JPEG frame could not be decoded as grey")
    return np.asarray(decoded)


def _display_image(
    data: bytes, max_pixels: int | None, image_size: int | None
) -> tuple[Image.Image, tuple[int, int]]:
    """The display image (a reduced-scale JPEG where the module docstring says) and the
    header's (columns, rows)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut
    from pydicom.uid import JPEGBaseline8Bit

    ds = _parse(data)
    rows, columns, bits_allocated, photometric = _check_image_attributes(ds, max_pixels)
    has_rescale = "RescaleSlope" in ds or "RescaleIntercept" in ds or "ModalityLUTSequence" in ds
    has_voi = "WindowCenter" in ds or "VOILUTSequence" in ds
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    passthrough = bits_allocated == 8 and not (has_rescale or has_voi or signed)
    invert = photometric == "MONOCHROME1"
    log.debug("DICOM %dx%d, %d-bit, %s", columns, rows, bits_allocated, photometric)
    if ds.file_meta.get("TransferSyntaxUID") == JPEGBaseline8Bit:
        # Reduced scale only where nothing but inversion follows; full size for a LUT.
        side = image_size if image_size is not None and passthrough else max(rows, columns)
        raw = _jpeg_frame(ds, rows, columns, side)
    else:
        raw = _pixels(ds, rows, columns)
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
    return _to_image(np.asarray(values), invert, passthrough), (columns, rows)


def dicom_to_image(data: bytes, max_pixels: int | None = None) -> Image.Image:
    """One DICOM radiograph (file bytes) -> a grayscale PIL image of display values.

    Accepts single-frame MONOCHROME1/2 images of 8 or 16 bits, uncompressed or in any
    compression pydicom can decode here; ``max_pixels`` is checked from the header first.
    """
    return _display_image(data, max_pixels, None)[0]


def dicom_for_model(
    data: bytes, image_size: int, max_pixels: int | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """:func:`dicom_to_image` for a model of side ``image_size``, and the header's (width,
    height): a JPEG-baseline image may come back decoded at reduced scale (module docstring),
    still at least ``image_size`` on each side, for ``decode_radiograph`` to resize."""
    return _display_image(data, max_pixels, image_size)
