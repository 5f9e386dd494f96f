"""Python clients against a real `bentoml serve`: BentoML's own ``SyncHTTPClient`` (it reads the
typed endpoints from /schema.json) and ``pneumo.client``, on real radiographs.

Both must get exactly what a plain HTTP POST gets, and refusals must arrive as errors that carry
the service's code, not as a 500 or a half-parsed answer.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import bentoml
import httpx
import pytest
from bentoml.exceptions import BentoMLException
from PIL import Image

from pneumo.client import PneumoAPIError, PneumoClient, ServiceUnreachableError
from pneumo.inference import PROBABILITY_PRECISION as PRECISION
from tests.serving.serving_support import (
    IMAGE_SIZE,
    REPO,
    THRESHOLD,
    Server,
    ServingLab,
    free_port,
    launch,
    serving,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(serving_lab: ServingLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("clients") / "bentoml.log"
    with serving("serving.service:PneumoniaService", serving_lab, log) as running:
        yield running


def plain_predict(server: Server, path: Path) -> dict:
    response = httpx.post(
        f"{server.url}/predict",
        content=path.read_bytes(),
        headers={"content-type": "image/jpeg"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_bentoml_client_calls_the_typed_endpoints(
    server: Server, jpeg_paths: list[Path], tmp_path: Path
) -> None:
    path = jpeg_paths[7]
    expected = plain_predict(server, path)
    with bentoml.SyncHTTPClient(server.url, timeout=60) as client:
        answer = client.predict(image=path)
        assert answer["probability"] == pytest.approx(expected["probability"], abs=PRECISION)
        assert answer["label"] == expected["label"]
        assert answer["refer_to_radiologist"] == expected["refer_to_radiologist"]
        assert answer["threshold"] == THRESHOLD
        assert answer["model"]["version"] == expected["model"]["version"]

        batch = client.predict_batch(images=[jpeg_paths[7], jpeg_paths[8]])
        assert [p["index"] for p in batch["predictions"]] == [0, 1]
        assert batch["predictions"][0]["probability"] == pytest.approx(
            expected["probability"], abs=PRECISION
        )

        overlay = client.explain(image=path)
        with Image.open(io.BytesIO(overlay)) as image:
            assert image.size == (IMAGE_SIZE, IMAGE_SIZE)

        notes = tmp_path / "notes.jpeg"
        notes.write_bytes(b"not an image at all" * 10)
        with pytest.raises(BentoMLException) as refused:
            client.predict(image=notes)
        assert refused.value.error_code == 415
        assert json.loads(str(refused.value))["code"] == "unsupported_format"


def test_pneumo_client_predicts_explains_and_reports_errors(
    server: Server, jpeg_paths: list[Path]
) -> None:
    path = jpeg_paths[11]
    expected = plain_predict(server, path)
    with PneumoClient(server.url) as client:
        again = client.predict(path)
        request_id = again.pop("request_id")
        assert request_id != expected["request_id"]  # each answer is logged on its own
        assert again == {k: v for k, v in expected.items() if k != "request_id"}
        assert client.predict(path.read_bytes())["probability"] == pytest.approx(
            expected["probability"], abs=PRECISION
        )
        batch = client.predict_batch([path, jpeg_paths[12]])
        assert [p["filename"] for p in batch] == [path.name, jpeg_paths[12].name]
        assert batch[0]["probability"] == pytest.approx(expected["probability"], abs=PRECISION)

        with Image.open(io.BytesIO(client.explain(path))) as image:
            assert image.mode == "RGB" and image.size == (IMAGE_SIZE, IMAGE_SIZE)
        explained = client.explain(path, format="json")
        assert explained["heatmap_shape"] == [IMAGE_SIZE, IMAGE_SIZE]
        assert explained["probability"] == pytest.approx(expected["probability"], abs=PRECISION)

        metadata = client.metadata()
        assert metadata["threshold"] == THRESHOLD and metadata["image_size"] == IMAGE_SIZE

        first = client.feedback(request_id, "NORMAL", "dr.client")
        assert first["replaced"] is False and first["predicted_label"] == again["label"]
        assert client.feedback(request_id, "PNEUMONIA", "dr.client")["replaced"] is True
        with pytest.raises(PneumoAPIError) as unknown:
            client.feedback("no-such-request", "NORMAL", "dr.client")
        assert unknown.value.status == 404 and unknown.value.code == "unknown_request"

        with pytest.raises(PneumoAPIError) as refused:
            client.predict(b"\xff\xd8\xff" + bytes(100))
        assert refused.value.status == 400 and refused.value.code in {
            "invalid_image",
            "corrupt_image",
        }
        with pytest.raises(PneumoAPIError) as bad_format:
            client.explain(path, format="svg")
        assert bad_format.value.code == "invalid_format"
        with pytest.raises(FileNotFoundError, match="JPEG, PNG or DICOM"):
            client.predict(path.with_name("missing.jpeg"))


def test_pneumo_client_says_when_nothing_answers() -> None:
    with PneumoClient(f"http://127.0.0.1:{free_port()}", timeout=5) as client:
        with pytest.raises(ServiceUnreachableError, match="pneumo serve"):
            client.metadata()


def test_pneumo_serve_takes_host_port_and_workers_without_editing_params(
    serving_lab: ServingLab, tmp_path: Path
) -> None:
    params_before = serving_lab.params.read_text()
    port = free_port()
    command = [sys.executable, "-m", "pneumo.cli", "--params", str(serving_lab.params)]
    command += ["serve", "--from-workspace", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", "2"]
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true"}
    for name in ("PNEUMO_MODEL_TAG", "PNEUMO_PARAMS"):  # as a user runs it: the Bento's own
        env.pop(name, None)
    server = launch(command, REPO, env, tmp_path / "serve.log", timeout=400)
    try:
        assert httpx.get(f"{server.url}/metadata", timeout=30).json()["threshold"] == THRESHOLD
        assert f"http://127.0.0.1:{port}" in server.log.read_text()  # the address it prints
        deadline = time.monotonic() + 120  # /readyz turns 200 with the first model worker
        started = 0
        while started < 2 and time.monotonic() < deadline:
            time.sleep(1)
            started = server.log.read_text().count("Service pneumonia-model initialized")
        assert started == 2, server.log_tail()
    finally:
        server.stop()
    assert serving_lab.params.read_text() == params_before
