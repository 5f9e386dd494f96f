"""Where a request's time goes, in a W3C ``Server-Timing`` header on every answer.

The front service (serving/service.py) splits each request into the phases below; browsers'
developer tools and `bench/serve.py` read them from the header. Nothing is stored.

- ``upload``: receiving the request body (the client's and the network's pace);
- ``decode``: the front service's own work once the body is in: multipart parsing, checks,
  decoding to the model's pixels (waiting for a decode thread included) and the JSON answer;
- ``hop``: calling the model service minus the model's own time: serialisation, the local
  HTTP call, and the adaptive-batching queue;
- ``model``: the model's call of the network, for the whole batch the image was in (Grad-CAM
  calls count whole);
- ``total``: from the request's arrival at the front service until its answer starts.
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"server-timing"
PHASES = ("upload", "decode", "hop", "model", "total")
MODEL_MS = "model_ms"  # the key of the model service's own time in each classify result
BATCH = "batch"  # the key of the size of the batch the image was predicted in


@dataclass
class RequestTiming:
    """The phases of one request, in seconds (model calls add up when there are several)."""

    start: float = field(default_factory=time.perf_counter)
    body_done: float | None = None
    calls: float = 0.0
    model: float = 0.0
    batch: int = 0

    def header(self, now: float) -> bytes:
        total = now - self.start
        upload = (self.body_done or self.start) - self.start
        phases = {
            "upload": upload,
            "decode": max(0.0, total - upload - self.calls),
            "hop": max(0.0, self.calls - self.model),
            "model": self.model,
            "total": total,
        }
        metrics = [f"{name};dur={1000 * phases[name]:.2f}" for name in PHASES]
        if self.batch:
            metrics.append(f'batch;desc="{self.batch}"')
        return ", ".join(metrics).encode()


_current: contextvars.ContextVar[RequestTiming | None] = contextvars.ContextVar(
    "pneumo_request_timing", default=None
)


def model_call(seconds: float, results: list[dict[str, Any]]) -> None:
    """Record one call of the model service: its duration as the front saw it, and the
    model's own time and batch size that the results carry."""
    timing = _current.get()
    if timing is None:  # not inside an HTTP request (a direct call, a test)
        return
    timing.calls += seconds
    if results and MODEL_MS in results[0]:
        timing.model += results[0][MODEL_MS] / 1000
        timing.batch = max(timing.batch, int(results[0].get(BATCH, 0)))
    else:  # the model did not say (Grad-CAM): the whole call counts as the model's
        timing.model += seconds


def model_fields(seconds: float, batch: int) -> dict[str, float | int]:
    """What the model service adds to each classify result about the call that made it."""
    return {MODEL_MS: round(1000 * seconds, 3), BATCH: batch}


def parse(header: str) -> dict[str, float]:
    """``Server-Timing`` header -> {phase: milliseconds} (the bench's reader)."""
    out: dict[str, float] = {}
    for metric in header.split(","):
        name, *params = (part.strip() for part in metric.split(";"))
        for param in params:
            key, _, value = param.partition("=")
            if key == "dur":
                out[name] = float(value)
            elif key == "desc" and name == "batch":
                out[name] = float(value.strip('"'))
    return out


class ServerTiming:
    """ASGI middleware: times each HTTP request and adds the ``Server-Timing`` header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        timing = RequestTiming()
        token = _current.set(timing)

        async def timed_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                timing.body_done = time.perf_counter()
            return message

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((HEADER, timing.header(time.perf_counter())))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, timed_receive, timed_send)
        finally:
            _current.reset(token)
