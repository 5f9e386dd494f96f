"""The request deadline (``traffic.timeout``) without holding every request for that long.

BentoML 1.4.40's ``TimeoutMiddleware`` arms one timer per request (``loop.call_later``) and never
cancels it: the timer, the request's future and the context it was armed in (with the request's
tracing span) stay alive for the whole timeout, 300 s for the front service, long after the
answer. Under 8 clients that held ~220,000 objects after a minute, and the collections of the
oldest generation that walk them grew to 166 ms (2 ms without them), every request waiting;
bench/soak.py saw the server's RSS rise by ~440 MB over the first five minutes before it
levelled off. :class:`RequestDeadline` behaves as BentoML's does (an answer not started within
the timeout is a 504, in pneumo's JSON error format; an answer under way is never cut) and
cancels its timer as soon as the answer starts. :func:`install` has BentoML build it in place of
its own: BentoML looks the class up in its module whenever it builds a service's app.
"""

from __future__ import annotations

import asyncio
import logging

from bentoml._internal.server.http import traffic
from starlette.types import Message, Receive, Scope, Send

from serving.errors import send_error

log = logging.getLogger(__name__)
BENTOML_MIDDLEWARE = traffic.TimeoutMiddleware  # what install() replaces


class RequestDeadline(BENTOML_MIDDLEWARE):  # type: ignore[misc,valid-type]
    """504 if the app has not started its answer within ``timeout`` seconds."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(self.timeout, _expire, started)

        async def send_started(message: Message) -> None:
            if not started.done():
                started.set_result(None)
            await send(message)

        app = asyncio.ensure_future(self.app(scope, receive, send_started))
        try:
            await started
        except TimeoutError:
            if app.cancel():
                await _answer_timeout(scope, send, self.timeout)
            return
        except BaseException:
            app.cancel()  # nobody is left to await it (the server cancelled this request)
            raise
        finally:
            timer.cancel()  # what BentoML's leaves armed
        await app


def _expire(started: asyncio.Future[None]) -> None:
    if not started.done():
        started.set_exception(TimeoutError())


async def _answer_timeout(scope: Scope, send: Send, timeout: float) -> None:
    log.warning("%s %s not answered within %g s: 504", scope.get("method"), scope.get("path"),
                timeout)  # fmt: skip
    await send_error(send, 504, f"no answer within {timeout:g} s: retry later")


def install() -> None:
    """Services built from now on get :class:`RequestDeadline` for their ``traffic.timeout``."""
    traffic.TimeoutMiddleware = RequestDeadline
