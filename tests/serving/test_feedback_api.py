"""POST /feedback and GET /live in-process (``to_asgi``): request ids, joins, 404, 422, replacing.

The real server with a burst of images, the export and a store that goes down are in
test_prediction_log.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
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


def test_malformed_feedback_gets_the_service_error_shape_and_no_traceback(
    asgi_client: TestClient, jpeg_paths: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Every refusal in {"error", "code"}, one WARNING line each, nothing stored, no 500."""
    answer = _predict(asgi_client, jpeg_paths[6])
    good = {"request_id": answer["request_id"], "label": "NORMAL", "reviewer": "dr.e"}
    as_json = {"content-type": "application/json"}
    cases = [
        # (what, request kwargs, status, code)
        ("label with a trailing space", {"json": {**good, "label": "PNEUMONIA "}}, 422,
         "invalid_label"),
        ("label with a newline", {"json": {**good, "label": "NORMAL\n"}}, 422, "invalid_label"),
        ("a NUL reviewer", {"json": {**good, "reviewer": "\x00"}}, 422, "invalid_reviewer"),
        ("a NUL patient id", {"json": {**good, "patient_id": "\x00"}}, 422, "invalid_patient_id"),
        ("an unknown key", {"json": {**good, "x" * 100: "y" * 1000}}, 422, "unknown_field"),
        ("a number as reviewer", {"json": {**good, "reviewer": 7}}, 422, "invalid_reviewer"),
        ("a list body", {"json": [good]}, 422, "invalid_feedback"),
        ("not JSON", {"content": b"{label: NORMAL", "headers": as_json}, 400, "invalid_json"),
        ("JSON as text/plain", {"content": json.dumps(good), "headers":
                                {"content-type": "text/plain"}}, 415, "unsupported_media_type"),
        ("JSON as image/jpeg", {"content": json.dumps(good), "headers":
                                {"content-type": "image/jpeg"}}, 415, "unsupported_media_type"),
        ("no content type", {"content": json.dumps(good).encode(), "headers": {}}, 415,
         "unsupported_media_type"),
        ("multipart without a boundary", {"content": json.dumps(good), "headers":
                                          {"content-type": "multipart/form-data"}}, 415,
         "unsupported_media_type"),
        ("a 25 MB body", {"content": b"{" + b" " * 25_000_000 + b"}", "headers": as_json}, 413,
         "body_too_large"),
    ]  # fmt: skip
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        for what, kwargs, status, code in cases:
            response = asgi_client.post("/feedback", **kwargs)
            assert response.status_code == status, (what, response.text)
            body = response.json()
            assert body["code"] == code and body["error"], what
    tracebacks = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not tracebacks, [r.getMessage() for r in tracebacks]
    assert sum("/feedback refused" in r.getMessage() for r in caplog.records) == len(cases)
    # Nothing of the above was stored; the well-formed one still is.
    assert asgi_client.post("/feedback", json=good).status_code == 201
