"""The served network: loaded once, called on one thread, concurrent requests grouped.

With ``serve.workers: 1`` (the default) the front service holds the model in its own process
(:class:`ModelHost`): no second HTTP hop, no pickling, no second server's CPU per request, which
on a 2-core machine was a third of the served latency. With more workers the model runs in
``PneumoniaModel`` worker processes behind BentoML's adaptive batching; both load and call the
model through :func:`load_predictor` and :func:`classify_batch`.

The grouping here has no timer: an idle model starts at once (nothing added at one client), and
each call takes every image that queued while the previous call ran, up to
``serve.max_batch_size``; an image queued longer than ``serve.max_latency_ms`` is refused (503),
as BentoML's batching queue does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pneumo.config import ServeSettings, Settings
from pneumo.stored_model import DECISION_FILE, GUARD_FILE, MODEL_FILE, PRECISION_FILE
from serving import timing

if TYPE_CHECKING:
    from pneumo.inference.predictor import Predictor

log = logging.getLogger("pneumo.serving")


class ModelQueueTimeout(Exception):
    """An image waited longer than ``serve.max_latency_ms`` for the model: the service is
    overloaded and the client should retry (the front answers 503)."""


def load_predictor(settings: Settings, stored: Any, workers: int) -> Predictor:
    """The stored model (a ``bentoml.Model``) in its configured runtime, warmed up."""
    from pneumo.accel import available_cores, configure_threads
    from pneumo.inference.predictor import Predictor

    threads = configure_threads(settings.model.threads or max(1, available_cores() // workers))
    # Predictor.from_files loads weights with torch.load(weights_only=True): never unpickles.
    predictor = Predictor.from_files(
        Path(stored.path_of(MODEL_FILE)),
        Path(stored.path_of(DECISION_FILE)),
        settings.model.accelerator(),
        settings.model.runtime,  # exported and checked against torch here, once
        Path(stored.path_of(GUARD_FILE)),  # absent for models packaged before the guard
        Path(stored.path_of(PRECISION_FILE)),  # bf16 where its evidence and the CPU allow it
    )
    if settings.model.precision == "auto":  # bf16 only where it is also faster on this CPU
        from pneumo.inference.speed import keep_faster_precision

        keep_faster_precision(predictor, threads)
    side = predictor.image_size
    # One warm-up call of what a request runs (the network with its features, and the guard
    # with its imports): the first real request should not pay for the set-up (~1 s here).
    predictor.assess(np.zeros((1, side, side), dtype=np.uint8))
    log.info("model %s loaded (%d threads, %s)", stored.tag, threads, predictor.network)
    return predictor


def model_info(stored: Any) -> dict[str, Any]:
    """Who answered: the model-store tag plus where the model came from."""
    meta = stored.info.metadata
    return {
        "name": stored.tag.name,
        "version": stored.tag.version,
        "mlflow_version": meta.get("mlflow_version") or None,
        "run_id": meta.get("run_id") or None,
        "source": meta.get("source"),
        "arch": meta.get("arch"),
        "sha256": meta.get("sha256"),  # the served model: weights + decision + guard
        "weights_sha256": meta.get("weights_sha256"),  # models/model.pt alone
    }


def network_info(predictor: Predictor) -> dict[str, Any]:
    """The runtime and precision this process chose at start-up for the network (bf16 only where
    the model's evidence and the CPU allow it): what an operator checks on /metadata."""
    network = predictor.network
    if network is predictor.model:
        precision = predictor.accel.precision
        return {"runtime": "torch", "precision": precision, "description": f"torch {precision}"}
    description = str(network.description)  # "<runtime> <precision>, <n> threads ..."
    runtime, precision = description.split(",")[0].split()[:2]
    return {"runtime": runtime, "precision": precision, "description": description}


def classify_batch(predictor: Predictor, images: np.ndarray) -> list[dict[str, Any]]:
    """uint8 images (N, S, S) -> one {probability, ood_score, ood_reason, model_ms, batch} per
    image, in one call: the guard reads the same forward pass's features.

    An exported network computes on its runtime's own threads; torch then only standardises and
    scores a few images around it, on one thread here: its idle OpenMP workers would otherwise
    spin on the cores decoding needs (2.4 ms of CPU per call of four images on 2 cores)."""
    from pneumo.accel import torch_threads

    start = time.perf_counter()
    images = np.require(images, np.uint8, ["C", "W"])  # arrives read-only when unpickled
    exported = predictor.network is not predictor.model
    with torch_threads(1) if exported else contextlib.nullcontext():
        assessed = predictor.assess(images, batch_size=max(1, len(images)))
    call = timing.model_fields(time.perf_counter() - start, len(images))
    return [
        {"probability": float(p), "ood_score": None if np.isnan(s) else float(s),
         "ood_reason": reason, **call}
        for p, s, reason in zip(assessed.probabilities, assessed.ood_scores,
                                assessed.ood_reasons, strict=True)
    ]  # fmt: skip


@dataclass
class _Job:
    images: np.ndarray
    future: asyncio.Future[list[dict[str, Any]]]
    queued: float = field(default_factory=time.monotonic)


class ModelHost:
    """The model in this process: calls run on one thread, one at a time, queued calls grouped."""

    def __init__(self, predictor: Predictor, serve: ServeSettings) -> None:
        self.predictor = predictor
        self.max_batch_size = serve.max_batch_size if serve.adaptive_batching else 1
        self.max_wait_s = serve.max_latency_ms / 1000
        # One thread: the runtime already uses every core it was given for one call.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="pneumo-model")
        self._queue: deque[_Job] = deque()
        self._worker: asyncio.Task[None] | None = None

    async def classify(self, images: np.ndarray) -> list[dict[str, Any]]:
        job = _Job(images, asyncio.get_running_loop().create_future())
        self._queue.append(job)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await job.future

    async def gradcam(self, images: np.ndarray) -> np.ndarray:
        from pneumo.inference.gradcam import gradcam

        model = self.predictor.model  # Grad-CAM needs gradients: always torch
        pixels = np.require(images, np.uint8, ["C", "W"])
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, gradcam, model, pixels
        )

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            jobs = self._next_batch()
            if not jobs:
                continue
            images = jobs[0].images if len(jobs) == 1 else np.concatenate([j.images for j in jobs])
            try:
                results = await loop.run_in_executor(
                    self._thread, classify_batch, self.predictor, images
                )
            except Exception as exc:  # each waiting request gets the failure as its own
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            start = 0
            for job in jobs:
                if not job.future.done():  # its client may have gone
                    job.future.set_result(results[start : start + len(job.images)])
                start += len(job.images)

    def _next_batch(self) -> list[_Job]:
        """The queued jobs of the next call: whole requests up to max_batch_size images (a
        larger request goes alone); those that waited too long are refused."""
        jobs: list[_Job] = []
        size = 0
        now = time.monotonic()
        while self._queue:
            job = self._queue[0]
            if job.future.done():  # cancelled: its client disconnected
                self._queue.popleft()
                continue
            if now - job.queued > self.max_wait_s:
                self._queue.popleft()
                waited = 1000 * (now - job.queued)
                job.future.set_exception(ModelQueueTimeout(f"queued {waited:.0f} ms for the model"))
                continue
            if jobs and size + len(job.images) > self.max_batch_size:
                break
            jobs.append(self._queue.popleft())
            size += len(job.images)
        return jobs

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)
