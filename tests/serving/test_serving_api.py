"""The service's HTTP contract, in-process through BentoML's ``to_asgi()`` app."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from pneumo.inference import PROBABILITY_PRECISION
from pneumo.inference.predictor import Predictor, predict_paths
from tests.serving.serving_samples import (
    Case,
    dicom8,
    full_range,
    malformed_cases,
    png_bytes,
    request_kwargs,
)
from tests.serving.serving_support import MARGIN, THRESHOLD, ServingLab


@pytest.fixture(scope="module")
def client(asgi_client: TestClient) -> TestClient:
    return asgi_client


@pytest.fixture(scope="module")
def predictor(serving_lab: ServingLab) -> Predictor:
    model = serving_lab.settings.model  # the service's device, precision and runtime
    return Predictor.from_workspace(serving_lab.workspace, model.accelerator(), model.runtime)


@pytest.fixture(scope="module")
def jpeg_path(jpeg_paths: list[Path]) -> Path:
    return jpeg_paths[0]


def expected_probability(predictor: Predictor, path: Path) -> float:
    return float(predict_paths([path], predictor, workers=1)["probability"].iloc[0])


def test_probes_and_metadata(client: TestClient, serving_lab: ServingLab) -> None:
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200
    body = client.get("/metadata").json()
    # The prediction store's kind, never its URL (a path, a host, maybe a user).
    assert "://" not in json.dumps(body)
    assert body["monitoring"].get("store", "sqlite") in ("sqlite", "postgresql")
    assert body["model"]["name"] == "pneumo-cnn"
    assert body["model"]["version"] == serving_lab.model_tag.split(":")[1]
    assert body["model"]["source"] == "workspace"
    assert body["threshold"] == THRESHOLD
    assert body["image_size"] == 64
    # What computes the network here: the lab's params (model.runtime auto) on this CPU.
    assert body["network"]["runtime"] == "openvino"
    assert body["network"]["precision"] in ("fp32", "bf16")
    assert body["network"]["description"].startswith("openvino ")
    assert body["metrics"]["test"]["roc_auc"] == 0.5  # metrics.json as evaluated
    low, high = body["referral_band"]
    margin = MARGIN
    assert low == pytest.approx(THRESHOLD - margin) and high == pytest.approx(THRESHOLD + margin)


def test_predict_raw_and_multipart_match_pneumo_predict(
    client: TestClient, predictor: Predictor, jpeg_path: Path, serving_lab: ServingLab
) -> None:
    data = jpeg_path.read_bytes()
    expected = expected_probability(predictor, jpeg_path)
    raw = client.post("/predict", content=data, headers={"content-type": "image/jpeg"})
    form = client.post("/predict", files={"image": (jpeg_path.name, data, "image/jpeg")})
    for response in (raw, form):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["probability"] == pytest.approx(expected, abs=PROBABILITY_PRECISION)
        assert body["label"] == predictor.label(body["probability"])
        assert body["threshold"] == THRESHOLD
        margin = MARGIN
        assert body["refer_to_radiologist"] is (abs(body["probability"] - THRESHOLD) < margin)
        assert body["input"]["format"] == "JPEG"
        assert body["model"]["name"] == "pneumo-cnn"


def test_dicom_is_predicted_like_the_same_pixels_as_png(
    client: TestClient, predictor: Predictor, jpeg_path: Path, tmp_path: Path
) -> None:
    with Image.open(jpeg_path) as img:
        pixels = full_range(np.asarray(img.convert("L")))
    png = tmp_path / "same.png"
    png.write_bytes(png_bytes(pixels))
    response = client.post(
        "/predict", content=dicom8(pixels), headers={"content-type": "application/dicom"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["input"]["format"] == "DICOM"
    assert response.json()["probability"] == pytest.approx(
        expected_probability(predictor, png), abs=PROBABILITY_PRECISION
    )


def test_predict_batch_keeps_order(
    client: TestClient, predictor: Predictor, jpeg_paths: list[Path]
) -> None:
    chosen = jpeg_paths[:5]
    files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in chosen]
    response = client.post("/predict_batch", files=files)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    expected = predict_paths(chosen, predictor, workers=1)["probability"].tolist()
    assert [p["filename"] for p in predictions] == [p.name for p in chosen]
    assert [p["probability"] for p in predictions] == pytest.approx(
        expected, abs=PROBABILITY_PRECISION
    )


def test_explain_png_and_json(client: TestClient, jpeg_path: Path) -> None:
    data = jpeg_path.read_bytes()
    headers = {"content-type": "image/jpeg"}
    png = client.post("/explain", content=data, headers=headers)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(png.content)) as overlay:
        assert overlay.size == (64, 64) and overlay.mode == "RGB"
    assert 0.0 <= float(png.headers["x-pneumo-probability"]) <= 1.0
    raw = client.post("/explain?format=json", content=data, headers=headers)
    assert raw.status_code == 200
    heatmap = np.asarray(raw.json()["heatmap"])
    assert heatmap.shape == (64, 64) and heatmap.min() >= 0.0 and heatmap.max() <= 1.0


def test_filenames_are_echoed_without_folders(client: TestClient, jpeg_path: Path) -> None:
    files = [("images", ("../../etc/" + jpeg_path.name, jpeg_path.read_bytes(), "image/jpeg"))]
    response = client.post("/predict_batch", files=files)
    assert response.json()["predictions"][0]["filename"] == jpeg_path.name


def _cases(jpeg: bytes, lab: ServingLab) -> list[Case]:
    serve = lab.settings.serve
    return malformed_cases(jpeg, serve.max_request_bytes, serve.max_batch_files)


def test_malformed_inputs_get_json_4xx_and_the_service_keeps_serving(
    client: TestClient, serving_lab: ServingLab, jpeg_path: Path
) -> None:
    data = jpeg_path.read_bytes()
    cases = _cases(data, serving_lab)
    assert len(cases) >= 30
    wrong = []
    for case in cases:
        response = client.request(case.method, case.path, **request_kwargs(case))
        body = response.json()
        text = json.dumps(body)
        leaks = any(marker in text for marker in ("Traceback", "/work", "/tmp", str(Path.home())))
        if response.status_code != case.status or "error" not in body or leaks:
            wrong.append((case.name, response.status_code, text[:200]))
    assert not wrong, wrong
    assert client.get("/readyz").status_code == 200
    after = client.post("/predict", content=data, headers={"content-type": "image/jpeg"})
    assert after.status_code == 200
