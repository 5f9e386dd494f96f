"""The JSON routes (POST /feedback) checked before BentoML reads them: size, type, and fields.

BentoML validates a typed JSON endpoint after reading the whole body, answers its own error shape
(pydantic's ``detail``) and logs each refusal with a traceback. A client's mistake deserves
neither: this middleware refuses, in the service's ``{"error", "code"}`` shape and with one
WARNING line, a body larger than ``serve.max_json_bytes`` (413, before reading it when the
length is declared), another content type than application/json (415), malformed JSON (400),
and fields the route does not take or values it would store wrongly (422): labels other than
exactly NORMAL or PNEUMONIA, ids that are empty, too long or not printable. A body that passes is
handed on unchanged.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pneumo.data.kermany import CLASSES
from serving.errors import send_error

log = logging.getLogger(__name__)

# field -> (required, longest, printable only): what /feedback takes (serving/schema.py).
FEEDBACK_FIELDS: dict[str, tuple[bool, int, bool]] = {
    "request_id": (True, 64, True),
    "label": (True, 16, True),
    "reviewer": (True, 128, True),
    "patient_id": (False, 128, True),
    "note": (False, 2000, False),  # free text: line breaks and tabs allowed
}
JSON_ROUTES = {"/feedback": FEEDBACK_FIELDS}


class Refusal(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@functools.cache
def _max_json_bytes() -> int:
    from serving.service import read_settings

    return read_settings().serve.max_json_bytes


def check_fields(body: Any, fields: dict[str, tuple[bool, int, bool]]) -> None:
    """Raise :class:`Refusal` (422) for a body the route would misread or store wrongly."""
    if not isinstance(body, dict):
        raise Refusal(422, "invalid_feedback", "the body must be a JSON object")
    unknown = sorted(set(body) - set(fields))
    if unknown:
        shown = ", ".join(name[:40] for name in unknown[:5])
        raise Refusal(422, "unknown_field",
                      f"unknown field(s): {shown}; /feedback takes {', '.join(fields)}")  # fmt: skip
    for name, (required, longest, printable) in fields.items():
        value = body.get(name)
        if value is None:
            if required:
                raise Refusal(422, f"invalid_{name}", f"{name} is required")
            continue
        if not isinstance(value, str) or (required and not value):
            raise Refusal(422, f"invalid_{name}", f"{name} must be a non-empty string")
        if len(value) > longest:
            raise Refusal(422, f"invalid_{name}", f"{name} is at most {longest} characters")
        allowed = value if printable else value.replace("\n", "").replace("\t", "")
        if not allowed.isprintable() or (printable and value != value.strip()):
            raise Refusal(422, f"invalid_{name}",
                          f"{name} must be printable text without control characters or "
                          "surrounding spaces")  # fmt: skip
    if "label" in fields and body["label"] not in CLASSES:
        shown = body["label"][:20]
        raise Refusal(422, "invalid_label",
                      f"label must be exactly {' or '.join(CLASSES)}, not {shown!r}")  # fmt: skip


class StrictJson:
    """ASGI middleware for the routes of :data:`JSON_ROUTES` (see the module docstring)."""

    def __init__(self, app: ASGIApp, max_bytes: Callable[[], int] = _max_json_bytes) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fields = JSON_ROUTES.get(scope.get("path", "")) if scope["type"] == "http" else None
        if fields is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        try:
            body = await self._read(scope, receive)
            check_fields(_parse(body), fields)
        except Refusal as refusal:
            log.warning("%s refused (%d %s): %s", scope["path"], refusal.status, refusal.code,
                        refusal.message)  # fmt: skip
            await _answer(send, refusal)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _read(self, scope: Scope, receive: Receive) -> bytes:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        kind = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if kind != "application/json":
            raise Refusal(415, "unsupported_media_type",
                          f"{scope['path']} takes application/json, not {kind or 'no type'}")  # fmt: skip
        limit = self.max_bytes()
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise Refusal(413, "body_too_large",
                          f"the body is {declared} bytes; at most {limit} "
                          "(serve.max_json_bytes)")  # fmt: skip
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Refusal(400, "bad_request", "the client left before sending the body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise Refusal(413, "body_too_large",
                              f"the body is over {limit} bytes (serve.max_json_bytes)")  # fmt: skip
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _parse(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Refusal(400, "invalid_json", f"the body is not JSON: {str(exc)[:100]}") from exc


async def _answer(send: Send, refusal: Refusal) -> None:
    await send_error(send, refusal.status, refusal.message, refusal.code,
                     headers=((b"connection", b"close"),))  # fmt: skip
