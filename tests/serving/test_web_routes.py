"""The web page's routes in-process (``to_asgi``), and the card files `pneumo package` carries.

The browser itself is driven in test_web_page.py (slow); here: the pages and assets are served
by the service, /model_card says "not packaged" with None, /explain?format=layers gives two PNGs
of the model's size, and packaging takes a workspace's card files only for its own weights.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image
from starlette.testclient import TestClient

from pneumo.inference import PROBABILITY_PRECISION
from pneumo.registry.bento import card_files
from pneumo.stored_model import COMPARISON_FILE, EVALUATION_FILE, ROC_FILE, SPLIT_FILE
from tests.serving.serving_support import IMAGE_SIZE, ServingLab, make_workspace

SVG_NAMESPACE = "http://www.w3.org/2000/svg"


@pytest.fixture(scope="module")
def client(asgi_client: TestClient) -> TestClient:
    return asgi_client


def _png(data_url: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert data_url.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(data_url.removeprefix(prefix))))


@pytest.mark.parametrize(
    ("path", "media_type", "marker"),
    [
        ("/", "text/html", 'id="file"'),
        ("/model-card", "text/html", 'id="roc"'),
        ("/static/style.css", "text/css", ":focus-visible"),
        ("/static/common.js", "javascript", "requestJson"),
        ("/static/diagnose.js", "javascript", "/explain?format=layers"),
        ("/static/model-card.js", "javascript", "/model_card"),
    ],
)
def test_pages_and_assets_are_served_by_the_service(
    client: TestClient, path: str, media_type: str, marker: str
) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert media_type in response.headers["content-type"]
    assert marker in response.text
    text = response.text.replace(SVG_NAMESPACE, "")  # a name, never fetched
    assert "http://" not in text and "https://" not in text  # nothing from a CDN


def test_unknown_asset_is_a_json_404(client: TestClient) -> None:
    response = client.get("/static/nope.js")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_model_card_without_card_files_says_so(client: TestClient, serving_lab: ServingLab) -> None:
    card = client.get("/model_card").json()
    metadata = client.get("/metadata").json()
    assert card["model"]["version"] == serving_lab.model_tag.split(":")[1]
    assert card["model"]["packaged_at"]  # the model store's import time
    assert card["model"]["registered_at"] is None  # a workspace model is not registered
    assert card["metrics"] == metadata["metrics"] == card["evaluation"]
    assert card["training_data"] is None and card["roc"] is None and card["comparison"] is None


def test_explain_layers_are_the_model_view_and_the_heatmap(
    client: TestClient, jpeg_paths: list[Path]
) -> None:
    data = jpeg_paths[1].read_bytes()
    headers = {"content-type": "image/jpeg"}
    body = client.post("/explain?format=layers", content=data, headers=headers).json()
    predicted = client.post("/predict", content=data, headers=headers).json()
    assert body["probability"] == pytest.approx(predicted["probability"], abs=PROBABILITY_PRECISION)
    image, heatmap = _png(body["image"]), _png(body["heatmap"])
    assert image.mode == "L" and image.size == (IMAGE_SIZE, IMAGE_SIZE)
    assert heatmap.mode == "RGB" and heatmap.size == (IMAGE_SIZE, IMAGE_SIZE)


def _write_card_sources(workspace) -> None:
    workspace.split_metrics.parent.mkdir(parents=True, exist_ok=True)
    workspace.split_metrics.write_text(json.dumps({"patients_in_two_splits": 0}))
    workspace.eval_plots.mkdir(parents=True, exist_ok=True)
    (workspace.eval_plots / "roc.csv").write_text("fpr,tpr\n0,0\n1,1\n")
    workspace.comparison.parent.mkdir(parents=True, exist_ok=True)
    workspace.comparison.with_suffix(".csv").write_text("model,accuracy\nx,0.5\n")


def test_card_files_come_only_with_the_workspace_own_weights(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "ws")
    _write_card_sources(workspace)
    own = card_files(workspace, workspace.model, from_workspace=True)
    assert set(own) == {SPLIT_FILE, ROC_FILE, COMPARISON_FILE}
    # A registry model carries the workspace's full report too (its metrics.json is headline only).
    assert set(card_files(workspace, workspace.model, from_workspace=False)) == {
        SPLIT_FILE, ROC_FILE, COMPARISON_FILE, EVALUATION_FILE,
    }  # fmt: skip
    other = make_workspace(tmp_path / "other", seed=3).model
    assert card_files(workspace, other, from_workspace=False) == {}
    workspace.comparison.with_suffix(".csv").unlink()
    assert COMPARISON_FILE not in card_files(workspace, workspace.model, from_workspace=True)


def test_the_cards_own_row_is_the_served_models_not_a_stale_table(tmp_path: Path) -> None:
    """reports/comparison.csv may predate the model: the card's pneumo row is the served one."""
    from serving.web import _served_comparison

    rows = [
        {"model": "logistic", "source": "measured here", "test_split": "carved", "accuracy": 0.95},
        {"model": "pneumo default (resnet)", "source": "measured here (pneumo evaluate)",
         "test_split": "carved", "accuracy": 0.971, "threshold": 0.493},
        {"model": "Kermany 2018", "source": "published", "test_split": "official", "accuracy": 0.93},
    ]  # fmt: skip
    evaluation = tmp_path / "evaluation.json"
    evaluation.write_text(json.dumps({"test": {"accuracy": 0.98, "roc_auc": 0.99, "sensitivity": 0.97,
                                               "specificity": 0.96, "f1": 0.98}}))  # fmt: skip
    served = _served_comparison(rows, evaluation, {}, {"arch": "resnet", "threshold": 0.2265})
    assert [r["model"] for r in served] == [
        "logistic",
        "this model (resnet, served)",
        "Kermany 2018",
    ]
    assert served[1]["accuracy"] == 0.98 and served[1]["threshold"] == 0.2265
    assert not any(r.get("threshold") == 0.493 for r in served)
