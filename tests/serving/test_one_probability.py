"""One image, one probability: every route that scores an image gives it the same probability,
whatever batch it arrives in and however many threads compute it, at the documented precision
(pneumo.inference.PROBABILITY_PRECISION: probabilities are rounded there, before any threshold)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from pneumo.accel import configure_threads
from pneumo.data.preprocess import decode_many
from pneumo.inference import PROBABILITY_DECIMALS, PROBABILITY_PRECISION
from pneumo.inference.predictor import Predictor, predict_paths
from tests.serving.serving_support import ServingLab


def _predictor(serving_lab: ServingLab) -> Predictor:
    model = serving_lab.settings.model  # the service's device, precision and runtime
    return Predictor.from_workspace(serving_lab.workspace, model.accelerator(), model.runtime)


def _agree(got: np.ndarray, reference: np.ndarray, route: str) -> None:
    gap = float(np.max(np.abs(np.asarray(got, float) - reference)))
    assert gap <= PROBABILITY_PRECISION + 1e-12, f"{route}: {gap:.2e} from the reference"


def test_every_route_batch_and_thread_count_gives_one_probability(
    asgi_client: TestClient, serving_lab: ServingLab, jpeg_paths: list[Path]
) -> None:
    paths = jpeg_paths[:12]
    predictor = _predictor(serving_lab)
    images = decode_many([str(p) for p in paths], predictor.image_size, workers=1)
    reference = predictor.assess(images, batch_size=128).probabilities
    # Rounded once, in one place: no probability carries digits beyond the precision.
    assert np.array_equal(reference, np.round(reference, PROBABILITY_DECIMALS))
    for batch_size in (1, 5, 64):  # `pneumo predict` and evaluate --external's decode path
        frame = predict_paths(paths, predictor, workers=1, batch_size=batch_size)
        _agree(frame["probability"].to_numpy(), reference, f"pneumo predict, batch {batch_size}")
    # The stress and external stages call Predictor.probabilities.
    _agree(predictor.probabilities(images, batch_size=3), reference, "Predictor.probabilities")
    threads = configure_threads(1)
    try:  # the runtime is compiled for the thread count it finds
        _agree(_predictor(serving_lab).assess(images, batch_size=7).probabilities, reference,
               "one thread")  # fmt: skip
    finally:
        configure_threads(threads)
    # The HTTP routes: one image per request, then all in one /predict_batch.
    single = [
        asgi_client.post("/predict", content=p.read_bytes(),
                         headers={"content-type": "image/jpeg"}).json()["probability"]
        for p in paths[:4]
    ]  # fmt: skip
    _agree(np.array(single), reference[:4], "/predict")
    files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
    batch = asgi_client.post("/predict_batch", files=files).json()["predictions"]
    _agree(np.array([p["probability"] for p in batch]), reference, "/predict_batch")


def test_the_precision_is_documented_where_users_read_it() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "PROBABILITY_PRECISION" in readme and "1e-6" in readme
    assert PROBABILITY_PRECISION == pytest.approx(1e-6)
