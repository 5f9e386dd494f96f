"""The BentoML diagnostic service: a front service for HTTP and a model service for the network.

``PneumoniaService`` (what `bentoml serve` and the Bento start) owns the public routes of
serving/api.py: it streams and validates uploads and decodes them with the project's one
preprocessing function. ``PneumoniaModel`` loads the packaged champion once and answers through
a batchable API, so concurrent requests are grouped into one model call (adaptive batching);
under `bentoml serve` it runs in its own worker processes. Both read the model from the BentoML
model store that `pneumo package` filled, and their limits from ``serve.*`` in params.yaml.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import bentoml
import numpy as np
from bentoml.exceptions import NotFound

from pneumo.config import ServeSettings, load_settings
from pneumo.decision import Decision
from serving.api import create_app
from serving.web import read_model_card

log = logging.getLogger("pneumo.serving")

# The params file beside the code: the repository's, or the copy a Bento carries in src/.
PARAMS = Path(os.environ.get("PNEUMO_PARAMS", Path(__file__).resolve().parents[1] / "params.yaml"))
_SETTINGS = load_settings(PARAMS)
SERVE: ServeSettings = _SETTINGS.serve


def _champion_tag() -> str:
    """The model to load: PNEUMO_MODEL_TAG (tests, builds), the model a Bento names under
    the alias 'champion' (what `pneumo package` builds), else the latest import."""
    if tag := os.environ.get("PNEUMO_MODEL_TAG"):
        return tag
    try:
        return str(bentoml.models.get("champion").tag)
    except NotFound:
        return f"{_SETTINGS.registry.model_name}:latest"


MODEL_TAG = _champion_tag()
MODEL_CALL_ATTEMPTS = 3


def _model_info(stored: Any) -> dict[str, Any]:
    """Who answered: the model-store tag plus where the model came from."""
    meta = stored.info.metadata
    return {
        "name": stored.tag.name,
        "version": stored.tag.version,
        "mlflow_version": meta.get("mlflow_version") or None,
        "run_id": meta.get("run_id") or None,
        "source": meta.get("source"),
        "arch": meta.get("arch"),
        "sha256": meta.get("sha256"),
    }


@bentoml.service(
    name="pneumonia-model",
    workers=SERVE.workers,
    threads=1,  # one model call at a time per worker: torch already uses every thread it has
    traffic={"timeout": 300},
)
class PneumoniaModel:
    """The champion network and its decision threshold, loaded once per worker."""

    champion = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        from pneumo.accel import available_cores, configure_threads
        from pneumo.predict import Predictor

        threads = configure_threads(max(1, available_cores() // SERVE.workers))
        stored = self.champion
        # Predictor.from_files loads weights with torch.load(weights_only=True): never unpickles.
        self.predictor = Predictor.from_files(
            Path(stored.path_of("model.pt")),
            Path(stored.path_of("decision.json")),
            _SETTINGS.model.accelerator(),
        )
        side = self.predictor.image_size
        # One warm-up call: the first real request should not pay for oneDNN's set-up.
        self.predictor.probabilities(np.zeros((1, side, side), dtype=np.uint8))
        self.ready = True
        log.info("model %s loaded (%d torch threads)", stored.tag, threads)

    def __is_ready__(self) -> bool:
        return getattr(self, "ready", False)

    @bentoml.api(
        batchable=SERVE.adaptive_batching,
        max_batch_size=SERVE.max_batch_size,
        max_latency_ms=SERVE.max_latency_ms,
    )
    def classify(self, images: np.ndarray) -> list[dict[str, Any]]:
        """uint8 images (N, S, S) -> one {probability} per image, in one model call."""
        images = np.require(images, np.uint8, ["C", "W"])  # arrives read-only when unpickled
        probabilities = self.predictor.probabilities(images, batch_size=max(1, len(images)))
        return [{"probability": float(p)} for p in probabilities]

    @bentoml.api
    def gradcam(self, images: np.ndarray) -> np.ndarray:
        """Grad-CAM heatmaps (N, S, S) in [0, 1] of the pneumonia logit."""
        from pneumo.explain import gradcam

        return gradcam(self.predictor.model, np.require(images, np.uint8, ["C", "W"]))


@bentoml.asgi_app(create_app(bentoml.get_current_service), path="/")
@bentoml.service(
    name="pneumonia-service",
    workers=1,  # async I/O; decoding runs in threads, about one per core
    traffic={"timeout": 300, "max_concurrency": SERVE.max_concurrency},
)
class PneumoniaService:
    """The public service: validates uploads, decodes them, asks the model service.

    Its routes (serving/api.py) are mounted at the root; BentoML's own /livez, /readyz and
    /metrics answer first, and /readyz waits for the model service's __is_ready__.
    """

    champion = bentoml.models.BentoModel(MODEL_TAG)
    model = bentoml.depends(PneumoniaModel)

    def __init__(self) -> None:
        from pneumo.accel import available_cores

        stored = self.champion
        self.serve = SERVE
        self.model_info = _model_info(stored)
        self.image_size = int(stored.info.metadata["image_size"])
        self.decision = Decision.load(Path(stored.path_of("decision.json")))
        self.metrics = json.loads(Path(stored.path_of("metrics.json")).read_text())
        self.model_card = read_model_card(stored, self.metrics)
        self.decode_limiter = anyio.CapacityLimiter(available_cores())
        _ = self.model  # in-process (tests, to_asgi) this loads the model now, not on a request
        self.ready = True

    def __is_ready__(self) -> bool:
        return getattr(self, "ready", False)

    async def classify(self, images: np.ndarray) -> list[dict[str, Any]]:
        return await self._call_model("classify", images)

    async def heatmaps(self, images: np.ndarray) -> np.ndarray:
        return await self._call_model("gradcam", images)

    async def _call_model(self, method: str, images: np.ndarray) -> Any:
        """Call the model service, again on a fresh connection if a kept-alive one was closed.

        Its server closes idle connections after a few seconds; a request sent on one just as it
        closes fails without an answer. Inference has no side effects, so retrying is safe.
        """
        for attempt in range(1, MODEL_CALL_ATTEMPTS + 1):
            try:
                return await getattr(self.model.to_async, method)(images)
            except aiohttp.ClientConnectionError as exc:  # BentoML's client is aiohttp
                if attempt == MODEL_CALL_ATTEMPTS:
                    raise
                log.warning("model call %s failed (%r); retrying", method, exc)
