"""The request deadline (serving/deadline.py): BentoML's behaviour, without its armed timers.

BentoML's own middleware left each request's timer armed for the whole ``traffic.timeout``
(300 s), holding the request's future and context: memory and garbage-collection pauses grew
with the request rate. These tests run the middleware on a plain asyncio loop and look at the
timers the loop still holds.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from serving.deadline import BENTOML_MIDDLEWARE, RequestDeadline
from tests.serving.serving_support import middleware_chain

SCOPE = {"type": "http", "method": "POST", "path": "/predict", "headers": []}


def _app(delay_before: float = 0.0, delay_within: float = 0.0, events: list[str] | None = None):
    """An ASGI app that waits ``delay_before``, starts its answer, waits ``delay_within`` and
    ends it; ``events`` records whether it finished or was cancelled."""
    events = [] if events is None else events

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await asyncio.sleep(delay_before)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await asyncio.sleep(delay_within)
            await send({"type": "http.response.body", "body": b"done"})
            events.append("finished")
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    return app


async def _call(middleware: Any) -> tuple[list[Message], list[asyncio.TimerHandle]]:
    """The messages sent and the timers still armed on the loop once the call returned."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await middleware(SCOPE, receive, send)
    await asyncio.sleep(0)  # let cancelled tasks unwind
    loop = asyncio.get_running_loop()
    armed = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
    return sent, armed


def test_the_timer_is_disarmed_once_the_answer_starts() -> None:
    sent, armed = asyncio.run(_call(RequestDeadline(_app(), timeout=300)))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert armed == []


def test_bentomls_own_middleware_still_leaves_its_timer_armed() -> None:
    """Why pneumo replaces it: when this fails, BentoML fixed it and serving/deadline.py can go."""
    _, armed = asyncio.run(_call(BENTOML_MIDDLEWARE(_app(), timeout=300)))
    assert len(armed) == 1


def test_no_answer_within_the_timeout_is_a_json_504_and_the_request_is_cancelled() -> None:
    events: list[str] = []
    sent, armed = asyncio.run(_call(RequestDeadline(_app(5.0, events=events), timeout=0.05)))
    assert sent[0]["status"] == 504
    body = json.loads(sent[1]["body"])
    assert body["code"] == "timeout" and "0.05 s" in body["error"]
    assert events == ["cancelled"] and armed == []


def test_an_answer_under_way_is_never_cut() -> None:
    events: list[str] = []
    middleware = RequestDeadline(_app(0.0, 0.15, events), timeout=0.05)
    sent, armed = asyncio.run(_call(middleware))
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"done"
    assert events == ["finished"] and armed == []


def test_a_request_cancelled_by_the_server_cancels_the_app_and_the_timer() -> None:
    events: list[str] = []

    async def scenario() -> list[asyncio.TimerHandle]:
        middleware = RequestDeadline(_app(5.0, events=events), timeout=300)
        task = asyncio.ensure_future(_call(middleware))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        return [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]

    assert asyncio.run(scenario()) == []
    assert events == ["cancelled"]


def deadline_of(app: Any) -> RequestDeadline | None:
    """The deadline middleware in a built ASGI app's stack, if it is pneumo's."""
    found = next((m for m in middleware_chain(app) if isinstance(m, BENTOML_MIDDLEWARE)), None)
    return found if isinstance(found, RequestDeadline) else None


def test_the_service_is_built_with_it(asgi_client, service_module) -> None:
    assert asgi_client.get("/livez").status_code == 200  # the app's stack is built by now
    found = deadline_of(asgi_client.app)
    assert isinstance(found, RequestDeadline)
    assert found.timeout == service_module.PneumoniaService.config["traffic"]["timeout"] == 300
    paths = asgi_client.get("/docs.json").json()["paths"]
    for route in ("/predict", "/predict_batch", "/explain", "/feedback"):  # its 504, documented
        schema = paths[route]["post"]["responses"]["504"]["content"]["application/json"]["schema"]
        assert schema["properties"]["code"]["enum"] == ["timeout"]
