"""The model in the front service's process (serving/model_host.py) and the Server-Timing split.

Concurrent requests are grouped into one model call without a timer, every answer goes back to
its own request, and the limits of serve.* hold: max_batch_size, batching off, max_latency_ms.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from pneumo.config import ServeSettings
from pneumo.inference.predictor import Assessment
from serving import timing
from serving.api import ModelUnavailableError
from serving.model_host import ModelHost, ModelQueueTimeout
from serving.service import PneumoniaService, freeze_startup_heap

SIDE = 8


class SlowPredictor:
    """Answers each image's mean grey level / 255 after ``delay`` seconds, recording batches."""

    image_size = SIDE
    model = network = None  # no exported network: torch's threads are left as they are

    def __init__(self, delay: float = 0.05, failure: Exception | None = None) -> None:
        self.delay = delay
        self.failure = failure
        self.batches: list[int] = []
        self.started = threading.Event()

    def probabilities(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        self.batches.append(len(images))
        self.started.set()
        time.sleep(self.delay)
        if self.failure is not None:
            raise self.failure
        return images.reshape(len(images), -1).mean(axis=1) / 255

    def assess(self, images: np.ndarray, batch_size: int = 64) -> Assessment:
        """As Predictor.assess: the probabilities, no guard (NaN scores, no reasons)."""
        probabilities = self.probabilities(images, batch_size)
        return Assessment(probabilities, np.full(len(images), np.nan), [None] * len(images))


def _images(*levels: int) -> np.ndarray:
    return np.stack([np.full((SIDE, SIDE), level, np.uint8) for level in levels])


def _host(predictor: SlowPredictor, **serve: Any) -> ModelHost:
    return ModelHost(predictor, ServeSettings(**serve))  # type: ignore[arg-type]


async def _while_busy(host: ModelHost, predictor: SlowPredictor, *requests: np.ndarray) -> list:
    """Send one request, and ``requests`` once the model is busy with it."""
    first = asyncio.create_task(host.classify(_images(1)))
    await asyncio.to_thread(predictor.started.wait, 5)
    rest = await asyncio.gather(*(host.classify(r) for r in requests), return_exceptions=True)
    return [await first, *rest]


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_requests_queued_while_the_model_is_busy_share_one_call() -> None:
    predictor = SlowPredictor()
    host = _host(predictor)
    answers = await _while_busy(host, predictor, *(_images(10 * k) for k in range(1, 9)))
    assert predictor.batches == [1, 8]  # an idle model starts at once; the rest wait together
    got = [a[0]["probability"] for a in answers]
    assert got == pytest.approx([1 / 255, *(10 * k / 255 for k in range(1, 9))])
    assert [a[0][timing.BATCH] for a in answers] == [1] + [8] * 8
    assert all(a[0][timing.MODEL_MS] >= 40 for a in answers)  # the call's own duration


@pytest.mark.anyio
async def test_batches_keep_requests_whole_and_within_max_batch_size() -> None:
    predictor = SlowPredictor(delay=0.02)
    host = _host(predictor, max_batch_size=3)
    answers = await _while_busy(host, predictor, _images(2, 3), _images(4, 5), _images(6, 7, 8, 9))
    assert predictor.batches == [1, 2, 2, 4]  # a request above max_batch_size goes alone
    assert [len(a) for a in answers] == [1, 2, 2, 4]
    assert [r["probability"] for r in answers[3]] == pytest.approx(
        [6 / 255, 7 / 255, 8 / 255, 9 / 255]
    )


@pytest.mark.anyio
async def test_batching_off_calls_the_model_once_per_request() -> None:
    predictor = SlowPredictor(delay=0.01)
    host = _host(predictor, adaptive_batching=False)
    await _while_busy(host, predictor, *(_images(k) for k in range(5)))
    assert predictor.batches == [1] * 6


@pytest.mark.anyio
async def test_an_image_queued_past_max_latency_is_refused_and_the_host_recovers() -> None:
    predictor = SlowPredictor(delay=0.1)
    host = _host(predictor, max_latency_ms=20)
    first, late = await _while_busy(host, predictor, _images(3))
    assert first[0]["probability"] == pytest.approx(1 / 255)
    assert isinstance(late, ModelQueueTimeout)
    predictor.delay = 0.0
    assert (await host.classify(_images(51)))[0]["probability"] == pytest.approx(0.2)


@pytest.mark.anyio
async def test_a_failing_call_fails_each_of_its_requests_and_not_the_next() -> None:
    predictor = SlowPredictor(delay=0.02, failure=ValueError("broken"))
    host = _host(predictor)
    results = await asyncio.gather(
        host.classify(_images(1)), host.classify(_images(2)), return_exceptions=True
    )
    assert all(isinstance(r, ValueError) for r in results)
    predictor.failure = None
    assert (await host.classify(_images(255)))[0]["probability"] == pytest.approx(1.0)


@pytest.mark.anyio
async def test_a_request_whose_client_left_does_not_disturb_the_others() -> None:
    predictor = SlowPredictor(delay=0.05)
    host = _host(predictor)
    busy = asyncio.create_task(host.classify(_images(1)))
    await asyncio.to_thread(predictor.started.wait, 5)
    gone = asyncio.create_task(host.classify(_images(2)))
    kept = asyncio.create_task(host.classify(_images(3)))
    await asyncio.sleep(0)
    gone.cancel()
    assert (await kept)[0]["probability"] == pytest.approx(3 / 255)
    await busy
    assert predictor.batches == [1, 1]  # the cancelled image was never computed


@pytest.mark.anyio
async def test_the_front_turns_a_queue_timeout_into_model_unavailable() -> None:
    class Refusing:
        async def classify(self, images: np.ndarray) -> list[dict[str, Any]]:
            raise ModelQueueTimeout("queued 6000 ms for the model")

    service = object.__new__(PneumoniaService.inner)
    service.host = Refusing()  # type: ignore[assignment]
    with pytest.raises(ModelUnavailableError, match="queued 6000 ms"):
        await service._call_model("classify", _images(1))


@pytest.mark.anyio
async def test_metadata_says_why_model_workers_did_not_name_their_network() -> None:
    import aiohttp

    class Workers:
        answers = [aiohttp.ClientConnectionError("restarting"), {"runtime": "openvino"}]

        async def network(self) -> dict[str, Any]:
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

    service = object.__new__(PneumoniaService.inner)
    service._network = None
    service.model = type("Model", (), {"to_async": Workers()})()  # type: ignore[attr-defined]
    first = await service.network()
    assert first["runtime"] is None and "restarting" in first["unavailable"]
    assert await service.network() == {"runtime": "openvino"}  # asked again, then kept
    assert await service.network() == {"runtime": "openvino"}


def test_every_answer_says_where_its_time_went(
    asgi_client: TestClient, jpeg_paths: list[Path]
) -> None:
    headers = {"content-type": "image/jpeg"}
    response = asgi_client.post("/predict", content=jpeg_paths[2].read_bytes(), headers=headers)
    assert response.status_code == 200
    phases = timing.parse(response.headers["server-timing"])
    assert set(timing.PHASES) <= set(phases) and phases["batch"] == 1
    assert phases["model"] > 0 and phases["decode"] > 0
    parts = phases["upload"] + phases["decode"] + phases["hop"] + phases["model"]
    assert parts == pytest.approx(phases["total"], abs=0.05)  # the phases add up
    refused = asgi_client.post("/predict", content=b"nope", headers=headers)
    assert refused.status_code == 415
    assert timing.parse(refused.headers["server-timing"])["model"] == 0  # never reached it


def test_grad_cam_time_counts_as_the_model_s(
    asgi_client: TestClient, jpeg_paths: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import pneumo.inference.gradcam

    def slow_gradcam(model: Any, images: np.ndarray, **_: Any) -> np.ndarray:
        time.sleep(0.08)
        return np.zeros(images.shape, np.float32)

    monkeypatch.setattr(pneumo.inference.gradcam, "gradcam", slow_gradcam)
    headers = {"content-type": "image/jpeg"}
    data = jpeg_paths[2].read_bytes()
    response = asgi_client.post("/explain?format=json", content=data, headers=headers)
    assert response.status_code == 200, response.text
    phases = timing.parse(response.headers["server-timing"])
    assert phases["model"] >= 80 and phases["hop"] < 80


def test_start_up_garbage_is_collected_and_the_rest_left_out_of_later_scans() -> None:
    class Node:
        pass

    garbage = Node()
    garbage.loop = garbage  # only a collection frees a cycle
    gone = weakref.ref(garbage)
    del garbage
    kept = Node()
    freeze_startup_heap()
    assert gone() is None  # collected before freezing, not frozen forever
    assert gc.get_freeze_count() > 0
    assert not any(obj is kept for obj in gc.get_objects())  # out of the collector's scans


@pytest.mark.parametrize("name", ["PneumoniaService", "PneumoniaModel"])
def test_each_service_freezes_what_its_start_up_loaded(
    name: str, service_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Torch, OpenVINO, BentoML and the model: a full collection of them held every request for
    ~0.35 s on 2 cores. Frozen once everything is loaded, before the service says it is ready."""
    ready_when_frozen: list[bool] = []

    def freeze() -> None:
        ready_when_frozen.append(getattr(service, "ready", False))

    monkeypatch.setattr(service_module, "freeze_startup_heap", freeze)
    service = object.__new__(getattr(service_module, name).inner)
    service.__init__()
    try:
        assert ready_when_frozen == [False] and service.__is_ready__()
    finally:
        if name == "PneumoniaService":
            service.close()
            service.close_prediction_log()
