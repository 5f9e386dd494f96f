"""Real servers: `bentoml serve` of the source and of the built Bento, on free 127.0.0.1 ports.

The 48 full-size radiographs go in as JPEG (one by one, concurrently, and as one batch) and as
DICOM made here with pydicom; every probability must equal `pneumo predict` on the same pixels.
Then the malformed corpus: every request a 4xx, and /readyz healthy throughout.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from pneumo.inference.predictor import Predictor, predict_paths
from tests.serving.serving_samples import (
    dicom8,
    dicom16_inverted_rescaled,
    full_range,
    malformed_cases,
    png_bytes,
    request_kwargs,
)
from tests.serving.serving_support import Server, ServingLab, serving, start_server

pytestmark = pytest.mark.slow
TOLERANCE = 1e-5  # batch composition may change the last float bits of a convolution


@pytest.fixture(scope="module")
def server(serving_lab: ServingLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("server") / "bentoml.log"
    with serving("serving.service:PneumoniaService", serving_lab, log) as running:
        yield running


@pytest.fixture(scope="module")
def predictor(serving_lab: ServingLab) -> Predictor:
    model = serving_lab.settings.model  # the service's device, precision and runtime
    return Predictor.from_workspace(serving_lab.workspace, model.accelerator(), model.runtime)


@pytest.fixture(scope="module")
def same_pixels(jpeg_paths: list[Path], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """For each original, a PNG of the 8-bit pixels its DICOM versions carry."""
    folder = tmp_path_factory.mktemp("pngs")
    out = []
    for path in jpeg_paths:
        with Image.open(path) as img:
            pixels = full_range(np.asarray(img.convert("L")))
        out.append(folder / f"{path.stem}.png")
        out[-1].write_bytes(png_bytes(pixels))
    return out


def post(client: httpx.Client, data: bytes, content_type: str) -> float:
    response = client.post("/predict", content=data, headers={"content-type": content_type})
    assert response.status_code == 200, response.text
    return float(response.json()["probability"])


def test_served_probabilities_equal_pneumo_predict(
    server: Server, predictor: Predictor, jpeg_paths: list[Path], same_pixels: list[Path]
) -> None:
    expected_jpeg = predict_paths(jpeg_paths, predictor, workers=1)["probability"].to_numpy()
    expected_png = predict_paths(same_pixels, predictor, workers=1)["probability"].to_numpy()
    with httpx.Client(base_url=server.url, timeout=60) as client:
        with ThreadPoolExecutor(8) as pool:  # concurrent requests: the model batches them
            served_jpeg = list(
                pool.map(lambda p: post(client, p.read_bytes(), "image/jpeg"), jpeg_paths)
            )
        files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in jpeg_paths]
        batch = client.post("/predict_batch", files=files)
        assert batch.status_code == 200, batch.text
        served_batch = [p["probability"] for p in batch.json()["predictions"]]
        served_dicom8, served_dicom16 = [], []
        for png in same_pixels:
            with Image.open(png) as img:
                pixels = np.asarray(img)
            served_dicom8.append(post(client, dicom8(pixels), "application/dicom"))
            served_dicom16.append(
                post(client, dicom16_inverted_rescaled(pixels), "application/dicom")
            )
    np.testing.assert_allclose(served_jpeg, expected_jpeg, atol=TOLERANCE)
    np.testing.assert_allclose(served_batch, expected_jpeg, atol=TOLERANCE)
    np.testing.assert_allclose(served_dicom8, expected_png, atol=TOLERANCE)
    np.testing.assert_allclose(served_dicom16, expected_png, atol=TOLERANCE)


def test_malformed_corpus_gets_4xx_while_ready(
    server: Server, serving_lab: ServingLab, jpeg_paths: list[Path]
) -> None:
    jpeg = jpeg_paths[0].read_bytes()
    serve = serving_lab.settings.serve
    cases = malformed_cases(jpeg, serve.max_request_bytes, serve.max_batch_files)
    assert len(cases) >= 30
    wrong = []
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for case in cases:
            try:
                response = client.request(case.method, case.path, **request_kwargs(case))
                status, body = response.status_code, response.text
            except httpx.TransportError as exc:  # the server may close an oversized upload
                status, body = -1, repr(exc)
            if status != case.status or "Traceback" in body:
                wrong.append((case.name, status, body[:160]))
            assert client.get("/readyz").status_code == 200, f"not ready after {case.name}"
        assert client.get("/livez").status_code == 200
        post(client, jpeg, "image/jpeg")  # still serving
    assert server.process.poll() is None
    assert not wrong, wrong


def test_built_bento_serves_the_packaged_model(
    serving_lab: ServingLab,
    predictor: Predictor,
    jpeg_paths: list[Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    import bentoml

    from pneumo.registry.bento import package

    packaged = package(serving_lab.settings, serving_lab.workspace, from_workspace=True)
    assert packaged.model_tag == serving_lab.model_tag
    bento = bentoml.get(packaged.bento_tag)
    assert bento.tag.version == serving_lab.model_tag.split(":")[1]
    assert bento.info.labels["model"] == serving_lab.model_tag
    assert [(str(m.tag), m.alias) for m in bento.info.models] == [
        (serving_lab.model_tag, "champion")
    ]
    serve = serving_lab.settings.serve  # recorded for BentoML's decoration-time settings
    assert bento.info.args["max_batch_size"] == serve.max_batch_size
    assert bento.info.args["adaptive_batching"] is serve.adaptive_batching
    python_env = Path(bento.path) / "env" / "python"
    assert not (python_env / "requirements.lock.txt").exists()  # nothing was locked online
    assert "pydicom" in (python_env / "requirements.txt").read_text()

    log = tmp_path_factory.mktemp("bento") / "bentoml.log"
    running = start_server(packaged.bento_tag, serving_lab, log)
    try:
        with httpx.Client(base_url=running.url, timeout=60) as client:
            metadata = client.get("/metadata").json()
            assert metadata["model"]["version"] == bento.tag.version
            chosen = jpeg_paths[:4]
            served = [post(client, p.read_bytes(), "image/jpeg") for p in chosen]
            bad = client.post("/predict", content=b"nope", headers={"content-type": "image/png"})
            assert bad.status_code == 415
    finally:
        running.stop()
    expected = predict_paths(chosen, predictor, workers=1)["probability"].to_numpy()
    np.testing.assert_allclose(served, expected, atol=TOLERANCE)
