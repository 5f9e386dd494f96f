"""Every error answer in one JSON format, ``{"error": ..., "code": ...}``, whoever produced it.

The routes of serving/api.py answer in this format themselves; BentoML's own answers (an unknown
route, POST on /livez or /readyz) are plain text or lack a code, so the
:class:`JsonErrors` middleware rewrites them on the way out. An exception that escapes below it
without an answer (BentoML's /readyz raises TimeoutError while a model worker is still loading)
is answered here: BentoML's request timeout would otherwise hold the request, and a shutdown that
waits for it, for ``traffic.timeout`` seconds.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

# A stable code per HTTP status, for answers that do not name their own.
STATUS_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "body_timeout",
    413: "body_too_large",
    415: "unsupported_media_type",
    429: "overloaded",
    500: "internal_error",
    503: "unavailable",
    504: "timeout",
}
ROUTES_HINT = (
    "the API is POST /predict, /predict_batch, /explain and GET /metadata, /model_card, "
    "/livez, /readyz"
)


def status_code_name(status: int) -> str:
    return STATUS_CODES.get(status, "http_error")


def error_body(status: int, message: str, code: str | None = None) -> dict[str, str]:
    return {"error": message, "code": code or status_code_name(status)}


async def send_error(send: Send, status: int, message: str, code: str | None = None,
                     headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:  # fmt: skip
    """An error answer in the one JSON format, sent on a raw ASGI channel (the middlewares that
    answer before or instead of a route)."""
    body = json.dumps(error_body(status, message, code)).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": [*head, *headers]})
    await send({"type": "http.response.body", "body": body})


def http_error_message(scope: Scope, status: int, text: str) -> str:
    """A plain HTTP error's message, made to say what to do instead."""
    route = f"{scope.get('method', '')} {scope.get('path', '')}"
    if status == 404:
        return f"no such route: {route}; {ROUTES_HINT}"
    if status == 405:
        return f"method not allowed: {route}; {ROUTES_HINT}"
    if text:
        return text
    return HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "error"


def _rewrite(scope: Scope, status: int, body: bytes) -> bytes | None:
    """The JSON body an error answer should have, or None if it already is in our format."""
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        parsed = None
    # BentoML answers a typed endpoint's 4xx as a one-element list: [{"error": ...}].
    listed = isinstance(parsed, list) and len(parsed) == 1 and isinstance(parsed[0], dict)
    if listed:
        parsed = parsed[0]
    if isinstance(parsed, dict) and "error" in parsed:
        if "code" in parsed and not listed:
            return None
        return json.dumps({"code": status_code_name(status), **parsed}).encode()
    text = body.decode("utf-8", errors="replace").strip()[:500]
    return json.dumps(error_body(status, http_error_message(scope, status, text))).encode()


class JsonErrors:
    """ASGI middleware: error answers (status >= 400) not in our JSON format are rewritten; a
    503 always carries Retry-After. Error bodies are small, so they are buffered."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []
        answered = False

        async def send_json_errors(message: Message) -> None:
            nonlocal start, answered
            answered = True
            if message["type"] == "http.response.start" and message["status"] >= 400:
                start = message
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(chunks)
            headers = list(start.get("headers", []))
            rewritten = _rewrite(scope, start["status"], body)
            if rewritten is not None:
                drop = (b"content-type", b"content-length")
                headers = [(k, v) for k, v in headers if k.lower() not in drop]
                headers += [(b"content-type", b"application/json")]
                headers += [(b"content-length", str(len(rewritten)).encode())]
                body = rewritten
            if start["status"] == 503 and not any(k.lower() == b"retry-after" for k, _ in headers):
                headers.append((b"retry-after", b"1"))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        try:
            await self.app(scope, receive, send_json_errors)
        except Exception as exc:
            if answered:
                raise
            await _answer_unhandled(scope, send, exc)


async def _answer_unhandled(scope: Scope, send: Send, exc: Exception) -> None:
    """The answer to an exception that left the app before any answer: 503 for a timeout or a
    lost connection (the client may retry), else 500, logged once with its traceback (a bug)."""
    transient = isinstance(exc, TimeoutError | ConnectionError)
    status = 503 if transient else 500
    route = f"{scope.get('method')} {scope.get('path')}"
    if transient:
        log.warning("%s answered 503: %r", route, exc)
    else:
        log.error("%s raised before answering", route, exc_info=exc)
    message = "the service is not ready: retry shortly" if transient else "internal error"
    await send_error(send, status, message, headers=((b"retry-after", b"1"),) if transient else ())
