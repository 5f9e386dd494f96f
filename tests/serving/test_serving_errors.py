"""Only real faults are 5xx: overload and a model service that cannot answer are 503 with
Retry-After, a bug is a 500 logged once, and every error answer (BentoML's own too) is JSON."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import numpy as np
import pytest
from bentoml.exceptions import InternalServerError, ServiceUnavailable
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from pneumo.config import MonitorSettings, ServeSettings
from pneumo.decision import Decision
from serving.api import ModelUnavailableError, predict, respond
from serving.monitoring import Monitoring
from serving.service import PneumoniaService
from serving.uploads import ServiceOverloadedError, slot


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


class FakeBackend:
    """The routes' view of the service, with a model call that fails as told."""

    def __init__(self, failure: BaseException | None = None) -> None:
        self.serve = ServeSettings()
        self.image_size = 64
        self.decision = Decision(threshold=0.5, rule="fixed")
        self.model_info = {"name": "fake"}
        self.metrics: dict[str, Any] = {}
        self.model_card: dict[str, Any] = {}
        self.decode_limiter = anyio.CapacityLimiter(1)
        self.admission = anyio.CapacityLimiter(4)
        self.uploads = anyio.CapacityLimiter(4)
        self.monitoring = Monitoring(MonitorSettings(enabled=False), Path("."), self.model_info)
        self.failure = failure

    async def classify(self, images: np.ndarray) -> list[dict[str, Any]]:
        if self.failure is not None:
            raise self.failure
        return [{"probability": 0.25}] * len(images)

    async def heatmaps(self, images: np.ndarray) -> np.ndarray:
        return np.zeros(images.shape, np.float32)


def _post(backend: FakeBackend, jpeg: bytes):
    """POST /predict as the typed endpoint runs it: the route under ``respond``."""

    async def endpoint(request: Request) -> Response:
        return await respond(predict, request, backend)

    app = Starlette(routes=[Route("/predict", endpoint, methods=["POST"])])
    with TestClient(app, raise_server_exceptions=False) as client:
        return client.post("/predict", content=jpeg, headers={"content-type": "image/jpeg"})


@pytest.fixture(scope="module")
def jpeg(jpeg_paths: list[Path]) -> bytes:
    return jpeg_paths[5].read_bytes()


def test_a_working_backend_answers(jpeg: bytes) -> None:
    response = _post(FakeBackend(), jpeg)
    assert response.status_code == 200 and response.json()["probability"] == 0.25
    body = response.json()
    # A model without a guard: the file's screen passed, no outlier score.
    assert body["out_of_distribution"] is False and body["ood_score"] is None


def test_a_model_service_that_cannot_answer_is_503_with_retry_after(jpeg: bytes) -> None:
    response = _post(FakeBackend(ModelUnavailableError("classify: restarting")), jpeg)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json()["code"] == "model_unavailable"


def test_a_bug_in_the_model_call_is_a_500_logged_once(
    jpeg: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        response = _post(FakeBackend(ZeroDivisionError("a bug")), jpeg)
    assert response.status_code == 500 and "retry-after" not in response.headers
    assert response.json() == {"error": "internal error", "code": "internal_error"}
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None


def test_no_free_slot_is_503_overloaded(jpeg: bytes) -> None:
    class Full:  # a limiter whose every slot is taken
        total_tokens = 1

        def acquire_nowait(self) -> None:
            raise anyio.WouldBlock

    backend = FakeBackend()
    backend.admission = Full()  # type: ignore[assignment]
    response = _post(backend, jpeg)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json()["code"] == "overloaded"


@pytest.mark.anyio
async def test_slot_refuses_at_once_and_frees_its_token() -> None:
    limiter = anyio.CapacityLimiter(1)
    limiter.acquire_on_behalf_of_nowait("another request")
    with pytest.raises(ServiceOverloadedError, match="all 1 are in use"):
        async with slot(limiter, "things"):
            pass
    limiter.release_on_behalf_of("another request")
    async with slot(limiter, "things"):
        assert limiter.available_tokens == 0
    assert limiter.available_tokens == 1


class _Model:
    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = failures
        self.calls = 0

    @property
    def to_async(self) -> _Model:
        return self

    async def classify(self, images: np.ndarray) -> list[dict[str, float]]:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return [{"probability": 0.5}]


@pytest.mark.parametrize(
    ("failures", "outcome", "calls"),
    [
        ([aiohttp.ServerDisconnectedError()], "answer", 2),  # a closed kept-alive connection
        ([aiohttp.ClientConnectionError()] * 3, ModelUnavailableError, 3),
        ([ServiceUnavailable("process is overloaded")], ModelUnavailableError, 1),
        ([TimeoutError()], ModelUnavailableError, 1),
        ([InternalServerError("model bug")], InternalServerError, 1),
        ([ValueError("bad shape")], ValueError, 1),
    ],
    ids=["retried", "connection_lost", "overloaded", "timeout", "model_500", "bug"],
)
@pytest.mark.anyio
async def test_only_transient_model_failures_become_503(
    failures: list[BaseException], outcome: Any, calls: int
) -> None:
    service = object.__new__(PneumoniaService.inner)
    model = _Model(list(failures))
    service.__dict__["model"] = model
    images = np.zeros((1, 64, 64), np.uint8)
    if outcome == "answer":
        assert await service._call_model("classify", images) == [{"probability": 0.5}]
    else:
        with pytest.raises(outcome):
            await service._call_model("classify", images)
    assert model.calls == calls


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/nope", 404, "not_found"),
        ("POST", "/livez", 405, "method_not_allowed"),
        ("POST", "/readyz", 405, "method_not_allowed"),
        ("PUT", "/predict", 405, "method_not_allowed"),
    ],
)
def test_bentoml_own_errors_are_json(
    asgi_client: TestClient, method: str, path: str, status: int, code: str
) -> None:
    response = asgi_client.request(method, path)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["code"] == code and path in body["error"] and "/predict" in body["error"]
