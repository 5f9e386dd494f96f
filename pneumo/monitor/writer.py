"""The service's prediction log: writes never block or fail a prediction.

A request only puts its row on a bounded in-memory queue (:meth:`PredictionLog.submit`). A
background thread completes the rows (input statistics, the upload's sha256, the kept image)
and writes them to the store in batches every ``monitor.flush_interval_s``, at a lower CPU
priority than the requests' threads (:func:`yield_to_requests`). If the store is
down, the rows go to a bounded local file (``monitor.buffer_file``, JSON lines) and are
replayed, idempotently, once the store answers again. A row is lost only when the queue or the
buffer file is full; losses are counted (:attr:`PredictionLog.counts`), never raised.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.monitor.images import ImageKeeper
from pneumo.monitor.stats import input_statistics
from pneumo.monitor.store import PredictionStore, StoreUnavailableError, redacted

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 3600.0
COUNTERS = ("logged", "buffered", "replayed", "lost")
# The writer's scheduling niceness (Linux): requests' threads come first. At 5 its scheduler
# weight is a third of a request thread's, so it still advances under full load, and it has all
# idle time; at 0 its bursts (~60 ms of CPU per 256 rows: hashing, statistics) competed with
# the answers.
WRITER_NICENESS = 5


@dataclass
class Pending:
    """A row as the request left it: the pixels and bytes it is completed from in the thread."""

    row: dict[str, Any]
    pixels: np.ndarray
    data: bytes


@dataclass
class LogLimits:
    """The ``monitor.*`` settings the writer follows."""

    flush_interval_s: float = 2.0
    flush_rows: int = 256
    queue_rows: int = 10_000
    buffer_rows: int = 100_000
    retry_s: float = 10.0


@dataclass
class _State:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    submitted: int = 0
    done: int = 0
    store_up: bool | None = None  # None: not tried yet
    retry_at: float = 0.0
    buffered_rows: int = 0
    pruned_at: float = 0.0


class PredictionLog:
    """Queue -> background thread -> store (or the buffer file while the store is down)."""

    def __init__(
        self,
        store: PredictionStore,
        buffer_file: Path,
        limits: LogLimits,
        keeper: ImageKeeper | None = None,
        on_count: Callable[[str, int], None] | None = None,
    ) -> None:
        self.store, self.buffer_file, self.limits, self.keeper = store, buffer_file, limits, keeper
        self.on_count = on_count or (lambda name, n: None)
        self._queue: queue.Queue[Pending] = queue.Queue(maxsize=limits.queue_rows)
        self._state = _State(buffered_rows=_count_lines(buffer_file))
        self._done = threading.Condition()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)

    # ------------------------------------------------------------------ the request side

    def start(self) -> PredictionLog:
        self._thread.start()
        return self

    def submit(self, row: dict[str, Any], pixels: np.ndarray, data: bytes) -> None:
        """Queue one row; never blocks, never raises (a full queue loses the row, counted)."""
        with self._done:
            self._state.submitted += 1
        try:
            self._queue.put_nowait(Pending(row, pixels, data))
        except queue.Full:
            self._finish("lost", 1)
            return
        if self._queue.qsize() >= self.limits.flush_rows:
            self._wake.set()

    def flush(self, timeout: float = 10.0) -> bool:
        """Write what was submitted so far (to the store or the buffer); False on timeout."""
        with self._done:
            target = self._state.submitted
        self._wake.set()
        deadline = time.monotonic() + timeout
        with self._done:
            while self._state.done < target:
                left = deadline - time.monotonic()
                if left <= 0 or not self._done.wait(left):
                    return self._state.done >= target
        return True

    @property
    def counts(self) -> dict[str, Any]:
        """Rows logged, buffered (while the store was down), replayed, lost; rows waiting."""
        state = self._state
        return {
            **state.counts,
            "queued": self._queue.qsize(),
            "in_buffer_file": state.buffered_rows,
            "store_up": state.store_up,
            # The backend kind only: a URL names a path, a host, maybe a user (published by
            # /metadata); operators find the full one in params.yaml (monitor.store_url).
            "store": self.store.url.split(":", 1)[0].split("+", 1)[0],
        }

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the thread."""
        self.flush(timeout)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    # ------------------------------------------------------------------ the thread

    def _finish(self, counter: str, n: int) -> None:
        with self._done:
            self._state.counts[counter] += n
            if counter != "replayed":
                self._state.done += n
            self._done.notify_all()
        self.on_count(counter, n)

    def _run(self) -> None:
        yield_to_requests()
        self._try_store()
        while not self._stop.is_set():
            self._wake.wait(self.limits.flush_interval_s)
            self._wake.clear()
            try:
                self._cycle()
            except Exception:  # noqa: BLE001 - the log must outlive any bug of its own
                log.exception("prediction log: unexpected error; rows of this cycle may be lost")
        self._cycle()

    def _cycle(self) -> None:
        while True:
            batch = self._take(self.limits.flush_rows)
            if not batch:
                break
            self._write([self._complete(p) for p in batch])
        if self._state.buffered_rows and self._store_usable():
            self._replay()
        if self.keeper is not None and time.monotonic() - self._state.pruned_at > PRUNE_EVERY_S:
            self._state.pruned_at = time.monotonic()
            self.keeper.prune()

    def _take(self, n: int) -> list[Pending]:
        batch: list[Pending] = []
        while len(batch) < n:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _complete(self, pending: Pending) -> dict[str, Any]:
        """The row with what is too slow for the request path: statistics, hash, kept image."""
        sha256 = hashlib.sha256(pending.data).hexdigest()
        row = {**pending.row, **input_statistics(pending.pixels), "image_sha256": sha256}
        row["image_kept"] = False
        if self.keeper is not None:
            try:
                self.keeper.keep(pending.data, sha256, row["input_format"])
                row["image_kept"] = True
            except OSError as exc:
                log.warning("cannot keep image %s: %s", sha256[:12], exc)
        return row

    def _store_usable(self) -> bool:
        if self._state.store_up or time.monotonic() >= self._state.retry_at:
            return self._try_store()
        return False

    def _try_store(self) -> bool:
        try:
            self.store.ensure()
        except StoreUnavailableError as exc:
            self._store_down(exc)
            return False
        if self._state.store_up is False:
            log.warning("prediction store %s is back", redacted(self.store.url))
        self._state.store_up = True
        return True

    def _store_down(self, exc: Exception) -> None:
        if self._state.store_up is not False:  # one line per outage, not one per batch
            log.warning(
                "%s; buffering predictions to %s (up to %d rows) and retrying every %g s",
                exc,
                self.buffer_file,
                self.limits.buffer_rows,
                self.limits.retry_s,
            )
        self._state.store_up = False
        self._state.retry_at = time.monotonic() + self.limits.retry_s

    def _write(self, rows: list[dict[str, Any]]) -> None:
        # A full buffer would lose the rows: try the store now rather than at the next retry.
        full = self._state.buffered_rows + len(rows) > self.limits.buffer_rows
        if self._store_usable() or (full and self._try_store()):
            try:
                self.store.insert_predictions(rows)
                self._finish("logged", len(rows))
                return
            except StoreUnavailableError as exc:
                self._store_down(exc)
        self._spill(rows)

    def _spill(self, rows: list[dict[str, Any]]) -> None:
        room = max(0, self.limits.buffer_rows - self._state.buffered_rows)
        kept, lost = rows[:room], len(rows) - min(room, len(rows))
        if kept:
            try:
                self.buffer_file.parent.mkdir(parents=True, exist_ok=True)
                with self.buffer_file.open("a") as handle:
                    handle.writelines(json.dumps(r, default=_json_value) + "\n" for r in kept)
                self._state.buffered_rows += len(kept)
                self._finish("buffered", len(kept))
            except OSError as exc:
                log.error("cannot write the prediction buffer %s: %s", self.buffer_file, exc)
                lost += len(kept)
        if lost:
            log.error("prediction log full: %d rows lost (raise monitor.buffer_rows)", lost)
            self._finish("lost", lost)

    def _replay(self) -> None:
        """Insert the buffered rows; the file is removed once all are in (inserts are
        idempotent, so a replay cut short is simply repeated)."""
        lines = self.buffer_file.read_text().splitlines()
        rows = [_from_json(json.loads(line)) for line in lines if line.strip()]
        try:
            for start in range(0, len(rows), self.limits.flush_rows):
                self.store.insert_predictions(rows[start : start + self.limits.flush_rows])
        except StoreUnavailableError as exc:
            self._store_down(exc)
            return
        self.buffer_file.unlink(missing_ok=True)
        self._state.buffered_rows = 0
        log.warning("replayed %d buffered predictions into the store", len(rows))
        self._finish("replayed", len(rows))


def yield_to_requests(niceness: int = WRITER_NICENESS) -> None:
    """Lower the calling thread's CPU priority (Linux: a thread has its own nice value), so that
    the log's work runs in the time the requests leave. Elsewhere, or where the system refuses,
    the thread keeps its priority: the log is never stopped for it."""
    if not sys.platform.startswith("linux"):
        return  # setpriority would name a process there, not this thread
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), niceness))
    except OSError as exc:
        log.debug("prediction log keeps its priority: %s", exc)


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _from_json(row: dict[str, Any]) -> dict[str, Any]:
    row["received_at"] = datetime.fromisoformat(row["received_at"])
    return row


def _count_lines(path: Path) -> int:
    """Rows left in a buffer file by an earlier run of the service (replayed first)."""
    if not path.is_file():
        return 0
    with path.open() as handle:
        return sum(1 for line in handle if line.strip())
