"""Request bodies under limits: size, time, uploads at once, and multipart parsing.

A body is streamed against ``serve.max_request_bytes`` (413 as soon as it passes), must arrive
within ``serve.read_timeout_s`` (408), and holds one of ``serve.max_uploads`` upload slots while
it arrives (503 when all are taken). Uploads are admitted separately from the work that follows
(serving/api.py), so clients that stall their uploads cannot lock out the ones that send.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from starlette.requests import Request

from pneumo.config import ServeSettings
from serving.inputs import InputError, media_type

MULTIPART = "multipart/form-data"
FORM_FIELDS = 32  # text fields a form may carry besides its files (they are ignored)
NAME_LIMIT = 200  # characters of a file name echoed back
PART_HEADER_BYTES = 65_536  # a part's header line: room for any real file name


class ServiceOverloadedError(Exception):
    """Every slot is taken: the client should retry shortly (503 with Retry-After)."""


@dataclass(frozen=True)
class Upload:
    """One uploaded file: its bytes, the content type it was sent with, its file name."""

    data: bytes
    content_type: str | None
    filename: str | None = None


@asynccontextmanager
async def slot(limiter: anyio.CapacityLimiter, what: str) -> AsyncIterator[None]:
    """Hold one of ``limiter``'s slots, or refuse at once: waiting would only pile up work."""
    try:
        limiter.acquire_nowait()
    except anyio.WouldBlock:
        raise ServiceOverloadedError(f"{what}: all {limiter.total_tokens:.0f} are in use") from None
    try:
        yield
    finally:
        limiter.release()


async def read_body(
    request: Request, serve: ServeSettings, uploads: anyio.CapacityLimiter
) -> bytes:
    """The request body, refused with 413 past ``max_request_bytes`` and 408 past
    ``read_timeout_s``; a client that disconnects raises starlette's ClientDisconnect."""
    limit = serve.max_request_bytes
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InputError(400, "invalid_content_length", "the Content-Length header is invalid")
        if int(declared) > limit:
            raise InputError(
                413, "body_too_large", f"the request body is {declared} bytes, above {limit}"
            )
    chunks: list[bytes] = []
    size = 0
    async with slot(uploads, "uploads in progress"):
        with anyio.move_on_after(serve.read_timeout_s) as deadline:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise InputError(
                        413, "body_too_large", f"the request body is above {limit} bytes"
                    )
                chunks.append(chunk)
    if deadline.cancelled_caught:
        raise InputError(
            408,
            "body_timeout",
            f"the request body did not arrive within {serve.read_timeout_s:g} s "
            f"({size} bytes came): send it in one go",
        )
    return b"".join(chunks)


class _Parts:
    """python-multipart callbacks collecting each part's headers and bytes."""

    def __init__(self, max_files: int) -> None:
        self.parts: list[dict] = []
        self.max_files = max_files
        self._name = self._value = b""

    def begin(self) -> None:
        self.parts.append({"headers": {}, "data": bytearray()})
        if len(self.parts) > self.max_files + FORM_FIELDS:
            raise InputError(400, "invalid_multipart",
                             f"the form has more than {self.max_files + FORM_FIELDS} parts")  # fmt: skip

    def field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def header_end(self) -> None:
        self.parts[-1]["headers"][self._name.lower()] = self._value
        self._name = self._value = b""

    def data(self, data: bytes, start: int, end: int) -> None:
        self.parts[-1]["data"] += data[start:end]

    def end(self) -> None:
        self.parts[-1]["complete"] = True

    def callbacks(self) -> dict:
        return {"on_part_begin": self.begin, "on_header_field": self.field,
                "on_header_value": self.value, "on_header_end": self.header_end,
                "on_part_data": self.data, "on_part_end": self.end}  # fmt: skip


def parse_multipart(body: bytes, content_type: str, max_files: int) -> list[Upload]:
    """The files of a multipart/form-data body; text fields are ignored.

    python-multipart directly rather than through starlette, whose parser caps a part's headers
    at 4 KB: a file name of thousands of characters is legal, and is cut for echoing instead.
    """
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise InputError(400, "invalid_multipart",
                         "the multipart form has no boundary in its Content-Type")  # fmt: skip
    collected = _Parts(max_files)
    try:
        parser = MultipartParser(boundary, collected.callbacks(), max_header_size=PART_HEADER_BYTES)
        parser.write(body)
        parser.finalize()
    except InputError:
        raise
    except Exception as exc:  # python-multipart's parse errors (one family, several classes)
        raise InputError(400, "invalid_multipart",
                         f"the multipart form is malformed: {str(exc)[:120]}") from None  # fmt: skip
    files: list[Upload] = []
    for part in collected.parts:
        if not part.get("complete"):
            continue  # cut off before its closing boundary
        kind, disposition = parse_options_header(part["headers"].get(b"content-disposition", b""))
        if kind != b"form-data" or b"name" not in disposition:
            raise InputError(400, "invalid_multipart",
                             "every part needs 'Content-Disposition: form-data; name=...'")  # fmt: skip
        if b"filename" not in disposition:
            continue  # a text field
        declared = part["headers"].get(b"content-type")
        name = disposition[b"filename"].decode("utf-8", "replace")
        files.append(Upload(bytes(part["data"]), declared.decode("latin-1") if declared else None,
                            _name(name)))  # fmt: skip
    if len(files) > max_files:
        raise InputError(400, "invalid_multipart",
                         f"too many files: at most {max_files} per request")  # fmt: skip
    return files


async def read_files(
    request: Request, serve: ServeSettings, uploads: anyio.CapacityLimiter, max_files: int
) -> list[Upload]:
    """The uploaded files of a multipart body (size- and time-checked); text fields are ignored."""
    body = await read_body(request, serve, uploads)
    return parse_multipart(body, request.headers.get("content-type", ""), max_files)


async def read_upload(
    request: Request, serve: ServeSettings, uploads: anyio.CapacityLimiter
) -> Upload:
    """One file: a raw body with its own content type, or a one-file multipart form."""
    declared = media_type(request.headers.get("content-type"))
    if declared == MULTIPART:
        files = await read_files(request, serve, uploads, max_files=1)
        if not files:
            raise InputError(
                400, "no_file", "the form holds no file: send it as e.g. `curl -F image=@x.jpeg`"
            )
        return files[0]
    if declared == "application/x-www-form-urlencoded":
        raise InputError(
            415,
            "unsupported_media_type",
            "a form-encoded body cannot carry an image: send the file with its own content type "
            "(-H 'Content-Type: image/jpeg' --data-binary @x.jpeg) or as multipart (-F image=@x.jpeg)",
        )
    data = await read_body(request, serve, uploads)
    return Upload(data, request.headers.get("content-type"))


def _name(filename: str | None) -> str | None:
    """The client's file name without any folders, cut to NAME_LIMIT characters for echoing and
    logging (the name itself may be as long as the client likes)."""
    if not filename:
        return None
    return filename.replace("\\", "/").rsplit("/", 1)[-1][:NAME_LIMIT] or None
