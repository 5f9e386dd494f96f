"""One uploaded file -> the model's pixels, or an :class:`InputError` that says what was wrong.

Every check that can run from a header runs before any pixel is decoded: the declared content
type, the sniffed format, the pixel count (decompression bombs) and the smallest side. Decoding
itself is :func:`pneumo.data.preprocess.decode_radiograph`, as in training; DICOM is first turned
into a plain image by :func:`pneumo.data.dicom.dicom_for_model` (a wrapped JPEG at reduced scale,
as a JPEG upload).
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from pneumo.data.dicom import (
    DicomError,
    DicomTooLargeError,
    UnsupportedDicomError,
    dicom_for_model,
    is_dicom,
)
from pneumo.data.preprocess import (
    CorruptImageError,
    ImageDecodeError,
    ImageTooLargeError,
    UnsupportedImageError,
    decode_radiograph,
)
from pneumo.inference.guard import Screening

# Declared content type -> the format it promises (None: "look at the bytes").
ACCEPTED_TYPES: dict[str, str | None] = {
    "image/jpeg": "JPEG",
    "image/jpg": "JPEG",
    "image/pjpeg": "JPEG",
    "image/png": "PNG",
    "application/dicom": "DICOM",
    "application/octet-stream": None,
}
JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _reason(exc: BaseException, limit: int = 240) -> str:
    """A library's error message made safe to return: no object reprs, bounded length."""
    text = re.sub(r"<[^<>]*>", "the upload", str(exc)).replace("\n", " ").strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


class InputError(Exception):
    """A request the service refuses; ``status`` is the HTTP status, ``code`` a stable name,
    ``details`` more fields of the answer (e.g. each bad file of a batch)."""

    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def to_json(self) -> dict[str, Any]:
        return {"error": self.message, "code": self.code, **self.details}


@dataclass(frozen=True)
class Radiograph:
    """A decoded upload: the model's (S, S) uint8 pixels and what the file was.

    ``screen_reason`` is the guard's cheap screen of the file itself (colour, aspect ratio;
    pneumo/inference/guard.py), None when it passed; the network-side check happens in the model service.
    """

    pixels: np.ndarray
    format: str
    width: int
    height: int
    screen_reason: str | None = None


def media_type(content_type: str | None) -> str:
    """'Image/JPEG; charset=x' -> 'image/jpeg'; a missing header counts as octet-stream."""
    if not content_type:
        return "application/octet-stream"
    return content_type.split(";", 1)[0].strip().lower()


def sniff_format(data: bytes) -> str | None:
    """The format the bytes themselves announce, whatever the client declared."""
    if data.startswith(JPEG_MAGIC):
        return "JPEG"
    if data.startswith(PNG_MAGIC):
        return "PNG"
    if is_dicom(data):
        return "DICOM"
    return None


def _check_size(width: int, height: int, max_pixels: int, min_side: int) -> None:
    if width * height > max_pixels:
        raise InputError(
            413,
            "too_many_pixels",
            f"image is {width}x{height} pixels, above the limit of {max_pixels}: downscale it",
        )
    if min(width, height) < min_side:
        raise InputError(
            422,
            "image_too_small",
            f"image is {width}x{height} pixels; both sides must be at least {min_side}",
        )


def _open_dicom(data: bytes, max_pixels: int, image_size: int) -> tuple[Image.Image, Screening]:
    """The DICOM's image for the model and its screen (grey by then; the header's size)."""
    try:
        image, (width, height) = dicom_for_model(data, image_size, max_pixels)
        return image, Screening(width, height, 0.0)
    except DicomTooLargeError as exc:
        raise InputError(413, "too_many_pixels", _reason(exc)) from None
    except UnsupportedDicomError as exc:
        raise InputError(422, "unsupported_dicom", _reason(exc)) from None
    except DicomError as exc:
        raise InputError(400, "invalid_dicom", _reason(exc)) from None


def _open_image(data: bytes, fmt: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Our own pixel limit runs next; PIL's bomb warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError:
        raise InputError(413, "too_many_pixels", "image has far too many pixels") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(
            400, "invalid_image", f"cannot read the {fmt} header: {_reason(exc)}"
        ) from None


def read_radiograph(
    data: bytes,
    content_type: str | None,
    image_size: int,
    max_pixels: int,
    min_side: int,
) -> Radiograph:
    """Validate and decode one JPEG, PNG or DICOM file into the model's pixels."""
    if not data:
        raise InputError(400, "empty_body", "the request holds no file: send a JPEG, PNG or DICOM")
    declared = media_type(content_type)
    if declared not in ACCEPTED_TYPES:
        raise InputError(
            415,
            "unsupported_media_type",
            f"content type '{declared}' is not accepted: send image/jpeg, image/png or "
            "application/dicom (or multipart/form-data with one such file)",
        )
    fmt = sniff_format(data)
    if fmt is None:
        raise InputError(
            415, "unsupported_format", "the file is not a JPEG, PNG or DICOM (Part 10) image"
        )
    promised = ACCEPTED_TYPES[declared]
    if promised is not None and promised != fmt:
        raise InputError(
            415,
            "content_type_mismatch",
            f"declared {declared} but the file is {fmt}: send the matching content type",
        )
    if fmt == "DICOM":
        image, screening = _open_dicom(data, max_pixels, image_size)
    else:
        image = _open_image(data, fmt)
        screening = Screening.of(image)  # drafts a JPEG: its image is not used after
    width, height = screening.width, screening.height
    try:
        _check_size(width, height, max_pixels, min_side)
        screen_reason = screening.reason(None)
        # A JPEG or PNG is decoded again from its bytes: the integrity rule needs them.
        source = image if fmt == "DICOM" else data
        pixels = decode_radiograph(source, image_size, max_pixels)
    except ImageDecodeError as exc:
        raise _decode_refusal(exc, fmt) from None
    finally:
        image.close()
    return Radiograph(pixels, fmt, width, height, screen_reason)


def _decode_refusal(exc: ImageDecodeError, fmt: str) -> InputError:
    """The answer to a file that decoding refused; a damaged file is never predicted."""
    if isinstance(exc, CorruptImageError):
        return InputError(400, "corrupt_image", f"the {fmt} file is damaged: {_reason(exc)}")
    if isinstance(exc, ImageTooLargeError):
        return InputError(413, "image_too_large", _reason(exc))
    if isinstance(exc, UnsupportedImageError):
        return InputError(415, "unsupported_format", _reason(exc))
    return InputError(400, "invalid_image", f"cannot decode the {fmt} image: {_reason(exc)}")
