"""The guard as a client meets it: a packaged model with its guard.pt, served by `bentoml serve`.

(How well the detector separates each kind of foreign image is measured on a better-trained
network in tests/model/test_guard.py; here the network has seen radiographs for eight short epochs.)

A real radiograph gets a diagnosis with ``out_of_distribution: false``; a photograph, a document
and noise get ``out_of_distribution: true`` with a referral and a reason; a damaged JPEG is 400.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pneumo.config import load_settings
from pneumo.config.params_file import set_param
from pneumo.data.preprocess import decode_many, save_arrays
from pneumo.evaluation.guard_probes import documents, noise
from tests.serving.serving_support import (
    IMAGE_SIZE,
    REPO,
    Server,
    ServingLab,
    make_workspace,
    serving,
)

pytestmark = pytest.mark.slow


def _arrays(workspace, real_root: Path, split: str, per_class: int, offset: int) -> None:  # noqa: ANN001
    files = [
        p
        for label in ("NORMAL", "PNEUMONIA")
        for p in sorted((real_root / "train" / label).iterdir())[offset : offset + per_class]
    ]
    frame = pd.DataFrame({
        "path": [f"train/{p.parent.name}/{p.name}" for p in files],
        "label": [p.parent.name for p in files],
        "patient_id": [p.stem for p in files],
        "subtype": ["none" if p.parent.name == "NORMAL" else "bacterial" for p in files],
    })  # fmt: skip
    save_arrays(workspace.arrays(split), decode_many([str(p) for p in files], IMAGE_SIZE, 1), frame)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, real_root: Path) -> Iterator[Server]:
    from pneumo.evaluation.guard_stage import guard_stage
    from pneumo.registry.bento import import_champion
    from pneumo.training.train import train

    root = tmp_path_factory.mktemp("guarded")
    params = root / "params.yaml"
    shutil.copyfile(REPO / "params.yaml", params)
    set_param(params, "serve.bentoml_home", str(root / ".bentoml"))
    set_param(params, "guard.probes_per_kind", "10")
    workspace = make_workspace(root)
    _arrays(workspace, real_root, "train", 150, 0)
    _arrays(workspace, real_root, "val", 60, 150)
    workspace.array_stats.write_text('{"image_size": 64}')
    for key, value in (("preprocess.image_size", "64"), ("train.epochs", "8"),
                       ("train.warmup_epochs", "0.5"), ("train.batch_size", "32")):  # fmt: skip
        set_param(params, key, value)
    settings = load_settings(params, {"model.resnet.widths": [8, 16, 32, 64],
                                      "model.resnet.stem_width": 8})  # fmt: skip
    train(settings, workspace, track=False)  # features of a network that has seen radiographs
    from pneumo.data.preprocess import load_arrays
    from tests.model.scope_support import write_standin_set

    # With a (stand-in) out-of-scope set, so the answers can name what an image is.
    scope = write_standin_set(root / "scope", load_arrays(workspace.arrays("val"))["images"])
    guard_stage(settings, workspace, scope)
    tag, metadata, _ = import_champion(settings, workspace, from_workspace=True)
    assert metadata["guard"]
    lab = ServingLab(root, params, settings, workspace, root / ".bentoml", tag)
    with serving("serving.service:PneumoniaService", lab, root / "server.log") as server:
        yield server


def _post(server: Server, data: bytes, content_type: str = "image/png") -> httpx.Response:
    return httpx.post(f"{server.url}/predict", content=data,
                      headers={"content-type": content_type}, timeout=60)  # fmt: skip


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_real_radiograph_is_in_distribution(guarded: Server, originals_root: Path) -> None:
    path = sorted((originals_root / "NORMAL").iterdir())[0]
    body = _post(guarded, path.read_bytes(), "image/jpeg").json()
    assert body["out_of_distribution"] is False and body["ood_reason"] is None
    assert isinstance(body["ood_score"], float)
    assert body["label"] in ("NORMAL", "PNEUMONIA")


def test_foreign_images_are_flagged_and_referred_with_a_reason(guarded: Server) -> None:
    import skimage.data

    rng = np.random.default_rng(0)
    foreign = {
        "colour photograph": Image.fromarray(skimage.data.astronaut()),
        "document": documents(1, rng)[0],
        "noise": noise(1, rng)[0],
    }
    for name, image in foreign.items():
        response = _post(guarded, _png(image))
        assert response.status_code == 200, (name, response.text)
        body = response.json()
        assert body["out_of_distribution"] is True, name
        assert body["refer_to_radiologist"] is True, name
        assert len(body["ood_reason"]) > 10, name
    assert "colour" in _post(guarded, _png(foreign["colour photograph"])).json()["ood_reason"]


def test_a_scan_damaged_jpeg_is_refused(guarded: Server, originals_root: Path) -> None:
    data = bytearray(sorted((originals_root / "NORMAL").iterdir())[0].read_bytes())
    start = data.index(b"\xff\xda") + 200  # inside the entropy-coded scan
    data[start : start + 400] = b"\xff" * 400
    response = _post(guarded, bytes(data), "image/jpeg")
    assert response.status_code == 400 and response.json()["code"] == "corrupt_image"


def test_out_of_scope_radiographs_are_referred_saying_what_they_are(guarded: Server) -> None:
    """The packaged guard holds the kind classifier: /predict and /predict_batch name the kind."""
    from pneumo.inference.scope import KIND_REASONS
    from tests.model.scope_support import other_things

    things = [_png(image) for image in other_things(6, np.random.default_rng(3))]
    answers = [_post(guarded, body).json() for body in things]
    assert all(a["out_of_distribution"] and a["refer_to_radiologist"] for a in answers), answers
    named = [a["ood_reason"] == KIND_REASONS["other_body_part"] for a in answers]
    assert sum(named) >= 4, [a["ood_reason"] for a in answers]
    files = [("images", (f"thing{i}.png", body, "image/png")) for i, body in enumerate(things)]
    batch = httpx.post(f"{guarded.url}/predict_batch", files=files, timeout=60)
    assert batch.status_code == 200, batch.text
    reasons = [item["ood_reason"] for item in batch.json()["predictions"]]
    assert reasons == [a["ood_reason"] for a in answers]
