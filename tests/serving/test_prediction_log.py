"""The prediction log on a real `bentoml serve`, with a burst of real radiographs.

One row per answered image and none per refused one; feedback joins; the confirmed cases export
to a Kermany folder that `pneumo ingest` reads back with the reviewers' labels and the patients;
and a PostgreSQL store stopped mid-burst loses nothing once it is back.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pandas as pd
import pytest

from pneumo.config.params_file import set_param
from pneumo.monitor.store import PredictionStore, resolve_url
from tests.serving.serving_support import Server, ServingLab, serving

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _params(lab: ServingLab, folder: Path, **monitor: str) -> Path:
    """The lab's params with the prediction log in ``folder`` (relative paths land there)."""
    folder.mkdir(parents=True, exist_ok=True)
    params = folder / "params.yaml"
    params.write_text(lab.params.read_text())
    values = {"flush_interval_s": "0.3", "retry_s": "1", "keep_images": "true", **monitor}
    for key, value in values.items():
        set_param(params, f"monitor.{key}", value)
    return params


def _store(params: Path) -> PredictionStore:
    from pneumo.config import load_settings

    monitor = load_settings(params).monitor
    return PredictionStore(resolve_url(monitor.store_url, params.parent), monitor.store_schema)


def _wait_rows(store: PredictionStore, n: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = store.count()
        if count >= n:
            return count
        time.sleep(0.3)
    return store.count()


def _images(real_root: Path, per_class: int) -> list[Path]:
    return [p for label in ("NORMAL", "PNEUMONIA")
            for p in sorted((real_root / "train" / label).glob("*.jpeg"))[:per_class]]  # fmt: skip


@pytest.fixture(scope="module")
def logged(serving_lab: ServingLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    folder = tmp_path_factory.mktemp("prediction-log")
    params = _params(serving_lab, folder)
    with serving("serving.service:PneumoniaService", serving_lab, folder / "server.log",
                 params=params) as server:  # fmt: skip
        yield server, params


def _predict(client: httpx.Client, path: Path) -> httpx.Response:
    return client.post(
        "/predict", content=path.read_bytes(), headers={"content-type": "image/jpeg"}
    )


def test_one_row_per_answered_image_none_per_refused(
    logged: tuple[Server, Path], real_root: Path, jpeg_paths: list[Path]
) -> None:
    server, params = logged
    singles, batch, explained = _images(real_root, 12), _images(real_root, 4)[1:7], jpeg_paths[:3]
    corrupt = singles[0].read_bytes()[:2000]
    answered: dict[str, str] = {}
    with httpx.Client(base_url=server.url, timeout=120) as client:
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda p: _predict(client, p), singles))
        for response in responses:
            assert response.status_code == 200, response.text
            assert response.headers["x-request-id"] == response.json()["request_id"]
            answered[response.json()["request_id"]] = "predict"
        files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in batch]
        answer = client.post("/predict_batch", files=files).json()
        answered |= {p["request_id"]: "predict_batch" for p in answer["predictions"]}
        for path in explained:
            response = client.post("/explain", content=path.read_bytes(),
                                   headers={"content-type": "image/jpeg"})  # fmt: skip
            assert response.status_code == 200
            answered[response.headers["x-request-id"]] = "explain"
        refused = [
            client.post("/predict", content=corrupt, headers={"content-type": "image/jpeg"}),
            client.post("/predict", content=b"not an image", headers={"content-type": "image/png"}),
            client.post("/predict_batch", files=[*files[:2], ("images", ("bad.jpeg", corrupt))]),
            client.post("/explain?format=svg", content=singles[1].read_bytes()),
        ]
        assert all(400 <= r.status_code < 500 for r in refused), [r.text for r in refused]
        store = _store(params)
        assert _wait_rows(store, len(answered)) == len(answered)
        time.sleep(1.5)  # nothing more arrives: the refused requests left no row
        rows = store.predictions_between()
        assert len(rows) == len(answered) == len(singles) + len(batch) + len(explained)
        assert dict(zip(rows["request_id"], rows["endpoint"], strict=True)) == answered
        assert rows["pixel_mean"].between(1, 254).all() and (rows["latency_ms"] > 0).all()
        assert rows["image_kept"].all() and rows["site"].eq("default").all()
        kept = list((params.parent / "monitor" / "images").rglob("*.jpeg"))
        assert len(kept) == rows["image_sha256"].nunique()
        metrics = client.get("/metrics").text
        assert 'pneumo_prediction_log_rows_total{outcome="logged"}' in metrics
        counts = client.get("/metadata").json()["monitoring"]
        assert counts["logged"] == len(answered) and counts["lost"] == 0


def test_feedback_joins_and_export_reingests(
    logged: tuple[Server, Path], real_root: Path, tmp_path: Path
) -> None:
    server, params = logged
    paths = _images(real_root, 6)
    reviews = []
    with httpx.Client(base_url=server.url, timeout=120) as client:
        for index, path in enumerate(paths):
            request_id = _predict(client, path).json()["request_id"]
            patient = f"site-patient-{index // 2}"  # two images per patient
            body = {"request_id": request_id, "label": path.parent.name, "reviewer": "dr.a",
                    "patient_id": patient}  # fmt: skip
            assert client.post("/feedback", json=body).status_code == 201
            reviews.append((request_id, path.parent.name, patient))
    joined = _store(params).predictions_between().set_index("request_id")
    for request_id, label, _ in reviews:
        assert joined.loc[request_id, "reviewed_label"] == label
    dest = tmp_path / "confirmed"
    command = [str(BIN / "pneumo"), "--params", str(params), "feedback", "export", str(dest)]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ, timeout=120)
    assert done.returncode == 0, done.stderr
    again = subprocess.run(command, capture_output=True, text=True, env=os.environ, timeout=120)
    assert again.returncode == 1 and "--append" in again.stderr
    appended = subprocess.run([*command, "--append"], capture_output=True, text=True, timeout=120)
    assert appended.returncode == 0 and f"already there: {len(paths)}" in appended.stdout
    workspace = tmp_path / "retrain-workspace"
    workspace.mkdir()
    (workspace / "params.yaml").write_text(params.read_text())
    ingest = subprocess.run(
        [str(BIN / "pneumo"), "--params", str(workspace / "params.yaml"), "ingest", "--data", str(dest)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ingest.returncode == 0, ingest.stderr
    manifest = pd.read_parquet(workspace / "data" / "manifest.parquet")
    assert len(manifest) == len(paths) and set(manifest["source"]) == {"feedback"}
    assert manifest["patient_id"].str.fullmatch(r"fb-[0-9a-f]{12}").all()
    assert manifest["patient_id"].nunique() == len(paths) // 2
    expected = sorted(label for _, label, _ in reviews)
    assert sorted(manifest["label"]) == expected


def test_a_postgresql_store_stopped_mid_burst_loses_nothing(
    serving_lab: ServingLab, real_root: Path, tmp_path: Path
) -> None:
    from tests.e2e.servers import ServerStartError, postgres_bin, postgres_cluster

    try:
        postgres_bin()
    except ServerStartError as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    paths = _images(real_root, 10)
    with postgres_cluster("monitor") as cluster:
        params = _params(serving_lab, tmp_path / "pg", store_url=cluster.url("monitor"))
        store = _store(params)
        log = tmp_path / "server.log"
        with (
            serving("serving.service:PneumoniaService", serving_lab, log, params=params) as server,
            httpx.Client(base_url=server.url, timeout=120) as client,
        ):
            first = [_predict(client, p) for p in paths[:8]]
            assert _wait_rows(store, 8) == 8
            cluster.stop()  # the store goes down mid-burst
            with ThreadPoolExecutor(4) as pool:
                during = list(pool.map(lambda p: _predict(client, p), paths[8:]))
            assert all(r.status_code == 200 for r in first + during)
            outage = client.post("/feedback", json={"request_id": during[0].json()["request_id"],
                                                    "label": "NORMAL", "reviewer": "dr.a"})  # fmt: skip
            assert outage.status_code == 503 and outage.json()["code"] == "store_unavailable"
            deadline = time.monotonic() + 30
            while client.get("/metadata").json()["monitoring"]["buffered"] < len(during):
                assert time.monotonic() < deadline, client.get("/metadata").json()["monitoring"]
                time.sleep(0.3)
            assert "buffering predictions" in server.log.read_text()
            cluster.start()  # back, same data
            assert _wait_rows(store, len(paths), timeout=60) == len(paths)
            counts = client.get("/metadata").json()["monitoring"]
        ids = {r.json()["request_id"] for r in first + during}
        stored = store.predictions_between()
        assert set(stored["request_id"]) == ids and len(stored) == len(ids)
        assert counts["lost"] == 0 and counts["replayed"] == len(during)
        with store.engine.connect() as conn:  # the tables live in their own schema
            schema = conn.exec_driver_sql(
                "select table_schema from information_schema.tables where table_name = 'predictions'"
            ).scalar()
        assert schema == "pneumo_monitor"
