"""BentoML's tracing middleware only where an exporter is configured (serving/tracing.py).

Without an exporter no span leaves the process, and the middleware cost the event loop ~0.3 ms
per /predict; with one, traces must still be made.
"""

from __future__ import annotations

import importlib
from typing import Any

import httpx
import pytest
from bentoml._internal.configuration.containers import BentoMLContainer
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from starlette.middleware import Middleware

from serving import tracing
from tests.serving.serving_support import ServingLab, middleware_chain, serving


class _Other:
    def __init__(self, app: Any) -> None:
        self.app = app


@pytest.fixture
def bentoml_list(monkeypatch: pytest.MonkeyPatch) -> list[Middleware]:
    """BentoML's middleware list as the wrapped property returns it (tracing included)."""
    built = [Middleware(_Other), Middleware(OpenTelemetryMiddleware), Middleware(_Other)]
    monkeypatch.setattr(tracing, "BENTOML_MIDDLEWARES", property(lambda factory: list(built)))
    return built


def test_without_an_exporter_the_tracing_middleware_is_left_out(bentoml_list) -> None:
    assert tracing.tracing_exporter() is None  # BentoML's default configuration
    kept = tracing._middlewares(object())
    assert [m.cls for m in kept] == [_Other, _Other]


def test_with_an_exporter_it_is_built_as_bentoml_does(bentoml_list) -> None:
    exporter = BentoMLContainer.config.tracing.exporter_type
    exporter.set("in_memory")
    try:
        assert tracing.tracing_exporter() == "in_memory"
        assert tracing._middlewares(object()) == bentoml_list
    finally:
        exporter.set(None)
    assert tracing.tracing_exporter() is None


def test_the_service_is_built_without_it(asgi_client) -> None:
    from _bentoml_impl.server.app import ServiceAppFactory

    assert ServiceAppFactory.middlewares.fget is tracing._middlewares  # installed by the service
    response = asgi_client.get("/livez")  # the app's stack is built by now
    assert response.status_code == 200
    types = [type(m) for m in middleware_chain(asgi_client.app)]
    assert OpenTelemetryMiddleware not in types
    names = {t.__name__ for t in types}
    # The rest of BentoML's stack is untouched: its metrics, access log and deadline stay.
    assert {"RunnerTrafficMetricsMiddleware", "AccessLogMiddleware", "RequestDeadline"} <= names


def _traced(lab: ServingLab, folder: Any, jpeg: bytes) -> tuple[httpx.Response, str]:
    """One /predict to a real `bentoml serve` of the source; its answer and its access-log line."""
    with serving("serving.service:PneumoniaService", lab, folder / "bentoml.log") as server:
        answer = httpx.post(
            f"{server.url}/predict", content=jpeg, headers={"content-type": "image/jpeg"},
            timeout=60,
        )  # fmt: skip
        assert answer.status_code == 200, answer.text
        server.stop()  # the log is complete once the process is gone
        lines = [line for line in server.log.read_text().splitlines() if "path=/predict" in line]
    assert len(lines) == 1
    return answer, lines[0]


@pytest.mark.slow
def test_a_real_server_traces_only_with_an_exporter(
    serving_lab: ServingLab, jpeg_paths, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The span's ids show in BentoML's X-BentoML-Request-ID header and its log lines: absent by
    default, there again once a BENTOML_CONFIG file names an exporter for the front service."""
    jpeg = jpeg_paths[0].read_bytes()
    monkeypatch.delenv("BENTOML_CONFIG", raising=False)
    (tmp_path / "plain").mkdir()
    answer, line = _traced(serving_lab, tmp_path / "plain", jpeg)
    assert "x-bentoml-request-id" not in answer.headers and "trace=" not in line
    assert answer.headers["x-request-id"] == answer.json()["request_id"]  # pneumo's own id

    config = tmp_path / "bentoml.yaml"
    config.write_text(
        "services:\n  pneumonia-service:\n    tracing:\n      exporter_type: in_memory\n"
    )
    monkeypatch.setenv("BENTOML_CONFIG", str(config))
    (tmp_path / "traced").mkdir()
    answer, line = _traced(serving_lab, tmp_path / "traced", jpeg)
    span = answer.headers["x-bentoml-request-id"]
    assert f"span={span}" in line and "trace=" in line


def test_installing_twice_still_wraps_bentomls_own(asgi_client) -> None:
    """A second import (a reload, the Bento's copy) wraps BentoML's property, not its own."""
    from _bentoml_impl.server.app import ServiceAppFactory

    original = tracing.BENTOML_MIDDLEWARES
    importlib.reload(tracing)
    tracing.install()
    assert tracing.BENTOML_MIDDLEWARES is original
    assert original.fget.__module__ == "_bentoml_impl.server.app"  # not a wrapper of a wrapper
    assert ServiceAppFactory.middlewares.fget is tracing._middlewares
    assert asgi_client.get("/livez").status_code == 200
