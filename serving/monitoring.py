"""The front service's side of monitoring: request ids, the prediction log, feedback, /live.

Every answered image gets a request id (in the answer and the ``X-Request-Id`` header) and one
row in the prediction log (pneumo/monitor/writer.py): the request only queues it, a background
thread writes it. Feedback and the model card's live figures read the store in a thread.
The log's counters are Prometheus counters on BentoML's /metrics and appear in /metadata.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pandas as pd

from pneumo.config import MonitorSettings
from pneumo.data.kermany import CLASSES
from pneumo.monitor.images import ImageKeeper
from pneumo.monitor.stats import log_rates
from pneumo.monitor.store import (
    PredictionStore,
    StoreUnavailableError,
    UnknownRequestError,
    resolve_url,
    utcnow,
)
from pneumo.monitor.writer import LogLimits, PredictionLog
from serving.inputs import InputError, Radiograph

REQUEST_ID_HEADER = "X-Request-Id"
WORKSPACE_ENV = "PNEUMO_WORKSPACE"  # where a relative store, image folder and buffer live
PARAMS_ENV = "PNEUMO_PARAMS"
FEEDBACK_FLUSH_S = 5.0  # a prediction answered a moment ago may still be queued
LIVE_DAYS = 30
_counter: Any = None


def workspace_root() -> Path:
    """``PNEUMO_WORKSPACE`` (set by `pneumo serve`), else the folder of ``PNEUMO_PARAMS``, else
    the current directory."""
    if os.environ.get(WORKSPACE_ENV):
        return Path(os.environ[WORKSPACE_ENV]).resolve()
    if os.environ.get(PARAMS_ENV):
        return Path(os.environ[PARAMS_ENV]).resolve().parent
    return Path.cwd()


def _prometheus_counter() -> Any:
    """pneumo_prediction_log_rows_total{outcome}: created once per process, after BentoML set
    up Prometheus's multiprocess directory (so its /metrics sums every worker)."""
    global _counter
    if _counter is None:
        import prometheus_client

        _counter = prometheus_client.Counter(
            "pneumo_prediction_log_rows",
            "prediction log rows by outcome: logged, buffered (store down), replayed, lost",
            ["outcome"],
        )
    return _counter


class Monitoring:
    """The prediction log and the store behind /feedback and /live."""

    def __init__(self, settings: MonitorSettings, root: Path, model_info: dict[str, Any]) -> None:
        self.settings = settings
        self.model_info = model_info
        self.store = PredictionStore(resolve_url(settings.store_url, root), settings.store_schema)
        self.log: PredictionLog | None = None
        if settings.enabled:
            keeper = None
            if settings.keep_images:
                keeper = ImageKeeper(
                    root / settings.image_dir,
                    settings.image_retention_days,
                    settings.max_kept_images,
                )
            limits = LogLimits(
                settings.flush_interval_s,
                settings.flush_rows,
                settings.queue_rows,
                settings.buffer_rows,
                settings.retry_s,
            )
            counter = _prometheus_counter()
            self.log = PredictionLog(
                self.store,
                root / settings.buffer_file,
                limits,
                keeper,
                on_count=lambda outcome, n: counter.labels(outcome).inc(n),
            ).start()

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    def record(
        self,
        endpoint: str,
        request_id: str,
        prediction: dict[str, Any],
        radiograph: Radiograph,
        data: bytes,
        started: float,
        batch_id: str | None = None,
    ) -> None:
        """Queue the row of one answered image (nothing when the log is off)."""
        if self.log is None:
            return
        model = self.model_info
        row = {
            "request_id": request_id,
            "batch_id": batch_id,
            "endpoint": endpoint,
            "received_at": utcnow(),
            "site": self.settings.site,
            "model_name": model["name"],
            "model_version": model["version"],
            "mlflow_version": model.get("mlflow_version"),
            "model_sha256": model.get("sha256"),
            "probability": prediction["probability"],
            "label": prediction["label"],
            "threshold": prediction["threshold"],
            "refer_to_radiologist": prediction["refer_to_radiologist"],
            "out_of_distribution": prediction["out_of_distribution"],
            "ood_score": prediction["ood_score"],
            "ood_reason": (prediction["ood_reason"] or None) and prediction["ood_reason"][:300],
            "input_format": radiograph.format,
            "width": radiograph.width,
            "height": radiograph.height,
            "latency_ms": 1000 * (time.perf_counter() - started),
        }
        self.log.submit(row, radiograph.pixels, data)

    def counts(self) -> dict[str, Any]:
        if self.log is None:
            return {"enabled": False}
        return {"enabled": True, **self.log.counts}

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
        self.store.dispose()

    # ------------------------------------------------------------------ feedback

    async def feedback(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Store a reviewer's label for an answered prediction; the answer says whether it
        replaced the same reviewer's earlier one."""
        request_id, label, reviewer = _checked(fields)
        if self.log is None:
            raise InputError(
                409,
                "monitoring_disabled",
                "the prediction log is off (monitor.enabled: false): no feedback can be joined",
            )
        return await anyio.to_thread.run_sync(
            self._store_feedback, request_id, label, reviewer, fields
        )

    def _store_feedback(
        self, request_id: str, label: str, reviewer: str, fields: dict[str, Any]
    ) -> dict[str, Any]:
        assert self.log is not None
        self.log.flush(FEEDBACK_FLUSH_S)
        try:
            prediction = self.store.prediction(request_id)
            if prediction is None:
                raise UnknownRequestError(request_id)
            note, patient = fields.get("note") or "", fields.get("patient_id")
            previous = self.store.put_feedback(request_id, reviewer, label, note, patient)
        except UnknownRequestError:
            raise InputError(
                404,
                "unknown_request",
                f"no answered prediction has request id {request_id!r}: send the request_id of a "
                "/predict, /predict_batch or /explain answer",
            ) from None
        except StoreUnavailableError as exc:
            raise InputError(503, "store_unavailable", f"{exc}: retry shortly") from None
        replaced = previous is not None
        message = (
            f"replaced {reviewer}'s earlier feedback ({previous['label']} -> {label})"
            if previous is not None
            else f"recorded {reviewer}'s feedback"
        )
        return {
            "request_id": request_id,
            "label": label,
            "reviewer": reviewer,
            "predicted_label": prediction["label"],
            "agrees_with_model": prediction["label"] == label,
            "replaced": replaced,
            "previous_label": previous["label"] if previous else None,
            "message": message,
        }

    # ------------------------------------------------------------------ live figures

    async def live(self) -> dict[str, Any]:
        """Per day of the last LIVE_DAYS: requests, positive rate, OOD rate, feedback agreement."""
        try:
            return await anyio.to_thread.run_sync(self._live)
        except StoreUnavailableError as exc:
            return {"available": False, "reason": str(exc), "days": []}

    def _live(self) -> dict[str, Any]:
        if self.log is not None:
            self.log.flush(FEEDBACK_FLUSH_S)  # the answers of a moment ago count too
        since = utcnow() - timedelta(days=LIVE_DAYS)
        frame = self.store.predictions_between(since)
        return {"available": True, "since": since.isoformat(), **live_summary(frame)}


def live_summary(frame: pd.DataFrame) -> dict[str, Any]:
    """The live tab's table: one row per day with requests, rates and feedback agreement."""
    if frame.empty:
        return {"days": [], "total": {"requests": 0}}
    frame = frame.assign(
        day=pd.to_datetime(frame["received_at"]).dt.strftime("%Y-%m-%d"),
        reviewed=frame["reviewed_label"].notna(),
        agrees=frame["reviewed_label"] == frame["label"],
    )

    def figures(part: pd.DataFrame) -> dict[str, Any]:
        reviewed = int(part["reviewed"].sum())
        return {
            "requests": len(part),
            **log_rates(part),
            "reviewed": reviewed,
            "agreement": float(part.loc[part["reviewed"], "agrees"].mean()) if reviewed else None,
        }

    days = [{"day": day, **figures(part)} for day, part in frame.groupby("day")]
    return {"days": days, "total": figures(frame)}


def _checked(fields: dict[str, Any]) -> tuple[str, str, str]:
    """The request id, label and reviewer of a feedback, or a 422 that says what is wrong."""
    request_id = str(fields.get("request_id") or "").strip()
    label = str(fields.get("label") or "").strip()
    reviewer = str(fields.get("reviewer") or "").strip()
    if label not in CLASSES:
        raise InputError(
            422, "invalid_label", f"label must be one of {', '.join(CLASSES)}, not {label!r}"
        )
    if not request_id or len(request_id) > 64:
        raise InputError(422, "invalid_request_id", "request_id must be 1 to 64 characters")
    if not reviewer or len(reviewer) > 128:
        raise InputError(
            422, "invalid_reviewer", "reviewer must name who reviewed (1 to 128 chars)"
        )
    if len(str(fields.get("note") or "")) > 2000 or len(str(fields.get("patient_id") or "")) > 128:
        raise InputError(422, "invalid_feedback", "note is at most 2000, patient_id 128 characters")
    return request_id, label, reviewer
