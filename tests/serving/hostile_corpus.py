"""Hostile files made from the shared real radiographs: damaged JPEGs and PNGs, bombs, bad DICOMs.

Each :class:`Hostile` is one file with the statuses the service may answer and, for damaged
files, the error code it must name. Everything is generated from a few real images with fixed
seeds, so the corpus is the same on every run.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import ImplicitVRLittleEndian

from tests.serving.serving_samples import dicom8, dicom_bytes

CORRUPT = frozenset({400})


@dataclass(frozen=True)
class Hostile:
    """One hostile file: what it is sent as, and what the service may answer."""

    name: str
    data: bytes
    content_type: str
    statuses: frozenset[int]
    code: str | None = None  # the error code it must carry, when one is certain

    @property
    def damaged(self) -> bool:
        return 200 not in self.statuses


# ---------------------------------------------------------------- JPEG anatomy


def jpeg_segments(data: bytes) -> tuple[dict[int, tuple[int, int]], tuple[int, int]]:
    """{marker: (offset, length)} of the header segments (first of each) and the entropy-coded
    scan data (offset, length) of the first scan."""
    segments: dict[int, tuple[int, int]] = {}
    pos = 2
    while True:
        marker = data[pos + 1]
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        segments.setdefault(marker, (pos, length + 2))
        pos += length + 2
        if marker == 0xDA:
            break
    end = pos
    while True:
        end = data.index(b"\xff", end)
        if data[end + 1] == 0 or 0xD0 <= data[end + 1] <= 0xD7:
            end += 2
            continue
        return segments, (pos, end - pos)


def _flip_bits(data: bytes, start: int, length: int, flips: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    for pos in rng.integers(start, start + length, flips):
        out[pos] ^= 1 << int(rng.integers(0, 8))
    return bytes(out)


def _replace(data: bytes, start: int, payload: bytes) -> bytes:
    return data[:start] + payload + data[start + len(payload) :]


def jpeg_damage(name: str, data: bytes, seed: int) -> Iterator[Hostile]:
    """Scan damage libjpeg only warns about, truncations, a bomb and foreign codings."""
    segments, (scan, size) = jpeg_segments(data)
    corrupt = {"statuses": CORRUPT, "code": "corrupt_image", "content_type": "image/jpeg"}
    for k in range(4):
        flipped = _flip_bits(data, scan, size, 64, seed * 10 + k)
        yield Hostile(f"{name}_scan_64_flips_{k}", flipped, **corrupt)
    for k, at in enumerate((0.2, 0.5, 0.8)):
        run = b"\xff" * 64
        yield Hostile(f"{name}_ff_run_{k}", _replace(data, scan + int(size * at), run), **corrupt)
    half = size // 2
    yield Hostile(
        f"{name}_second_half_zeroed", _replace(data, scan + half, bytes(size - half)), **corrupt
    )
    yield Hostile(f"{name}_first_half_zeroed", _replace(data, scan, bytes(half)), **corrupt)
    cut = data[: scan + half] + b"\xff\xd9"
    yield Hostile(f"{name}_cut_with_end_marker", cut, **corrupt)
    yield Hostile(f"{name}_no_end_marker", data[:-2], **corrupt)
    for k, at in enumerate(np.linspace(0.1, 0.95, 6)):
        codes = {"statuses": CORRUPT, "content_type": "image/jpeg"}
        yield Hostile(f"{name}_truncated_{k}", data[: int(len(data) * at)], **codes)
    sof, _ = segments[0xC0] if 0xC0 in segments else segments[0xC2]
    # The height's low byte, bits that add or remove a whole row of 8x8 blocks: the scan no
    # longer fits (bits 0-2 keep the block count, and so the same pixels: nothing to detect).
    for k, bit in enumerate((3, 4, 6)):
        yield Hostile(f"{name}_height_bit_{k}", _flip_bits_at(data, sof + 6, bit), **corrupt)
    dht, dht_length = segments[0xC4]
    table = _flip_bits(data, dht + 21, dht_length - 21, 8, seed)  # code values, not counts
    yield Hostile(f"{name}_huffman_table_flips", table, **corrupt)
    arithmetic = _replace(data, sof, b"\xff\xc9")
    yield Hostile(
        f"{name}_arithmetic_coded", arithmetic, "image/jpeg", frozenset({415}), "unsupported_format"
    )


def _flip_bits_at(data: bytes, pos: int, bit: int) -> bytes:
    out = bytearray(data)
    out[pos] ^= 1 << bit
    return bytes(out)


def jpeg_bombs(data: bytes) -> Iterator[Hostile]:
    """Huge declared sizes over tiny data."""
    small = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("L").resize((64, 64)).save(small, "JPEG")
    tiny = small.getvalue()
    segments, _ = jpeg_segments(tiny)
    sof = segments[0xC0][0]
    for side, status, code in ((7000, 400, "corrupt_image"), (30000, 413, "too_many_pixels")):
        bomb = _replace(tiny, sof + 5, struct.pack(">HH", side, side))
        yield Hostile(
            f"jpeg_declares_{side}px_holds_64px", bomb, "image/jpeg", frozenset({status}), code
        )


# ---------------------------------------------------------------- PNG


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        out.append((kind, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def png_from(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(_chunk(kind, payload) for kind, payload in chunks)


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_cases(gray: np.ndarray) -> Iterator[Hostile]:
    """Damaged PNGs (CRC kept or recomputed), bombs, and valid 16-bit, RGBA and palette PNGs."""
    png = encode(Image.fromarray(gray))
    chunks = png_chunks(png)
    idat = b"".join(p for k, p in chunks if k == b"IDAT")
    head = [(k, p) for k, p in chunks if k not in (b"IDAT", b"IEND")]
    damaged = {"content_type": "image/png", "statuses": CORRUPT, "code": "corrupt_image"}
    for k, at in enumerate((0.3, 0.6, 0.9, 0.999)):
        yield Hostile(f"png_truncated_{k}", png[: int(len(png) * at)], **damaged)
    for k in range(3):
        flipped = _flip_bits(png, len(png) // 2, 1000, 1, k)  # inside IDAT, CRC left as is
        yield Hostile(f"png_idat_flip_crc_kept_{k}", flipped, **damaged)
        data = _flip_bits(idat, len(idat) // 3, len(idat) // 3, 4, k)
        rebuilt = png_from([*head, (b"IDAT", data), (b"IEND", b"")])  # CRCs recomputed
        yield Hostile(f"png_idat_flips_crc_recomputed_{k}", rebuilt, **damaged)
    half = len(idat) // 2
    zeroed = png_from([*head, (b"IDAT", idat[:half] + bytes(len(idat) - half)), (b"IEND", b"")])
    yield Hostile("png_second_half_zeroed_crc_recomputed", zeroed, **damaged)
    yield Hostile("png_no_iend", png_from([*head, (b"IDAT", idat)]), **damaged)
    short = png_from(
        [*head, (b"IDAT", zlib.compress(zlib.decompress(idat)[: half // 2])), (b"IEND", b"")]
    )
    yield Hostile("png_stream_shorter_than_declared", short, **damaged)
    extra = png_from([*head, (b"IDAT", idat + b"trailing garbage"), (b"IEND", b"")])
    yield Hostile("png_data_after_stream", extra, **damaged)
    bad_ihdr = bytearray(png)
    bad_ihdr[20] ^= 0x01  # width, CRC not updated: Pillow refuses the header already
    yield Hostile("png_ihdr_crc", bytes(bad_ihdr), "image/png", CORRUPT)
    # Header fields the PNG standard does not define (compression 1, filter 1, interlace 2):
    # a lenient decoder would guess; the CRC is right, so only the header check can refuse them.
    ihdr = next(p for k, p in chunks if k == b"IHDR")
    for name, offset, value in (("compression", 10, 1), ("filter", 11, 1), ("interlace", 12, 2)):
        odd = bytearray(ihdr)
        odd[offset] = value
        rebuilt = png_from([(b"IHDR", bytes(odd)), *head[1:], (b"IDAT", idat), (b"IEND", b"")])
        if name == "filter":  # Pillow itself refuses this header: 400 invalid_image
            yield Hostile(f"png_{name}_method_{value}", rebuilt, "image/png", CORRUPT | {400})
        else:
            yield Hostile(f"png_{name}_method_{value}", rebuilt, **damaged)
    tall = struct.pack(">IIBBBBB", gray.shape[1], 7000, 8, 0, 0, 0, 0)
    bomb = png_from([(b"IHDR", tall), (b"IDAT", idat), (b"IEND", b"")])
    yield Hostile("png_declares_more_rows_than_it_holds", bomb, **damaged)
    huge = struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0)
    yield Hostile(
        "png_bomb_40000px",
        png_from([(b"IHDR", huge), (b"IDAT", zlib.compress(bytes(4096))), (b"IEND", b"")]),
        "image/png",
        frozenset({413}),
        "too_many_pixels",
    )
    rgba16 = struct.pack(">IIBBBBB", 7071, 7071, 16, 6, 0, 0, 0)
    rows = zlib.compress(bytes(7071 * (1 + 7071 * 8)), 9)
    memory_bomb = png_from([(b"IHDR", rgba16), (b"IDAT", rows), (b"IEND", b"")])
    yield Hostile(
        "png_16bit_rgba_7071px", memory_bomb, "image/png", frozenset({413}), "image_too_large"
    )
    valid = {"content_type": "image/png", "statuses": frozenset({200})}
    yield Hostile("png_valid_16bit", encode(Image.fromarray(gray.astype(np.uint16) * 257)), **valid)
    rgba = Image.fromarray(gray).convert("RGBA")
    yield Hostile("png_valid_rgba", encode(rgba), **valid)
    yield Hostile("png_valid_palette", encode(Image.fromarray(gray).convert("P")), **valid)


# ---------------------------------------------------------------- DICOM


def dicom_jpeg_damage(name: str, jpeg: bytes, seed: int) -> Iterator[Hostile]:
    """A grey JPEG radiograph wrapped as DICOM (JPEG baseline, as modalities and ``pneumo
    dicom-send`` write it) with its frame damaged as :func:`jpeg_damage` damages a JPEG. pydicom
    decoded most of these; the service must refuse each as a damaged DICOM, never predict it."""
    from serving.dicom.results import part10
    from serving.dicom.send import wrap_radiograph

    if Image.open(io.BytesIO(jpeg)).mode != "L":
        return  # a colour JPEG is wrapped uncompressed: no JPEG frame to damage
    bad = {"content_type": "application/dicom", "statuses": CORRUPT, "code": "invalid_dicom"}
    for case in jpeg_damage(name, jpeg, seed):
        if case.statuses == CORRUPT:
            yield Hostile(f"dicom_{case.name}", part10(wrap_radiograph(case.data)), **bad)
    for bomb in jpeg_bombs(jpeg):  # a 64 px header over a frame that declares 7000 or 30000 px
        ds = wrap_radiograph(jpeg)
        ds.Rows = ds.Columns = 64
        ds.PixelData = encapsulate([bomb.data])
        yield Hostile(f"dicom_{name}_{bomb.name}", part10(ds), "application/dicom",
                      frozenset({422}), "unsupported_dicom")  # fmt: skip


def _nested(base: bytes, depth: int, implicit: bool = False, undefined: bool = False) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(base))
    inner = Dataset()
    inner.PatientID = "x"
    for _ in range(depth):
        outer = Dataset()
        outer.ReferencedImageSequence = Sequence([inner])
        if undefined:
            outer.ReferencedImageSequence.is_undefined_length = True
        inner = outer
    ds.ReferencedImageSequence = inner.ReferencedImageSequence
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=implicit, little_endian=True, enforce_file_format=True)
    return buffer.getvalue()


def _deep_raw(base: bytes, depth: int) -> bytes:
    """Nesting written by hand, deeper than pydicom itself could write: undefined-length
    sequences of undefined-length items, in explicit VR little endian."""
    item, item_end, seq_end = b"\xfe\xff\x00\xe0", b"\xfe\xff\x0d\xe0", b"\xfe\xff\xdd\xe0"
    undefined = b"\xff\xff\xff\xff"
    opening = (b"\x08\x00\x40\x11SQ\x00\x00" + undefined + item + undefined) * depth
    closing = (item_end + b"\x00" * 4 + seq_end + b"\x00" * 4) * depth
    pixels = base.index(b"\xe0\x7f\x10\x00")
    return base[:pixels] + opening + closing + base[pixels:]


def dicom_cases(gray: np.ndarray) -> Iterator[Hostile]:
    small = np.ascontiguousarray(gray[:128, :128])
    base = dicom8(small)
    bad = {
        "content_type": "application/dicom",
        "statuses": frozenset({400}),
        "code": "invalid_dicom",
    }
    for depth, implicit, undefined in ((40, False, False), (40, True, False), (40, False, True)):
        data = _nested(base, depth, implicit, undefined)
        yield Hostile(
            f"dicom_nested_{depth}_{'implicit' if implicit else 'explicit'}_{undefined}",
            data,
            **bad,
        )
    yield Hostile("dicom_nested_3000_by_hand", _deep_raw(base, 3000), **bad)
    many = pydicom.dcmread(io.BytesIO(base))
    for i in range(25_000):
        many.add_new((0x0011 + 2 * (i // 0xFF00), 0x1000 + i % 0xFF00), "LO", "x")
    buffer = io.BytesIO()
    many.save_as(buffer, enforce_file_format=True)
    yield Hostile("dicom_25000_elements", buffer.getvalue(), **bad)
    wrong_vr = base.replace(b"\x28\x00\x10\x00US", b"\x28\x00\x10\x00DS", 1)  # Rows as text
    yield Hostile("dicom_rows_wrong_vr", wrong_vr, "application/dicom", frozenset({400, 422}))
    cut = dicom_bytes(small, pixel_data=small.tobytes()[: small.size // 2])
    yield Hostile("dicom_truncated_pixels", cut, **bad)
    yield Hostile(
        "dicom_file_cut", base[: len(base) - 5000], "application/dicom", frozenset({400, 422})
    )
    unknown = base.replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.9.9.9\0", 1)  # same length
    yield Hostile(
        "dicom_unknown_transfer_syntax", unknown, "application/dicom", frozenset({400, 422})
    )
    yield Hostile("dicom_valid", base, "application/dicom", frozenset({200}))
