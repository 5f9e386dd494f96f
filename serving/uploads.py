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
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from pneumo.config import ServeSettings
from serving.inputs import InputError, media_type

MULTIPART = "multipart/form-data"
FORM_FIELDS = 32  # text fields a form may carry besides its files (they are ignored)
NAME_LIMIT = 200  # characters of a file name echoed back


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


def _multipart_error(exc: MultiPartException) -> InputError:
    cause = str(exc.__cause__ or "")
    if "header size" in cause.lower():
        message = (
            "a part of the form has headers longer than 4 KB, most likely its file name: "
            "send the file under a shorter name"
        )
    else:
        detail = f" ({cause})" if cause else ""
        message = f"the multipart form is malformed: {exc.message}{detail}"
    return InputError(400, "invalid_multipart", message)


async def read_files(
    request: Request, serve: ServeSettings, uploads: anyio.CapacityLimiter, max_files: int
) -> list[Upload]:
    """The uploaded files of a multipart body (size- and time-checked); text fields are ignored."""
    body = await read_body(request, serve, uploads)

    async def replay() -> AsyncIterator[bytes]:
        yield body

    parser = MultiPartParser(
        Headers(scope=request.scope), replay(), max_files=max_files, max_fields=FORM_FIELDS
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise _multipart_error(exc) from None
    try:
        files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        return [Upload(await f.read(), f.content_type, _name(f)) for f in files]
    finally:
        await form.close()


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


def _name(upload: UploadFile) -> str | None:
    """The client's file name without any folders, for echoing back."""
    if not upload.filename:
        return None
    return upload.filename.replace("\\", "/").rsplit("/", 1)[-1][:NAME_LIMIT] or None
