"""HTTP framing the service refuses as the HTTP specification says, before any route reads a byte.

uvicorn's h11 parser is lenient where a diagnostic endpoint should not be (RFC 9112, RFC 9110):

- a transfer coding other than plain ``chunked`` (``gzip, chunked``): 501, the server does not
  implement it (RFC 9112 6.1);
- request headers larger than ``serve.max_header_bytes`` together: 431 (RFC 6585 5);
- a POST with neither Content-Length nor chunked framing (an HTTP/1.0 client streaming until it
  closes): 411 Length Required (RFC 9110 15.5.12);
- a declared Content-Length above ``serve.max_request_bytes``: 413 at once, so a client that sent
  ``Expect: 100-continue`` learns it before sending the body (RFC 9110 10.1.1).

Each refusal is one WARNING line and the service's ``{"error", "code"}`` shape.
"""

from __future__ import annotations

import functools
import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from serving.errors import send_error

log = logging.getLogger(__name__)
BODY_METHODS = {"POST", "PUT", "PATCH"}


@functools.cache
def _limits() -> tuple[int, int]:
    from serving.service import read_settings

    serve = read_settings().serve
    return serve.max_header_bytes, serve.max_request_bytes


def refusal(scope: Scope, limits: tuple[int, int]) -> tuple[int, str, str] | None:
    """(status, code, message) for a request whose framing the service refuses, else None."""
    max_header_bytes, max_request_bytes = limits
    headers = scope.get("headers") or []
    size = sum(len(name) + len(value) + 4 for name, value in headers)
    if size > max_header_bytes:
        return (431, "headers_too_large",
                f"the request headers are {size} bytes, above {max_header_bytes}")  # fmt: skip
    values: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        values.setdefault(name.lower(), []).append(value)
    codings = [c.strip().lower() for v in values.get(b"transfer-encoding", []) for c in v.split(b",")]
    codings = [c for c in codings if c]
    if codings and codings != [b"chunked"]:
        shown = ", ".join(c.decode("latin-1")[:20] for c in codings)
        return (501, "unsupported_transfer_coding",
                f"transfer coding '{shown}' is not implemented: send the body plain or chunked")  # fmt: skip
    declared = values.get(b"content-length", [])
    if scope.get("method") in BODY_METHODS and not declared and not codings:
        return (411, "length_required",
                "a request body needs a Content-Length header (or chunked transfer coding)")  # fmt: skip
    if declared and declared[0].strip().isdigit() and int(declared[0]) > max_request_bytes:
        return (413, "body_too_large",
                f"the request body is {int(declared[0])} bytes, above {max_request_bytes}")  # fmt: skip
    return None


class StrictFraming:
    """ASGI middleware: answer framing the service refuses before the route (or BentoML) reads."""

    def __init__(self, app: ASGIApp, limits=_limits) -> None:  # noqa: ANN001
        self.app, self.limits = app, limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        found = refusal(scope, self.limits())
        if found is None:
            await self.app(scope, receive, send)
            return
        status, code, message = found
        log.warning("%s %s refused: %s (%s)", scope.get("method"), scope.get("path", "")[:100],
                    code, message)  # fmt: skip
        await send_error(send, status, message, code, headers=((b"connection", b"close"),))
