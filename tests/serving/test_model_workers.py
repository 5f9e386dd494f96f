"""`serve.workers: 2`: the model runs in two PneumoniaModel worker processes behind BentoML's
adaptive batching, instead of inside the front service; answers stay those of `pneumo predict`."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from pneumo.inference.predictor import Predictor, predict_paths
from serving import timing
from tests.serving.serving_support import Server, ServingLab, start_source_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(serving_lab: ServingLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_source_server(
        serving_lab, tmp_path_factory.mktemp("workers"), **{"serve.workers": "2"}
    )
    try:
        yield running
    finally:
        running.stop()


def test_model_workers_answer_like_pneumo_predict(
    server: Server, serving_lab: ServingLab, jpeg_paths: list[Path]
) -> None:
    model = serving_lab.settings.model
    predictor = Predictor.from_workspace(serving_lab.workspace, model.accelerator(), model.runtime)
    expected = predict_paths(jpeg_paths, predictor, workers=1)["probability"].to_numpy()

    def post(path: Path) -> httpx.Response:
        headers = {"content-type": "image/jpeg"}
        return client.post("/predict", content=path.read_bytes(), headers=headers)

    with httpx.Client(base_url=server.url, timeout=60) as client:
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(post, jpeg_paths))
        network = client.get("/metadata").json()["network"]  # asked of a model worker
        explained = client.post(
            "/explain?format=json",
            content=jpeg_paths[0].read_bytes(),
            headers={"content-type": "image/jpeg"},
        )
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses][:3]
    served = [r.json()["probability"] for r in responses]
    np.testing.assert_allclose(served, expected, atol=1e-5)
    phases = [timing.parse(r.headers["server-timing"]) for r in responses]
    assert all(p["model"] > 0 and p["hop"] > 0 for p in phases)  # an HTTP call to a worker
    assert network["runtime"] == "openvino" and "unavailable" not in network, network
    assert explained.status_code == 200, explained.text
    assert np.asarray(explained.json()["heatmap"]).shape == tuple(explained.json()["heatmap_shape"])
    log = server.log.read_text(errors="replace")
    assert "pneumonia-model:2" in log  # the second model worker answered its readiness too
