"""The results on their way to the PACS: queued in the prediction store until delivered.

Two tables beside the prediction log (pneumo/monitor/store.py, same SQLite file or PostgreSQL
schema):

- ``dicom_instances``: per scored instance its request id (the prediction log's row), who sent it
  and its Study, Series and SOP Instance UIDs. Nothing else of the patient is kept: the UIDs are
  what joins a result to its study and what `pneumo dicom-pull` uses to skip what it scored.
- ``dicom_outbox``: per result and destination, the Part 10 bytes until the destination has
  taken them. A failed attempt waits ``retry_initial_s``, doubled per failure up to
  ``retry_max_s``; a delivered result keeps its UIDs and times, its bytes are dropped (they
  carry the patient's name and ids, copied from the source for the PACS).

Destinations are ``cstore:AE@host:port`` (C-STORE) and ``stow:URL`` (STOW-RS, dicomweb-client).
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from pydicom import Dataset, dcmread

from pneumo.config import DicomSettings
from pneumo.monitor.store import PredictionStore, StoreUnavailableError, utcnow
from serving.dicom.results import Result
from serving.dicom.send import Destination, store

log = logging.getLogger("pneumo.dicom")

metadata = sa.MetaData()
instances = sa.Table(
    "dicom_instances",
    metadata,
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("received_at", sa.DateTime, nullable=False),
    sa.Column("via", sa.String(16), nullable=False),  # c-store or dicomweb
    sa.Column("sender", sa.String(200), nullable=False),  # calling AE title or DICOMweb URL
    sa.Column("study_uid", sa.String(64), nullable=False),
    sa.Column("series_uid", sa.String(64), nullable=False),
    sa.Column("sop_instance_uid", sa.String(64), nullable=False, index=True),
    sa.Column("model_version", sa.String(128), nullable=False),
)
outbox = sa.Table(
    "dicom_outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(64), nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False),  # report or overlay
    sa.Column("destination", sa.String(300), nullable=False),
    sa.Column("study_uid", sa.String(64), nullable=False),
    sa.Column("sop_instance_uid", sa.String(64), nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=True),  # dropped once delivered
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", sa.DateTime, nullable=False, index=True),
    sa.Column("delivered_at", sa.DateTime, nullable=True),
    sa.Column("last_error", sa.String(300), nullable=True),
)
_metrics: dict[str, Any] = {}


def metrics() -> dict[str, Any]:
    """The listener's Prometheus series (created once per process)."""
    if not _metrics:
        import prometheus_client as prom

        _metrics["instances"] = prom.Counter(
            "pneumo_dicom_instances", "received instances by outcome: scored, refused", ["outcome"]
        )
        _metrics["results"] = prom.Counter(
            "pneumo_dicom_results",
            "results by outcome: queued, delivered, retry (a failed attempt, to be retried)",
            ["outcome"],
        )
        _metrics["pending"] = prom.Gauge(
            "pneumo_dicom_outbox_pending", "results waiting in the store for their destination"
        )
    return _metrics


def destinations(settings: DicomSettings) -> list[str]:
    """Where results go, from ``dicom.destination`` and ``dicom.stow_url``."""
    found = [f"cstore:{settings.destination}"] if settings.destination else []
    return found + ([f"stow:{settings.stow_url}"] if settings.stow_url else [])


def _send(destination: str, datasets: Sequence[Dataset], calling_ae: str) -> list[str | None]:
    """Deliver to one destination; per dataset None (taken) or why not."""
    kind, _, target = destination.partition(":")
    if kind == "cstore":
        statuses = store(datasets, Destination.parse(target), calling_ae)
        return [None if s == 0 else f"C-STORE status 0x{s:04X}" for s in statuses]
    if kind == "stow":
        from dicomweb_client.api import DICOMwebClient

        DICOMwebClient(target).store_instances(list(datasets))
        return [None] * len(datasets)
    raise ValueError(f"unknown destination {destination!r}")


@dataclass(frozen=True)
class Instance:
    """Who sent a scored instance and its UIDs (one ``dicom_instances`` row)."""

    request_id: str
    via: str
    sender: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    model_version: str


class Outbox:
    """The queue of results in the prediction store, and the thread that delivers them."""

    def __init__(
        self,
        store: PredictionStore,
        settings: DicomSettings,
        targets: Sequence[str],
        send: Callable[[str, Sequence[Dataset], str], list[str | None]] = _send,
    ) -> None:
        self.store = store
        self.settings = settings
        self.targets = list(targets)
        self._send = send
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = False

    def ensure(self) -> None:
        if not self._ready:
            self.store.ensure()
            with self.store.connect() as conn:
                metadata.create_all(conn)
            self._ready = True

    # ------------------------------------------------------------------ writing

    def put(self, instance: Instance, results: Sequence[Result]) -> int:
        """Record a scored instance and queue its results for every destination; how many."""
        self.ensure()
        now = utcnow()
        rows = [
            {"request_id": instance.request_id, "kind": r.kind, "destination": target,
             "study_uid": r.study_uid, "sop_instance_uid": r.sop_instance_uid, "payload": r.data,
             "created_at": now, "attempts": 0, "next_attempt_at": now}
            for r in results for target in self.targets
        ]  # fmt: skip
        with self.store.connect() as conn:
            conn.execute(instances.insert(), {**instance.__dict__, "received_at": now})
            if rows:
                conn.execute(outbox.insert(), rows)
        metrics()["results"].labels("queued").inc(len(rows))
        self._wake.set()
        return len(rows)

    def scored(self, sop_instance_uid: str, model_version: str) -> bool:
        """Whether this model already scored this instance (`pneumo dicom-pull` skips it)."""
        self.ensure()
        with self.store.connect() as conn:
            row = conn.execute(
                sa.select(instances.c.request_id).where(
                    instances.c.sop_instance_uid == sop_instance_uid,
                    instances.c.model_version == model_version,
                )
            ).first()
        return row is not None

    # ------------------------------------------------------------------ reading

    def pending(self) -> int:
        self.ensure()
        with self.store.connect() as conn:
            count = conn.execute(
                sa.select(sa.func.count())
                .select_from(outbox)
                .where(outbox.c.delivered_at.is_(None))
            ).scalar_one()
        metrics()["pending"].set(count)
        return int(count)

    def rows(self) -> list[dict[str, Any]]:
        """Every outbox row without its payload (tests, `pneumo dicom-pull`'s summary)."""
        self.ensure()
        columns = [c for c in outbox.c if c.name != "payload"]
        with self.store.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(*columns))]

    # ------------------------------------------------------------------ delivering

    def deliver_due(self, limit: int = 64) -> tuple[int, int]:
        """One pass over the results due now: (delivered, failed attempts)."""
        self.ensure()
        now = utcnow()
        with self.store.connect() as conn:
            due = conn.execute(
                sa.select(outbox.c.id, outbox.c.destination, outbox.c.payload, outbox.c.attempts)
                .where(outbox.c.delivered_at.is_(None), outbox.c.next_attempt_at <= now)
                .order_by(outbox.c.id)
                .limit(limit)
            ).all()
        delivered = failed = 0
        for target in sorted({row.destination for row in due}):
            batch = [row for row in due if row.destination == target]
            outcomes = self._attempt(target, batch)
            with self.store.connect() as conn:
                for row, error in zip(batch, outcomes, strict=True):
                    if error is None:
                        conn.execute(outbox.update().where(outbox.c.id == row.id).values(
                            delivered_at=utcnow(), payload=None, attempts=row.attempts + 1,
                            last_error=None))  # fmt: skip
                        delivered += 1
                    else:
                        wait = min(self.settings.retry_max_s,
                                   self.settings.retry_initial_s * 2**row.attempts)  # fmt: skip
                        conn.execute(outbox.update().where(outbox.c.id == row.id).values(
                            attempts=row.attempts + 1, last_error=error[:300],
                            next_attempt_at=utcnow() + timedelta(seconds=wait)))  # fmt: skip
                        failed += 1
                        log.warning("result %d for %s not delivered (attempt %d, next in %.0f s): "
                                    "%s", row.id, target, row.attempts + 1, wait, error)  # fmt: skip
        counters = metrics()["results"]
        counters.labels("delivered").inc(delivered)
        counters.labels("retry").inc(failed)
        if due:
            self.pending()
        return delivered, failed

    def _attempt(self, target: str, batch: Sequence[Any]) -> list[str | None]:
        try:
            datasets = [dcmread(io.BytesIO(row.payload)) for row in batch]
            return self._send(target, datasets, self.settings.ae_title)
        except Exception as exc:  # refused, unreachable, an HTTP error: a failed attempt
            return [f"{type(exc).__name__}: {exc}"] * len(batch)

    def start(self) -> Outbox:
        """Deliver in a background thread: at once when results are queued, else every second."""
        self._thread = threading.Thread(target=self._run, name="pneumo-dicom-outbox", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.deliver_due()
            except StoreUnavailableError as exc:
                log.warning("outbox: %s; retrying", exc)
            except Exception:  # the sender must outlive any one bad pass
                log.exception("outbox pass failed; retrying")
            self._wake.wait(1.0)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
