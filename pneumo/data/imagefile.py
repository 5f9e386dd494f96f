"""Image files -> trustworthy pixels: the integrity rule and the memory bound of decoding.

Pillow fills in what a damaged file lacks: libjpeg's corrupt-data warnings are silenced, so a
JPEG whose scan is bit-flipped, zeroed or cut short (with an end marker) decodes to plausible
pixels, and a PNG whose compressed stream was damaged can decode to garbage rows. Both are
refused here instead. JPEG scans go through libjpeg-turbo via simplejpeg with ``strict=True``,
which turns every corrupt-data warning into an error; PNG chunks must pass their CRC and the
image data must inflate, completely and exactly, to the size the header declares. Used only
through :func:`pneumo.data.preprocess.decode_radiograph`, so training and serving share the rule.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

import numpy as np
import simplejpeg
from PIL import Image

from pneumo.errors import PneumoError

# Frame markers of Huffman-coded JPEG: baseline, extended sequential, progressive. Arithmetic
# coding (SOF9-11), lossless (SOF3) and hierarchical frames are not produced by radiograph
# exports and a damaged one decodes to noise without complaint, so they are refused.
HUFFMAN_FRAMES = frozenset({0xC0, 0xC1, 0xC2})
OTHER_FRAMES = frozenset({0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2))  # fmt: skip
INFLATE_STEP = 1 << 20  # bytes inflated at a time while checking a PNG: memory stays flat
STRIP_BYTES = 4 << 20  # working memory of one strip when a large image is converted


class ImageDecodeError(PneumoError):
    """A file could not be decoded as a radiograph (corrupt, truncated, not an image, too large)."""


class CorruptImageError(ImageDecodeError):
    """The file is damaged: truncated, a corrupt JPEG scan, a PNG that fails its checksums."""


class UnsupportedImageError(ImageDecodeError):
    """A readable file of a kind pneumo refuses (e.g. arithmetic-coded JPEG)."""


class ImageTooLargeError(ImageDecodeError):
    """Decoding would exceed the pixel or memory limit; refused before any pixel is decoded."""


def bytes_per_pixel(mode: str) -> int:
    """What Pillow stores per pixel of ``mode`` (RGB is padded to 4 bytes)."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def check_decoded_size(img: Image.Image, max_pixels: int | None) -> None:
    """Refuse from the header alone: more than ``max_pixels`` pixels, or a decoded image larger
    than ``max_pixels`` bytes (what an 8-bit grayscale image of that many pixels holds)."""
    if max_pixels is None:
        return
    width, height = img.size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} pixels, above the limit of {max_pixels}"
        )
    decoded = width * height * bytes_per_pixel(img.mode)
    if decoded > max_pixels:
        raise ImageTooLargeError(
            f"decoding this {width}x{height} {img.mode} image takes {decoded / 1e6:.0f} MB, above "
            f"the limit of {max_pixels / 1e6:.0f} MB: send it as 8-bit grayscale or downscale it"
        )


def _jpeg_frame_marker(data: bytes) -> int | None:
    """The SOFn marker of a JPEG, read from the segments before the first scan."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in HUFFMAN_FRAMES or marker in OTHER_FRAMES:
            return marker
        if marker == 0xDA:  # a scan before any frame header
            return None
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None


def _check_jpeg_coding(data: bytes) -> None:
    marker = _jpeg_frame_marker(data)
    if marker in OTHER_FRAMES:
        kind = "arithmetic-coded" if marker >= 0xC9 else "lossless or hierarchical"
        raise UnsupportedImageError(
            f"{kind} JPEG (SOF{marker - 0xC0}) is not accepted: send a baseline or "
            "progressive JPEG, a PNG or a DICOM"
        )


def draft_scale(size: tuple[int, int], image_size: int) -> int:
    """The DCT scaling Pillow's ``draft`` picks: the largest of 8, 4, 2, 1 that keeps both sides
    at least ``image_size``."""
    scale = min(size[0] // image_size, size[1] // image_size)
    return next((s for s in (8, 4, 2) if scale >= s), 1)  # 1: full size (also when enlarging)


def decode_jpeg(data: bytes, header: Image.Image, image_size: int) -> Image.Image | None:
    """Decode and check a JPEG at reduced scale: an 'L' image, the very pixels Pillow's
    ``draft('L', ...)`` decodes, or None after checking a CMYK file (Pillow decodes that one).

    Raises :class:`CorruptImageError` on any libjpeg corrupt-data warning or premature end.
    """
    _check_jpeg_coding(data)
    scale = draft_scale(header.size, image_size)
    width, height = (-(-side // scale) for side in header.size)
    gray = header.mode in ("L", "RGB")  # libjpeg outputs gray from gray, YCbCr and RGB frames
    try:
        pixels = simplejpeg.decode_jpeg(
            data,
            "GRAY" if gray else "CMYK",
            min_height=height if gray else -(-header.size[1] // 8),
            min_width=width if gray else -(-header.size[0] // 8),
            strict=True,
        )
    except ValueError as exc:
        raise CorruptImageError(f"the JPEG data is corrupt or truncated: {exc}") from exc
    if not gray or pixels.shape[:2] != (height, width):
        return None
    return Image.fromarray(pixels[..., 0], mode="L")


def _png_raw_size(width: int, height: int, depth: int, colour: int, interlaced: bool) -> int:
    """Bytes the filtered scanlines of a PNG inflate to (one filter byte per row)."""
    bits = depth * PNG_CHANNELS[colour]
    if not interlaced:
        return height * (1 + (width * bits + 7) // 8)
    total = 0
    for x0, y0, dx, dy in ADAM7:
        cols, rows = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        if cols > 0 and rows > 0:
            total += rows * (1 + (cols * bits + 7) // 8)
    return total


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, memoryview]]:
    """(type, payload) of every chunk up to IEND, each checked against its CRC."""
    view = memoryview(data)
    pos = len(PNG_SIGNATURE)
    while True:
        if pos + 12 > len(data):
            raise CorruptImageError("the PNG file is truncated: it ends before its IEND chunk")
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        if end > len(data):
            name = kind.decode("latin-1")
            raise CorruptImageError(f"the PNG file is truncated inside its {name} chunk")
        crc = int.from_bytes(data[end - 4 : end], "big")
        if zlib.crc32(view[pos + 4 : end - 4]) != crc:
            raise CorruptImageError(f"the PNG {kind.decode('latin-1')} chunk fails its CRC check")
        yield kind, view[pos + 8 : end - 4]
        if kind == b"IEND":
            return
        pos = end


def check_png(data: bytes) -> None:
    """Every chunk passes its CRC, and the image data is one complete zlib stream (its Adler-32
    checked) that inflates to exactly the scanlines the header declares; memory stays flat."""
    inflater = zlib.decompressobj()
    expected, inflated = None, 0
    try:
        for kind, payload in _png_chunks(data):
            if kind == b"IHDR" and len(payload) == 13:
                width, height, depth, colour, method, filtering, interlace = struct.unpack(
                    ">IIBBBBB", payload
                )
                if colour not in PNG_CHANNELS:
                    raise CorruptImageError(f"the PNG header has an invalid colour type {colour}")
                # The PNG standard defines compression method 0, filter method 0 and interlace
                # 0 or 1 only; a decoder that accepts others guesses what the file means.
                if method != 0 or filtering != 0 or interlace not in (0, 1):
                    raise CorruptImageError(
                        f"the PNG header declares compression method {method}, filter method "
                        f"{filtering}, interlace {interlace}: the standard defines only 0, 0 "
                        "and 0 or 1"
                    )
                expected = _png_raw_size(width, height, depth, colour, interlace == 1)
            elif kind == b"IDAT" and len(payload):  # some encoders write empty IDATs
                if expected is None or inflater.eof:
                    raise CorruptImageError("the PNG image data is out of place")
                chunk = bytes(payload)
                while chunk and not inflater.eof:
                    inflated += len(inflater.decompress(chunk, INFLATE_STEP))
                    chunk = inflater.unconsumed_tail
                    if inflated > expected:
                        raise CorruptImageError(
                            "the PNG image data holds more than its header declares"
                        )
    except zlib.error as exc:
        raise CorruptImageError(f"the PNG image data is corrupt: {exc}") from exc
    if expected is None:
        raise CorruptImageError("the PNG file has no valid IHDR header")
    if inflater.unused_data:
        raise CorruptImageError("the PNG image data continues after its compressed stream ends")
    if not inflater.eof or inflated != expected:
        raise CorruptImageError(
            f"the PNG image data is incomplete: {inflated} of the {expected} bytes its header "
            "declares"
        )


def _strips(img: Image.Image) -> Iterator[tuple[int, Image.Image]]:
    """(top row, strip) pieces of about STRIP_BYTES of working memory each."""
    rows = max(1, STRIP_BYTES // (img.width * 8))
    for top in range(0, img.height, rows):
        yield top, img.crop((0, top, img.width, min(img.height, top + rows)))


def _window(strip: Image.Image, low: float, high: float) -> Image.Image:
    pixels = np.asarray(strip, dtype=np.float32)
    scaled = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
    return Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8))


def _flatten(strip: Image.Image) -> Image.Image:
    strip = strip.convert("RGBA")
    background = Image.new("RGBA", strip.size, (0, 0, 0, 255))
    return Image.alpha_composite(background, strip).convert("L")


def to_grayscale(img: Image.Image) -> Image.Image:
    """8-bit grayscale; 16-bit and float images windowed to their own min..max range, images
    with transparency composited on black. Converted strip by strip (every step is per pixel,
    so the result is the same), so a 16-bit or RGBA image never has full-size float copies."""
    if img.mode == "L":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        low, high = (float(v) for v in img.getextrema())
        convert = lambda strip: _window(strip, low, high)  # noqa: E731
    elif img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        convert = _flatten
    else:
        return img.convert("L")
    out = Image.new("L", img.size)
    for top, strip in _strips(img):
        out.paste(convert(strip), (0, top))
    return out
