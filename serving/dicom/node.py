"""One received DICOM instance -> the answer /predict gives, logged, and results to deliver.

The instance's Part 10 bytes take the HTTP route's path: ``read_radiograph`` (the same header
checks and :func:`pneumo.data.preprocess.decode_radiograph`), the served model and its guard in
one call (``classify_batch``), and ``prediction_of`` with the model's decision. What the route
would answer 4xx is refused here with a DICOM failure status that carries the reason.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread

from pneumo.config import Settings
from pneumo.monitor.store import PredictionStore, resolve_url
from serving.api import prediction_of
from serving.dicom.outbox import Instance, Outbox, destinations, metrics
from serving.dicom.results import Result, overlay_capture, structured_report
from serving.inputs import InputError, read_radiograph
from serving.model_host import classify_batch, load_predictor, model_info
from serving.monitoring import Monitoring

log = logging.getLogger("pneumo.dicom")

# C-STORE failure statuses (DICOM PS3.4 B.2.3), by the HTTP status the route would answer.
OUT_OF_RESOURCES = 0xA700  # too many pixels to decode
DOES_NOT_MATCH = 0xA900  # a readable instance of a kind pneumo does not read (colour, frames)
CANNOT_UNDERSTAND = 0xC000  # damaged or undecodable
SOP_CLASS_NOT_SUPPORTED = 0x0122  # not a radiograph (a report, a PDF, a CT slice...)
PROCESSING_FAILURE = 0x0110


class Refusal(Exception):
    """An instance pneumo does not score: the C-STORE status, a stable code and the reason."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.code, self.reason = status, code, reason


def _status(error: InputError) -> int:
    if error.status == 413:
        return OUT_OF_RESOURCES
    if error.status in (415, 422):
        return DOES_NOT_MATCH
    return CANNOT_UNDERSTAND


@dataclass(frozen=True)
class Scored:
    """What one instance gave: its request id (prediction log), the answer, the results."""

    request_id: str
    prediction: dict[str, Any]
    instance: Instance
    results: list[Result]


class DicomNode:
    """The served model, its prediction log and the outbox: what the listener and the puller
    share. Model calls are serialised (one runtime, every core); decoding is not."""

    def __init__(self, settings: Settings, stored: Any, root: Path) -> None:
        self.settings = settings
        self.predictor = load_predictor(settings, stored, 1)
        self.model_info = model_info(stored)
        store = PredictionStore(resolve_url(settings.monitor.store_url, root),
                                settings.monitor.store_schema)  # fmt: skip
        self.outbox = Outbox(store, settings.dicom, destinations(settings.dicom))
        self.outbox.ensure()  # the tables first: the prediction log's thread creates them too
        self.monitoring = Monitoring(settings.monitor, root, self.model_info)
        self._model = threading.Lock()

    def score(self, data: bytes, via: str, sender: str) -> Scored:
        """Score one Part 10 instance; raises :class:`Refusal` for what /predict refuses."""
        started = time.perf_counter()
        serve = self.settings.serve
        try:
            radiograph = read_radiograph(data, "application/dicom", self.predictor.image_size,
                                         serve.max_pixels, serve.min_side)  # fmt: skip
        except InputError as exc:
            raise Refusal(_status(exc), exc.code, exc.message) from None
        header = dcmread(io.BytesIO(data), stop_before_pixels=True)  # its structure was checked
        missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                               "SOPClassUID") if not str(header.get(k, "")).strip()]  # fmt: skip
        if missing:
            raise Refusal(DOES_NOT_MATCH, "missing_uid", f"the instance has no {missing[0]}")
        pixels = radiograph.pixels[None]
        with self._model:
            (result,) = classify_batch(self.predictor, pixels)
            heatmap = self._heatmap(pixels) if self.settings.dicom.overlay else None
        prediction = prediction_of(self.predictor.decision, result, radiograph)
        request_id = Monitoring.new_id()
        self.monitoring.record("dicom", request_id, prediction, radiograph, data, started)
        results = [structured_report(header, prediction, self.model_info)]
        if heatmap is not None:
            from pneumo.inference.gradcam import overlay

            rgb = overlay(radiograph.pixels, heatmap)
            results.append(overlay_capture(header, rgb, prediction, self.model_info,
                                           self.settings.dicom.overlay_size))  # fmt: skip
        instance = Instance(request_id, via, sender[:200], str(header.StudyInstanceUID),
                            str(header.SeriesInstanceUID), str(header.SOPInstanceUID),
                            str(self.model_info["version"]))  # fmt: skip
        queued = self.outbox.put(instance, results)
        metrics()["instances"].labels("scored").inc()
        log.info("%s from %s: %s p=%.3f%s (request %s), %d results queued", instance.sop_instance_uid,
                 sender, prediction["label"], prediction["probability"],
                 f", referred: {prediction['ood_reason']}" if prediction["ood_reason"] else "",
                 request_id, queued)  # fmt: skip
        return Scored(request_id, prediction, instance, results)

    def _heatmap(self, pixels: np.ndarray) -> np.ndarray:
        from pneumo.inference.gradcam import gradcam

        return gradcam(self.predictor.model, pixels)[0]  # Grad-CAM needs gradients: torch

    def close(self) -> None:
        self.outbox.close()
        self.monitoring.close()
