"""The monitor's parts on real radiographs: statistics, the outage buffer, the verdicts."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from pneumo.config import Settings
from pneumo.data.preprocess import decode_radiograph
from pneumo.monitor.drift import assess, drift_verdict
from pneumo.monitor.reference import load_reference
from pneumo.monitor.stats import PERCENTILES, input_statistics
from pneumo.monitor.store import PredictionStore, resolve_url, utcnow
from pneumo.monitor.writer import WRITER_NICENESS, LogLimits, PredictionLog, yield_to_requests
from pneumo.workspace import Workspace
from tests.monitor.monitor_support import (
    MIN_PREDICTIONS,
    REFERENCE_PER_CLASS,
    REPLAY_PER_CLASS,
    label_of,
    log_images,
    model_info,
    sample_paths,
    shifted_bytes,
)


def test_input_statistics_equal_numpy_on_a_real_radiograph(real_root: Path) -> None:
    path = next((real_root / "train" / "NORMAL").glob("*.jpeg"))
    pixels = decode_radiograph(path, 128)
    stats = input_statistics(pixels)
    assert stats["pixel_mean"] == pytest.approx(pixels.mean())
    assert stats["pixel_std"] == pytest.approx(pixels.std())
    for q in PERCENTILES:
        assert stats[f"pixel_p{q:02d}"] == np.percentile(pixels, q, method="inverted_cdf")
    assert stats["saturated_fraction"] == pytest.approx(np.isin(pixels, (0, 255)).mean())


def _row(request_id: str) -> dict:
    from pneumo.monitor.stats import STAT_COLUMNS

    return {
        "request_id": request_id, "batch_id": None, "endpoint": "predict",
        "received_at": utcnow(), "site": "test", "model_name": "m", "model_version": "v",
        "mlflow_version": None, "model_sha256": None, "probability": 0.3, "label": "NORMAL",
        "threshold": 0.5, "refer_to_radiologist": False, "out_of_distribution": False,
        "ood_score": None, "ood_reason": None, "input_format": "PNG", "width": 80,
        "height": 72, "latency_ms": 1.0, **dict.fromkeys(STAT_COLUMNS, 0.0),
    }  # fmt: skip


def test_a_store_that_is_down_gets_buffered_rows_once_it_is_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The store's folder is a file at first (SQLite cannot open it): rows go to the buffer
    with one clear log line; once the folder exists they are replayed, none lost or doubled."""
    blocker = tmp_path / "store"
    blocker.write_text("not a folder")
    store = PredictionStore(resolve_url("sqlite:///store/predictions.db", tmp_path))
    limits = LogLimits(flush_interval_s=0.05, flush_rows=4, queue_rows=100, buffer_rows=7,
                       retry_s=0.1)  # fmt: skip
    pixels = np.full((64, 64), 100, np.uint8)
    with caplog.at_level(logging.WARNING, logger="pneumo.monitor"):
        log = PredictionLog(store, tmp_path / "buffer.jsonl", limits).start()
        for i in range(9):
            log.submit(_row(f"r{i}"), pixels, b"image %d" % i)
        assert log.flush(10)
    counts = log.counts
    assert counts["store_up"] is False
    assert (counts["buffered"], counts["lost"], counts["logged"]) == (7, 2, 0)
    assert sum("unavailable" in r.message and "buffering" in r.message for r in caplog.records) == 1
    blocker.unlink()
    time.sleep(0.2)  # past retry_s
    for i in range(9, 12):
        log.submit(_row(f"r{i}"), pixels, b"image %d" % i)
    log.flush(10)
    log.close()
    assert log.counts["replayed"] == 7 and log.counts["logged"] == 3
    assert store.count() == 10 and not (tmp_path / "buffer.jsonl").exists()


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice")


def _niceness(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


@linux_only
def test_the_writer_thread_yields_to_requests_and_still_writes(tmp_path: Path) -> None:
    """The log's thread runs at a lower priority than the requests' threads (this one keeps
    its own), and every submitted row is still written."""
    store = PredictionStore(resolve_url("sqlite:///predictions.db", tmp_path))
    log = PredictionLog(store, tmp_path / "buffer.jsonl", LogLimits(flush_interval_s=0.05))
    mine = _niceness(threading.get_native_id())
    log.start()
    try:
        pixels = np.full((64, 64), 100, np.uint8)
        for i in range(5):
            log.submit(_row(f"n{i}"), pixels, b"image %d" % i)
        assert log.flush(10)
        assert _niceness(log._thread.native_id) == max(mine, WRITER_NICENESS)
        assert _niceness(threading.get_native_id()) == mine
    finally:
        log.close()
    assert store.count() == 5 and log.counts["logged"] == 5


@linux_only
def test_yielding_never_raises_a_priority_nor_stops_on_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A thread already below the writer's priority stays there; a system that refuses the
    change (a sandbox without setpriority) leaves the thread as it was, without an error."""
    seen: dict[str, int] = {}

    def run(first: int) -> None:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, first)
        yield_to_requests()
        seen[f"from {first}"] = _niceness(tid)

    for first in (0, WRITER_NICENESS + 5):
        thread = threading.Thread(target=run, args=(first,))
        thread.start()
        thread.join()
    assert seen == {"from 0": WRITER_NICENESS, f"from {WRITER_NICENESS + 5}": WRITER_NICENESS + 5}

    def refuse(*args: object) -> None:
        raise PermissionError("not allowed here")

    monkeypatch.setattr(os, "setpriority", refuse)
    before = _niceness(threading.get_native_id())
    yield_to_requests()  # no exception
    assert _niceness(threading.get_native_id()) == before


def _window(settings: Settings, workspace: Workspace, images: list[bytes]) -> tuple:
    start = utcnow()
    log_images(settings, workspace.root, images, model_info(workspace))
    end = utcnow() + timedelta(seconds=1)
    store = PredictionStore(resolve_url(settings.monitor.store_url, workspace.root))
    return store.predictions_between(start, end), start, end


def test_verdict_ok_on_a_replay_alert_on_darkened_compressed_images(
    monitor_lab: tuple[Settings, Workspace], real_root: Path
) -> None:
    settings, workspace = monitor_lab
    reference, about = load_reference(workspace)
    assert len(reference) == 2 * REFERENCE_PER_CLASS
    paths = sample_paths(real_root, REPLAY_PER_CLASS, skip=REFERENCE_PER_CLASS)
    window, start, end = _window(settings, workspace, [p.read_bytes() for p in paths])
    assert len(window) == len(paths)
    ok = assess(window, reference, about, settings, start, end).summary
    assert ok["status"] == "ok", ok["reasons"]
    assert ok["reference_model_matches"] and ok["input_drift_share"] == 0
    shifted, start, end = _window(settings, workspace, [shifted_bytes(p) for p in paths])
    alert = assess(shifted, reference, about, settings, start, end)
    assert alert.summary["status"] == "alert", alert.summary["reasons"]
    assert alert.summary["input_drift"]["pixel_mean"]["drifted"]
    assert any("input drift" in r for r in alert.summary["reasons"])
    html = alert.snapshot.get_html_str(as_iframe=False)
    assert "pixel_mean" in html


def test_few_predictions_say_not_enough_data(monitor_lab: tuple[Settings, Workspace],
                                             real_root: Path) -> None:  # fmt: skip
    settings, workspace = monitor_lab
    reference, about = load_reference(workspace)
    paths = sample_paths(real_root, 5, skip=REFERENCE_PER_CLASS + REPLAY_PER_CLASS)
    window, start, end = _window(settings, workspace, [p.read_bytes() for p in paths * 3])
    summary = assess(window, reference, about, settings, start, end).summary
    assert summary["status"] == "insufficient"
    assert summary["reasons"] == [f"not enough data (10 < {MIN_PREDICTIONS})"]  # repeats count once
    assert summary["requests"] == 30


def test_live_performance_from_feedback(monitor_lab: tuple[Settings, Workspace],
                                        real_root: Path) -> None:  # fmt: skip
    settings, workspace = monitor_lab
    reference, about = load_reference(workspace)
    paths = sample_paths(real_root, 40, skip=REFERENCE_PER_CLASS + REPLAY_PER_CLASS + 5)
    start = utcnow()
    ids = log_images(
        settings, workspace.root, [p.read_bytes() for p in paths], model_info(workspace)
    )
    store = PredictionStore(resolve_url(settings.monitor.store_url, workspace.root))
    for request_id, path in zip(ids, paths, strict=True):
        store.put_feedback(request_id, "dr.test", label_of(path), "", None)
    window = store.predictions_between(start, utcnow() + timedelta(seconds=1))
    live = assess(window, reference, about, settings, start, utcnow()).summary["live"]
    assert live["n"] == len(paths)
    truth = window["reviewed_label"] == "PNEUMONIA"
    called = window["label"] == "PNEUMONIA"
    assert live["metrics"]["sensitivity"] == pytest.approx(called[truth].mean())
    assert live["metrics"]["specificity"] == pytest.approx((~called[~truth]).mean())
    low, high = live["intervals"]["accuracy"]
    assert low <= live["metrics"]["accuracy"] <= high


def test_the_window_prevalence_is_estimated_and_a_move_proposes_adapt(
    monitor_lab: tuple[Settings, Workspace], real_root: Path
) -> None:
    """Unlabelled answers of a window with 4 pneumonias to 1 normal: the estimate's interval (EM,
    as `pneumo adapt` makes it) covers the truth; the verdict proposes `pneumo adapt` only when
    the interval leaves the reference's prevalence (this lab's small model is too vague to)."""
    settings, workspace = monitor_lab
    reference, about = load_reference(workspace)
    paths = sample_paths(real_root, 80, skip=REFERENCE_PER_CLASS + REPLAY_PER_CLASS + 20, seed=3)
    normal = [p for p in paths if label_of(p) == "NORMAL"][:20]
    pneumonia = [p for p in paths if label_of(p) == "PNEUMONIA"][:80]
    window, start, end = _window(settings, workspace, [p.read_bytes() for p in normal + pneumonia])
    summary = assess(window, reference, about, settings, start, end).summary
    prevalence = summary["prevalence"]
    assert prevalence["reference"] == pytest.approx((reference["true_label"] == "PNEUMONIA").mean())
    low, high = prevalence["interval"]
    assert low <= 0.8 <= high, prevalence
    proposes = any("pneumo adapt" in reason for reason in summary["reasons"])
    assert proposes == (low - prevalence["reference"] > settings.monitor.prevalence_warn)
    # The same verdict on a window whose interval lies far from the reference: warn, and adapt.
    far = {**summary, "prevalence": {**prevalence, "estimate": 0.85, "interval": [0.78, 0.9]}}
    status, reasons = drift_verdict(far, settings)
    assert status in ("warn", "alert")
    assert any("prevalence 85.0% [78.0%-90.0%]" in r and "pneumo adapt" in r for r in reasons)
