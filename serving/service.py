"""The BentoML diagnostic service: a front service for HTTP and a model service for the network.

``PneumoniaService`` (what `bentoml serve` and the Bento start) owns the public routes of
serving/api.py: it streams and validates uploads and decodes them with the project's one
preprocessing function. The packaged champion is loaded once and concurrent requests are grouped
into one model call (adaptive batching): with ``serve.workers: 1`` inside the front service's own
process (serving/model_host.py: no second HTTP hop), with more in ``PneumoniaModel`` worker
processes behind a batchable BentoML API. Every answer carries a ``Server-Timing`` header
(serving/timing.py).

Importing this module reads no file and no store. BentoML needs four settings when the classes
are decorated (model workers and batching): they are Bento arguments (``bentoml.use_arguments``),
which `pneumo package` records in the Bento from ``serve.*`` in params.yaml, `bentoml serve
--arg workers=2` overrides for the source tree and ``PNEUMO_SERVE_ARGS`` (what `pneumo serve
--workers` sets) for a Bento. Everything else is read in the constructors: the
``serve.*`` limits from params.yaml (the copy a Bento carries, or ``PNEUMO_PARAMS``), and the
model the Bento names under the alias 'champion' (or ``PNEUMO_MODEL_TAG`` when serving the
source tree).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import bentoml
import numpy as np
from bentoml.exceptions import ServiceUnavailable
from pydantic import BaseModel
from starlette.responses import Response

from pneumo.config import ServeSettings, Settings, load_settings
from pneumo.decision import Decision
from pneumo.stored_model import CHAMPION_ALIAS, DECISION_FILE, METRICS_FILE, SERVE_ARGS_ENV
from serving import api as routes
from serving import deadline, timing, tracing
from serving.api import ModelUnavailableError, create_app
from serving.errors import JsonErrors
from serving.framing import StrictFraming
from serving.json_routes import StrictJson
from serving.model_host import (
    ModelHost,
    ModelQueueTimeout,
    classify_batch,
    load_predictor,
    model_info,
    network_info,
)
from serving.monitoring import Monitoring, workspace_root
from serving.openapi import openapi_document
from serving.schema import (
    BatchPrediction,
    FeedbackAnswer,
    FeedbackInput,
    Incoming,
    OverlayPng,
    Prediction,
    RadiographInput,
    RadiographsInput,
)
from serving.web import read_model_card

log = logging.getLogger("pneumo.serving")
deadline.install()  # traffic.timeout below, without BentoML's timer that outlives each request
tracing.install()  # BentoML's tracing middleware only when a span exporter is configured

PARAMS_ENV = "PNEUMO_PARAMS"  # another params.yaml than the one beside the code
MODEL_TAG_ENV = "PNEUMO_MODEL_TAG"  # another model than the Bento's champion (source serving)
MODEL_CALL_ATTEMPTS = 3
# What a failed call to the model service may be besides a bug: it restarted, closed a kept-alive
# connection, timed out or is overloaded (its batching queue answered 503). The client may retry.
TRANSIENT_ERRORS = (aiohttp.ClientConnectionError, asyncio.TimeoutError, ServiceUnavailable)
_DEFAULTS = ServeSettings()


class ServiceArguments(BaseModel):
    """The settings BentoML reads when the services are decorated (``serve.*`` in params.yaml)."""

    workers: int = _DEFAULTS.workers
    adaptive_batching: bool = _DEFAULTS.adaptive_batching
    max_batch_size: int = _DEFAULTS.max_batch_size
    max_latency_ms: int = _DEFAULTS.max_latency_ms

    @classmethod
    def command_line(cls, serve: ServeSettings) -> list[str]:
        """`bentoml serve` options that give the source tree these ``serve`` settings (a Bento
        has them recorded by `pneumo package`)."""
        pairs = (f"{name}={str(getattr(serve, name)).lower()}" for name in cls.model_fields)
        return [part for pair in pairs for part in ("--arg", pair)]


def _arguments() -> ServiceArguments:
    """The Bento arguments, overridden by ``PNEUMO_SERVE_ARGS``: BentoML 1.4 loads a Bento's
    recorded arguments over `bentoml serve --arg`, but every worker inherits the environment."""
    arguments = bentoml.use_arguments(ServiceArguments)
    overrides = json.loads(os.environ.get(SERVE_ARGS_ENV) or "{}")
    return ServiceArguments.model_validate({**arguments.model_dump(), **overrides})


ARGUMENTS = _arguments()
# More than one worker: the model runs in PneumoniaModel worker processes; else in the front's.
MODEL_WORKERS = ARGUMENTS.workers > 1


def read_settings() -> Settings:
    """params.yaml: ``PNEUMO_PARAMS``, else the copy beside the code (the repository's, or the
    one a Bento carries in its src/)."""
    default = Path(__file__).resolve().parents[1] / "params.yaml"
    return load_settings(Path(os.environ.get(PARAMS_ENV, default)))


def champion() -> Any:  # -> bentoml.Model
    """The model to serve: ``PNEUMO_MODEL_TAG``, else the model the Bento names 'champion'."""
    return bentoml.models.get(os.environ.get(MODEL_TAG_ENV, CHAMPION_ALIAS))


def show_info_logs() -> None:
    """BentoML's server logging leaves loggers other than its own at WARNING; pneumo's INFO lines
    (model loaded, code origin, client disconnects) belong in the server log too, unless an
    operator set their level."""
    for name in ("pneumo", "serving"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)


def log_code_origin(service: str) -> None:
    """Where this process runs pneumo and serving from: a Bento must run its own copy only."""
    import pneumo
    import serving

    roots = {Path(pneumo.__file__).parents[1], Path(serving.__file__).parents[1]}
    loaded = [
        Path(module.__file__)
        for name, module in list(sys.modules.items())
        if name.split(".")[0] in ("pneumo", "serving") and getattr(module, "__file__", None)
    ]
    elsewhere = sorted({str(p) for p in loaded if not any(p.is_relative_to(r) for r in roots)})
    log.info(
        "%s runs pneumo from %s and serving from %s; %d of their modules loaded from elsewhere%s",
        service,
        Path(pneumo.__file__).parent,
        Path(serving.__file__).parent,
        len(elsewhere),
        f": {', '.join(elsewhere[:5])}" if elsewhere else "",
    )


def freeze_startup_heap() -> None:
    """Take what start-up loaded (torch, OpenVINO, BentoML: ~700,000 objects) out of the garbage
    collector's scans: a full collection otherwise walks them all, ~0.35 s on 2 cores during
    which every request in the process waits (a 0.4-0.5 s p99 in profiling runs). Objects made
    later are collected as before; what start-up left as garbage is collected first."""
    gc.collect()
    gc.freeze()


@bentoml.service(
    name="pneumonia-model",
    workers=ARGUMENTS.workers,
    threads=1,  # one model call at a time per worker: the runtime already uses every thread
    traffic={"timeout": 300},
    logging={"access": {"enabled": False}},  # the front service logs every request already
)
class PneumoniaModel:
    """The champion network in its own worker processes, when ``serve.workers`` is above 1
    (with one worker the front service holds the model itself: serving/model_host.py)."""

    def __init__(self) -> None:
        show_info_logs()
        self.predictor = load_predictor(read_settings(), champion(), ARGUMENTS.workers)
        freeze_startup_heap()
        self.ready = True
        log_code_origin("the model service")

    def __is_ready__(self) -> bool:
        return getattr(self, "ready", False)

    @bentoml.api(
        batchable=ARGUMENTS.adaptive_batching,
        max_batch_size=ARGUMENTS.max_batch_size,
        max_latency_ms=ARGUMENTS.max_latency_ms,
    )
    def classify(self, images: np.ndarray) -> list[dict[str, Any]]:
        """uint8 images (N, S, S) -> one {probability, ood_score, ood_reason, model_ms, batch}
        per image, in one call (the guard reads the same forward pass's features)."""
        return classify_batch(self.predictor, images)

    @bentoml.api
    def network(self) -> dict[str, Any]:
        """The runtime and precision this worker computes the network in."""
        return network_info(self.predictor)

    @bentoml.api
    def gradcam(self, images: np.ndarray) -> np.ndarray:
        """Grad-CAM heatmaps (N, S, S) in [0, 1] of the pneumonia logit."""
        from pneumo.inference.gradcam import gradcam

        return gradcam(self.predictor.model, np.require(images, np.uint8, ["C", "W"]))


def _document() -> dict[str, Any]:
    """/docs.json: BentoML's OpenAPI document of the service, completed (serving/openapi.py),
    its examples carrying the served model's threshold, referral band and identity."""
    served = None
    try:
        service = bentoml.get_current_service()
        decision = service.decision
        served = {"threshold": round(decision.threshold, 6),
                  "referral_band": [round(v, 6) for v in decision.referral_band],
                  "model": service.model_info}  # fmt: skip
    except (AttributeError, RuntimeError, TypeError):
        pass  # no live service (documentation built offline): the generic example
    return openapi_document(PneumoniaService.openapi_spec.asdict(), served)


@bentoml.asgi_app(create_app(bentoml.get_current_service, _document), path="/")
@bentoml.service(
    name="pneumonia-service",
    workers=1,  # async I/O; decoding runs in threads, about one per core
    # No max_concurrency here: serving/api.py admits requests itself once their body has
    # arrived, so uploads that stall cannot hold every slot (and overload answers 503).
    traffic={"timeout": 300},
)
class PneumoniaService:
    """The public service: validates uploads, decodes them, asks the model service.

    /predict, /predict_batch and /explain are typed endpoints whose bodies serving/api.py reads
    under limits; the GET routes, the web page and /docs are mounted at the root. BentoML's own
    /livez, /readyz and /metrics answer first; /readyz waits for the model's __is_ready__.
    """

    if MODEL_WORKERS:
        model = bentoml.depends(PneumoniaModel)
    host: ModelHost | None = None  # the model in this process, when there are no model workers

    def __init__(self) -> None:
        from pneumo.accel import available_cores

        show_info_logs()
        stored = champion()
        settings = read_settings()
        self.serve = settings.serve
        self.model_info = model_info(stored)
        self.image_size = int(stored.info.metadata["image_size"])
        self.decision = Decision.load(Path(stored.path_of(DECISION_FILE)))
        self.metrics = json.loads(Path(stored.path_of(METRICS_FILE)).read_text())
        self.model_card = read_model_card(stored, self.metrics)
        self.decode_limiter = anyio.CapacityLimiter(available_cores())
        self.admission = anyio.CapacityLimiter(self.serve.max_concurrency)
        self.uploads = anyio.CapacityLimiter(self.serve.max_uploads)
        self.monitoring = Monitoring(settings.monitor, workspace_root(), self.model_info)
        self._network: dict[str, Any] | None = None
        if MODEL_WORKERS:
            _ = self.model  # in-process (tests, to_asgi) this loads the model now
        else:
            self.host = ModelHost(load_predictor(settings, stored, 1), self.serve)
        freeze_startup_heap()
        self.ready = True
        log_code_origin("the front service")

    def __is_ready__(self) -> bool:
        return getattr(self, "ready", False)

    @bentoml.api(route="/predict", input_spec=RadiographInput, output_spec=Prediction)
    async def predict(self, image: Incoming) -> Response:
        """Probability of pneumonia in one radiograph, the call at the decision threshold and
        whether to refer it to a radiologist."""
        return await routes.respond(routes.predict, image.request, self)

    @bentoml.api(route="/predict_batch", input_spec=RadiographsInput, output_spec=BatchPrediction)
    async def predict_batch(self, images: Incoming) -> Response:
        """Predict up to serve.max_batch_files radiographs: all of them or, if any file is
        unusable, none (the answer lists each bad file)."""
        return await routes.respond(routes.predict_batch, images.request, self)

    @bentoml.api(route="/explain", input_spec=RadiographInput, output_spec=OverlayPng)
    async def explain(self, image: Incoming) -> Response:
        """Grad-CAM of the pneumonia score on the model's view (?format=png, json or layers)."""
        return await routes.respond(routes.explain, image.request, self)

    @bentoml.api(route="/feedback", input_spec=FeedbackInput, output_spec=FeedbackAnswer)
    async def feedback(self, ctx: bentoml.Context, **fields: Any) -> Response:
        """A reviewer's label (NORMAL or PNEUMONIA) for an answered radiograph, by request id;
        a second one from the same reviewer replaces the first."""
        handler = functools.partial(routes.feedback, fields=fields)
        response = await routes.respond(handler, ctx.request, self)
        ctx.response.status_code = response.status_code  # BentoML answers with the context's
        return response

    @bentoml.on_shutdown
    def close_prediction_log(self) -> None:
        """Write the queued rows (to the store, or the buffer file) before the process ends."""
        self.monitoring.close()

    async def classify(self, images: np.ndarray) -> list[dict[str, Any]]:
        start = time.perf_counter()
        results = await self._call_model("classify", images)
        timing.model_call(time.perf_counter() - start, results)
        return results

    async def network(self) -> dict[str, Any]:
        if self.host is not None:
            return network_info(self.host.predictor)
        if self._network is None:  # asked of a model worker once: they all load the same way
            try:
                self._network = await self.model.to_async.network()
            except Exception as exc:  # /metadata answers without it, saying why
                reason = f"the model workers did not answer: {exc!r}"[:300]
                return dict.fromkeys(("runtime", "precision", "description")) | {
                    "unavailable": reason
                }
        return self._network

    async def heatmaps(self, images: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        maps = await self._call_model("gradcam", images)
        timing.model_call(time.perf_counter() - start, [])
        return maps

    async def _call_model(self, method: str, images: np.ndarray) -> Any:
        """Call the model service, again on a fresh connection if a kept-alive one was closed.

        Its server closes idle connections after a few seconds; a request sent on one just as it
        closes fails without an answer. Inference has no side effects, so retrying is safe. Only
        these transient failures become :class:`ModelUnavailableError` (503, retry); anything
        else is a bug and reaches the client as a 500.
        """
        if self.host is not None:
            try:
                return await getattr(self.host, method)(images)
            except ModelQueueTimeout as exc:
                raise ModelUnavailableError(f"{method}: {exc}") from exc
        for attempt in range(1, MODEL_CALL_ATTEMPTS + 1):
            try:
                return await getattr(self.model.to_async, method)(images)
            except aiohttp.ClientConnectionError as exc:
                if attempt == MODEL_CALL_ATTEMPTS:
                    raise ModelUnavailableError(f"{method}: {exc!r}") from exc
                log.warning("model call %s failed (%r); retrying", method, exc)
            except TRANSIENT_ERRORS as exc:
                raise ModelUnavailableError(f"{method}: {exc!r}") from exc
        raise AssertionError("unreachable")  # the loop returns or raises

    @bentoml.on_shutdown
    def close(self) -> None:
        if self.host is not None:
            self.host.close()


# BentoML's own answers (unknown routes, wrong methods on /livez and /readyz) in our JSON format.
PneumoniaService.add_asgi_middleware(JsonErrors)
# JSON routes checked (size, type, fields) before BentoML reads and validates them.
PneumoniaService.add_asgi_middleware(StrictJson)
PneumoniaService.add_asgi_middleware(timing.ServerTiming)
# HTTP framing refused as the specification says (transfer codings, header size, length).
PneumoniaService.add_asgi_middleware(StrictFraming)
