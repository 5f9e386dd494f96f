"""An exception that leaves the app before any answer still gets a JSON answer (serving/errors.py).

BentoML runs each request under a timeout that waits for the first byte of the answer: an
exception without one held the request, and any shutdown waiting for it, for minutes (seen with
/readyz while model workers were loading).
"""

from __future__ import annotations

import logging

import pytest
from starlette.testclient import TestClient
from starlette.types import Receive, Scope, Send

from serving.errors import JsonErrors


def _raising(exc: Exception, answer_first: bool = False):  # -> an ASGI app
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if answer_first:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
        raise exc

    return app


def test_a_timeout_before_any_answer_is_a_json_503_to_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = TestClient(JsonErrors(_raising(TimeoutError())), raise_server_exceptions=False)
    with caplog.at_level(logging.WARNING, logger="serving.errors"):
        response = client.get("/readyz")
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json()["code"] == "unavailable"
    assert any("GET /readyz answered 503" in r.getMessage() for r in caplog.records)


def test_a_bug_before_any_answer_is_a_json_500_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = TestClient(JsonErrors(_raising(ValueError("bug"))), raise_server_exceptions=False)
    with caplog.at_level(logging.ERROR, logger="serving.errors"):
        response = client.post("/anything")
    assert response.status_code == 500
    assert response.json() == {"error": "internal error", "code": "internal_error"}
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None


def test_an_exception_after_the_answer_is_not_answered_twice() -> None:
    client = TestClient(JsonErrors(_raising(ValueError("late"), answer_first=True)))
    with pytest.raises(ValueError, match="late"):
        client.get("/")
