"""Inputs for the serving tests: DICOM files made with pydicom, and a corpus of malformed requests.

Each malformed case is the keyword arguments of one httpx request, so the same corpus runs
in-process (``to_asgi``) and against a real ``bentoml serve``.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEGLSLossless,
)

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
UID_ROOT = "1.2.826.0.1.3680043.8.498."


def full_range(pixels: np.ndarray) -> np.ndarray:
    """The same image with one black and one white pixel: 16-bit DICOMs, windowed to their own
    min..max, then decode to exactly these 8-bit values."""
    out = np.array(pixels, dtype=np.uint8, copy=True)
    out[0, 0], out[0, 1] = 0, 255
    return out


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def image_bytes(size: tuple[int, int], fmt: str, mode: str = "L", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0]), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


def dicom_bytes(
    pixels: np.ndarray,
    *,
    bits: int = 8,
    photometric: str = "MONOCHROME2",
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
    frames: int = 1,
    samples: int = 1,
    transfer_syntax: str = ExplicitVRLittleEndian,
    pixel_data: bytes | None = None,
    rows: int | None = None,
    columns: int | None = None,
    with_pixels: bool = True,
) -> bytes:
    """A DICOM Part 10 file (CR) holding ``pixels`` (stored values, already in ``bits``)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_STORAGE
    meta.MediaStorageSOPInstanceUID = UID_ROOT + "1"
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CR_STORAGE
    ds.SOPInstanceUID = UID_ROOT + "1"
    ds.Modality = "CR"
    ds.PatientID = "TEST"
    ds.Rows = rows if rows is not None else pixels.shape[0]
    ds.Columns = columns if columns is not None else pixels.shape[1]
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if samples > 1:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if slope is not None or intercept is not None:
        ds.RescaleSlope = slope if slope is not None else 1
        ds.RescaleIntercept = intercept if intercept is not None else 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if with_pixels:
        dtype = {8: np.uint8, 16: np.uint16, 32: np.uint32}[bits]
        ds.PixelData = (
            pixel_data if pixel_data is not None else np.ascontiguousarray(pixels, dtype).tobytes()
        )
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def dicom8(pixels: np.ndarray) -> bytes:
    """8-bit MONOCHROME2, stored as is: decodes to exactly ``pixels``."""
    return dicom_bytes(pixels)


def dicom16_inverted_rescaled(pixels: np.ndarray) -> bytes:
    """16-bit MONOCHROME1 with slope 2 / intercept -1024: decodes to ``pixels`` when they span
    0..255 (see :func:`full_range`): display = 2 * stored - 1024 = 4080 - 16 p, then inverted."""
    display = 4080 - 16 * pixels.astype(np.int64)
    stored = (display + 1024) // 2
    return dicom_bytes(
        stored.astype(np.uint16), bits=16, photometric="MONOCHROME1", slope=2, intercept=-1024
    )


# ---------------------------------------------------------------- malformed requests


@dataclass(frozen=True)
class Case:
    """One bad request: ``request`` are httpx keyword arguments; ``status`` what it must get."""

    name: str
    status: int
    path: str = "/predict"
    method: str = "POST"
    request: dict[str, Any] = field(default_factory=dict)


def _raw(data: bytes | Callable[[], Iterator[bytes]], content_type: str | None) -> dict[str, Any]:
    headers = {"content-type": content_type} if content_type else {}
    return {"content": data, "headers": headers}


def request_kwargs(case: Case) -> dict[str, Any]:
    """httpx keyword arguments; a streamed body is made afresh for every use."""
    kwargs = dict(case.request)
    if callable(kwargs.get("content")):
        kwargs["content"] = kwargs["content"]()
    return kwargs


def _patch_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite the frame header (SOF0/SOF2) with another width and height."""
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = data.find(marker)
        if at >= 0:
            out = bytearray(data)
            out[at + 5 : at + 9] = struct.pack(">HH", height, width)
            return bytes(out)
    raise ValueError("no SOF marker")


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _png_bomb(width: int, height: int) -> bytes:
    """A well-formed PNG announcing ``width`` x ``height`` with a few bytes of pixel data: what a
    decompression bomb looks like before anyone inflates it."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 4096)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x.jpeg", b"not really")
    return buffer.getvalue()


def _chunks(total: int, size: int = 1 << 20) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b"\0" * min(size, total - sent)
        sent += size


def malformed_cases(jpeg: bytes, max_request_bytes: int, max_batch_files: int) -> list[Case]:
    """Fifty kinds of bad input, each with the status it must get."""
    png = image_bytes((96, 96), "PNG")
    small = np.full((80, 80), 120, dtype=np.uint8)
    truncated_png = image_bytes((300, 300), "PNG", seed=3)
    bad_crc = bytearray(png)
    bad_crc[20] ^= 0xFF  # inside the IHDR data: its CRC no longer matches
    rgb = np.zeros((80, 80, 3), dtype=np.uint8)
    ls_frame = encapsulate([b"\xff\xd8\xff\xf7" + b"\0" * 64])
    cases: list[Case] = [
        Case("empty_body", 400, request=_raw(b"", "image/jpeg")),
        Case("empty_octet_stream", 400, request=_raw(b"", "application/octet-stream")),
        Case("text_plain_content_type", 415, request=_raw(jpeg, "text/plain")),
        Case("json_with_url", 415, request={"json": {"image": "http://127.0.0.1:9/x.jpeg"}}),
        Case("form_urlencoded", 415, request={"data": {"image": "x"}}),
        Case("gif_declared", 415, request=_raw(image_bytes((80, 80), "GIF"), "image/gif")),
        Case("gif_as_octet_stream", 415, request=_raw(image_bytes((80, 80), "GIF"), None)),
        Case("bmp", 415, request=_raw(image_bytes((80, 80), "BMP"), "application/octet-stream")),
        Case("tiff", 415, request=_raw(image_bytes((80, 80), "TIFF"), "application/octet-stream")),
        Case("pdf", 415, request=_raw(b"%PDF-1.4\n1 0 obj <<>> endobj\n%%EOF", "application/pdf")),
        Case("html", 415, request=_raw(b"<html><body>x-ray</body></html>", "image/jpeg")),
        Case("zip_archive", 415, request=_raw(_zip(), "application/octet-stream")),
        Case("random_bytes", 415, request=_raw(np.random.default_rng(0).bytes(4096), None)),
        Case("png_declared_as_jpeg", 415, request=_raw(png, "image/jpeg")),
        Case("truncated_jpeg", 400, request=_raw(jpeg[: len(jpeg) // 2], "image/jpeg")),
        Case("jpeg_header_only", 400, request=_raw(jpeg[:300], "image/jpeg")),
        Case("jpeg_magic_only", 400, request=_raw(jpeg[:3], "image/jpeg")),
        Case("jpeg_zero_width", 400, request=_raw(_patch_jpeg_size(jpeg, 0, 500), "image/jpeg")),
        Case(
            "jpeg_decompression_bomb",
            413,
            request=_raw(_patch_jpeg_size(jpeg, 30000, 30000), "image/jpeg"),
        ),
        Case("truncated_png", 400, request=_raw(truncated_png[:-2000], "image/png")),
        Case("png_bad_crc", 400, request=_raw(bytes(bad_crc), "image/png")),
        Case("png_decompression_bomb", 413, request=_raw(_png_bomb(40000, 40000), None)),
        Case("png_magic_only", 400, request=_raw(png[:8], "image/png")),
        Case("png_too_small", 422, request=_raw(image_bytes((10, 10), "PNG"), "image/png")),
        Case("jpeg_too_small", 422, request=_raw(image_bytes((32, 32), "JPEG"), "image/jpeg")),
        Case("thin_strip", 422, request=_raw(image_bytes((600, 20), "PNG"), "image/png")),
        Case(
            "body_over_limit",
            413,
            request=_raw(b"\xff\xd8\xff" + b"\0" * max_request_bytes, "image/jpeg"),
        ),
        Case(
            "chunked_body_over_limit",
            413,
            request=_raw(lambda: _chunks(max_request_bytes + (1 << 20)), "image/jpeg"),
        ),
        Case("multipart_without_file", 400, request={"files": {"note": (None, b"hello")}}),
        Case(
            "multipart_two_files",
            400,
            request={"files": [("a", ("a.jpeg", jpeg, "image/jpeg")), ("b", ("b.png", png))]},
        ),
        Case(
            "multipart_empty_file",
            400,
            request={"files": {"image": ("x.jpeg", b"", "image/jpeg")}},
        ),
        Case(
            "multipart_wrong_part_type",
            415,
            request={"files": {"image": ("x.txt", jpeg, "text/plain")}},
        ),
        Case(
            "multipart_without_boundary",
            400,
            request=_raw(b"--x\r\n\r\n", "multipart/form-data"),
        ),
        Case(
            "multipart_garbage",
            400,
            request=_raw(b"this is not multipart", "multipart/form-data; boundary=zzz"),
        ),
        Case(  # pydicom reads the garbage as odd elements: a DICOM without an image
            "dicom_garbage_after_magic",
            422,
            request=_raw(b"\0" * 128 + b"DICM" + b"\x07" * 300, "application/dicom"),
        ),
        Case(
            "dicom_without_pixels", 422, request=_raw(dicom_bytes(small, with_pixels=False), None)
        ),
        Case(
            "dicom_multi_frame",
            422,
            request=_raw(
                dicom_bytes(np.zeros((2, 80, 80), np.uint8), frames=2, rows=80, columns=80), None
            ),
        ),
        Case(
            "dicom_rgb",
            422,
            request=_raw(dicom_bytes(rgb, samples=3, photometric="RGB"), "application/dicom"),
        ),
        Case(
            "dicom_32_bit", 422, request=_raw(dicom_bytes(small.astype(np.uint32), bits=32), None)
        ),
        Case(
            "dicom_truncated_pixels",
            400,
            request=_raw(dicom_bytes(small, pixel_data=small.tobytes()[:1000]), None),
        ),
        Case(
            "dicom_deflated",
            422,
            request=_raw(dicom_bytes(small, transfer_syntax=DeflatedExplicitVRLittleEndian), None),
        ),
        Case(
            "dicom_jpeg_ls_undecodable",
            422,
            request=_raw(
                dicom_bytes(small, transfer_syntax=JPEGLSLossless, pixel_data=ls_frame), None
            ),
        ),
        Case(
            "dicom_decompression_bomb",
            413,
            request=_raw(dicom_bytes(small, rows=30000, columns=30000), "application/dicom"),
        ),
        Case("dicom_too_small", 422, request=_raw(dicom_bytes(small[:16, :16]), None)),
        Case("dicom_declared_as_png", 415, request=_raw(dicom_bytes(small), "image/png")),
        Case("wrong_method", 405, method="GET"),
        Case(
            "explain_unknown_format",
            400,
            path="/explain?format=xml",
            request=_raw(jpeg, "image/jpeg"),
        ),
        Case("batch_as_raw_body", 415, path="/predict_batch", request=_raw(jpeg, "image/jpeg")),
        Case(
            "batch_with_one_bad_file",
            400,
            path="/predict_batch",
            request={
                "files": [
                    ("images", ("good.jpeg", jpeg, "image/jpeg")),
                    ("images", ("bad.jpeg", jpeg[:400], "image/jpeg")),
                ]
            },
        ),
        Case(
            "batch_with_too_many_files",
            400,
            path="/predict_batch",
            request={
                "files": [
                    ("images", (f"{i}.png", png, "image/png")) for i in range(max_batch_files + 1)
                ]
            },
        ),
        Case(
            "batch_without_files",
            400,
            path="/predict_batch",
            request={"files": {"n": (None, b"1")}},
        ),
    ]
    assert len({case.name for case in cases}) == len(cases)
    return cases
