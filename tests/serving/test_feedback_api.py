"""POST /feedback and GET /live in-process (``to_asgi``): request ids, joins, 404, 422, replacing.

The real server with a burst of images, the export and a store that goes down are in
test_prediction_log.py.
"""

from __future__ import annotations

from pathlib import Path

from starlette.testclient import TestClient

from pneumo.monitor.store import PredictionStore, resolve_url
from tests.serving.serving_support import ServingLab


def _predict(client: TestClient, path: Path) -> dict:
    response = client.post(
        "/predict", content=path.read_bytes(), headers={"content-type": "image/jpeg"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert response.headers["x-request-id"] == body["request_id"]
    return body


def _store(lab: ServingLab) -> PredictionStore:
    monitor = lab.settings.monitor
    return PredictionStore(resolve_url(monitor.store_url, lab.root), monitor.store_schema)


def test_feedback_joins_replaces_and_refuses(
    asgi_client: TestClient, serving_lab: ServingLab, jpeg_paths: list[Path]
) -> None:
    answer = _predict(asgi_client, jpeg_paths[0])
    other = "NORMAL" if answer["label"] == "PNEUMONIA" else "PNEUMONIA"
    body = {"request_id": answer["request_id"], "label": answer["label"], "reviewer": "dr.a"}
    first = asgi_client.post("/feedback", json=body)
    assert first.status_code == 201, first.text
    assert first.json()["agrees_with_model"] is True and first.json()["replaced"] is False
    second = asgi_client.post("/feedback", json={**body, "label": other, "note": "on review"})
    assert second.status_code == 200, second.text
    assert second.json()["replaced"] is True and second.json()["previous_label"] == answer["label"]
    assert "replaced dr.a's earlier feedback" in second.json()["message"]
    third = asgi_client.post("/feedback", json={**body, "reviewer": "dr.b"})
    assert third.status_code == 201
    unknown = asgi_client.post("/feedback", json={**body, "request_id": "f" * 32})
    assert unknown.status_code == 404 and unknown.json()["code"] == "unknown_request"
    invalid = asgi_client.post("/feedback", json={**body, "label": "MAYBE"})
    assert invalid.status_code == 422 and invalid.json()["code"] == "invalid_label"
    missing = asgi_client.post("/feedback", json={"request_id": answer["request_id"]})
    assert 400 <= missing.status_code < 500 and "code" in missing.json()
    joined = _store(serving_lab).predictions_between()
    row = joined.set_index("request_id").loc[answer["request_id"]]
    assert row["reviews"] == 2 and row["reviewed_label"] == answer["label"]  # dr.b, the latest


def test_batch_and_explain_answers_carry_request_ids(
    asgi_client: TestClient, jpeg_paths: list[Path]
) -> None:
    files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in jpeg_paths[1:4]]
    batch = asgi_client.post("/predict_batch", files=files)
    assert batch.status_code == 200
    batch_id = batch.json()["request_id"]
    assert batch.headers["x-request-id"] == batch_id
    ids = [p["request_id"] for p in batch.json()["predictions"]]
    assert ids == [f"{batch_id}-{i}" for i in range(3)]
    png = asgi_client.post(
        "/explain", content=jpeg_paths[4].read_bytes(), headers={"content-type": "image/jpeg"}
    )
    assert png.status_code == 200 and len(png.headers["x-request-id"]) == 32
    body = {"request_id": ids[1], "label": "NORMAL", "reviewer": "dr.c"}
    assert asgi_client.post("/feedback", json=body).status_code == 201  # still queued: flushed


def test_live_figures_and_log_counters(asgi_client: TestClient, jpeg_paths: list[Path]) -> None:
    _predict(asgi_client, jpeg_paths[5])
    asgi_client.post("/feedback", json={"request_id": "x", "label": "NORMAL", "reviewer": "r"})
    live = asgi_client.get("/live").json()
    assert live["available"] is True
    today = live["days"][-1]
    assert today["requests"] >= 1 and 0 <= today["positive_rate"] <= 1
    assert live["total"]["requests"] == sum(day["requests"] for day in live["days"])
    counts = asgi_client.get("/metadata").json()["monitoring"]
    assert counts["enabled"] is True and counts["lost"] == 0 and counts["logged"] >= 1
