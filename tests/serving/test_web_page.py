"""The clinician web page in headless Chromium, against the Bento `make serve` would run.

A model with every card file (split summary, evaluation with intervals, ROC, comparison, all
written by pneumo's own writers) is packaged into a Bento and served by `bentoml serve` on a
free 127.0.0.1 port. Chromium (Debian's package, driven by Playwright; never a downloaded
browser), with every request that would leave 127.0.0.1 aborted, uploads real radiographs: the
page must show exactly what /predict answers, render the Grad-CAM on the model's view with the
original beside it, explain refused files in plain words, and show the metrics /metadata gives;
the Swagger UI at /docs must render the API. Screenshots land in test-artifacts/.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pneumo.config import load_settings
from pneumo.data.split import split_metrics
from pneumo.decision import Decision
from pneumo.decision.metrics import binary_metrics
from pneumo.evaluation.evaluate import score_split
from pneumo.evaluation.plots import evaluation_curves
from pneumo.inference import PROBABILITY_PRECISION
from pneumo.training.baselines import COLUMNS, PUBLISHED, write_table
from tests.serving.browser_support import OfflineBrowser, offline_browser, screenshot
from tests.serving.serving_samples import dicom8, png_bytes
from tests.serving.serving_support import (
    IMAGE_SIZE,
    THRESHOLD,
    Server,
    ServingLab,
    make_workspace,
    start_server,
)

pytestmark = pytest.mark.slow
ANSWER_TIMEOUT_MS = 120_000  # two shared cores: the first Grad-CAM of a fresh server is slow


def write_card_sources(lab: ServingLab, root: Path) -> Path:
    """A workspace whose metrics, ROC, split summary and comparison come from pneumo's writers."""
    workspace = make_workspace(root, seed=1)
    settings = load_settings(lab.params, {"evaluate.bootstrap_samples": 100})
    rng = np.random.default_rng(7)
    n = 240
    labels = (np.arange(n) % 4 != 0).astype(int)  # three pneumonias per normal, like Kermany
    scores = rng.normal(np.where(labels == 1, 1.4, -1.4), 1.0)
    probabilities = 1 / (1 + np.exp(-scores))
    subtypes = np.where(labels == 0, "none", np.where(np.arange(n) % 8 == 1, "viral", "bacterial"))
    patients = np.array([f"p{i // 2}" for i in range(n)])
    decision = Decision(THRESHOLD, "fixed", 0.9, 0.8)
    report = score_split(labels, probabilities, patients, decision, settings.evaluate, subtypes)
    report["val"] = binary_metrics(labels[:60], probabilities[:60], THRESHOLD)
    workspace.eval_metrics.write_text(json.dumps(report, indent=2))
    evaluation_curves(workspace.eval_plots, labels, probabilities, THRESHOLD, bins=10)

    frame = pd.DataFrame(
        {
            "split": np.repeat(["train", "val", "test"], [600, 120, n]),
            "label": np.where(np.arange(960) % 4 == 0, "NORMAL", "PNEUMONIA"),
            "patient_id": [f"q{i // 2}" for i in range(960)],
        }
    )
    facts = {"test_source": "carved (patient-disjoint)", "excluded_for_test_patients": 0}
    workspace.split_metrics.parent.mkdir(parents=True, exist_ok=True)
    workspace.split_metrics.write_text(json.dumps(split_metrics(frame, facts), indent=2))

    ours = binary_metrics(labels, probabilities, THRESHOLD)
    measured = {"source": "measured here", "test_split": "carved, patient-disjoint"}
    rows = [
        {**measured, "model": "logistic regression on pixels", "accuracy": 0.81,
         "sensitivity": 0.86, "specificity": 0.66, "f1": 0.87, "roc_auc": 0.84, "threshold": 0.47},
        {**measured, "source": "measured here (pneumo evaluate)",  # as pneumo/training/baselines.py writes it
         "model": "pneumo default (resnet)", "threshold": THRESHOLD,
         **{k: ours[k] for k in ("accuracy", "sensitivity", "specificity", "f1", "roc_auc")}},
        *({"source": "published", "test_split": "official Kermany test (624 images)", **p}
          for p in PUBLISHED),
    ]  # fmt: skip
    write_table(pd.DataFrame(rows, columns=list(COLUMNS)), workspace.comparison)
    return root


@pytest.fixture(scope="module")
def card_lab(serving_lab: ServingLab, tmp_path_factory: pytest.TempPathFactory) -> ServingLab:
    """A second model, with its card files, packaged into a Bento in the lab's BentoML home."""
    from pneumo.registry.bento import package
    from pneumo.workspace import Workspace

    root = write_card_sources(serving_lab, tmp_path_factory.mktemp("card"))
    workspace = Workspace(root)
    packaged = package(serving_lab.settings, workspace, from_workspace=True)
    return replace(serving_lab, workspace=workspace, model_tag=packaged.bento_tag)


@pytest.fixture(scope="module")
def server(card_lab: ServingLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("web") / "bentoml.log"
    running = start_server(card_lab.model_tag, card_lab, log)  # the Bento: as `make serve`
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[OfflineBrowser]:
    with offline_browser() as running:
        yield running
        assert not running.outside, running.outside  # nothing ever tried to leave


@pytest.fixture()
def page(browser: OfflineBrowser, server: Server):
    page, problems = browser.new_page(ANSWER_TIMEOUT_MS)
    yield page
    page.close()
    assert not problems, problems  # no script errors, and nothing fetched from elsewhere


def open_diagnose(page, server: Server) -> None:
    page.goto(f"{server.url}/")
    page.wait_for_selector("body[data-ready='true']")


def upload(page, name: str, data: bytes, mime: str = "application/octet-stream") -> None:
    # Through the labelled input, as a keyboard or screen-reader user would reach it.
    page.get_by_label("Choose a radiograph").set_input_files(
        {"name": name, "mimeType": mime, "buffer": data}
    )


def api_predict(server: Server, data: bytes, content_type: str) -> dict:
    response = httpx.post(
        f"{server.url}/predict", content=data, headers={"content-type": content_type}, timeout=60
    )
    assert response.status_code == 200, response.text
    return response.json()


def box(page, selector: str) -> dict[str, float]:
    """Where an element is drawn, rounded to whole CSS pixels."""
    found = page.locator(selector).bounding_box()
    assert found is not None, selector
    return {key: round(value) for key, value in found.items()}


def natural_width(page, selector: str) -> int:
    return page.eval_on_selector(selector, "img => img.complete ? img.naturalWidth : 0")


def test_diagnose_shows_the_api_answer_and_the_heatmap(
    page, server: Server, jpeg_paths: list[Path]
) -> None:
    path = jpeg_paths[5]
    data = path.read_bytes()
    open_diagnose(page, server)
    upload(page, path.name, data, "image/jpeg")
    page.wait_for_selector("#result[data-state='explained']")

    expected = api_predict(server, data, "image/jpeg")
    shown = page.locator("#probability")
    # The page's request and this one may be batched differently: equal to the documented
    # precision (pneumo.inference.PROBABILITY_PRECISION), and so to the shown tenth of a percent.
    shown_p = float(shown.get_attribute("data-probability"))
    assert shown_p == pytest.approx(expected["probability"], abs=PROBABILITY_PRECISION)
    assert shown.inner_text() == f"{100 * shown_p:.1f} %"
    assert page.locator("#label").get_attribute("data-label") == expected["label"]
    assert page.locator("#referral").is_visible() == expected["refer_to_radiologist"]
    assert page.locator("#gauge").get_attribute("aria-valuenow") == (
        f"{100 * expected['probability']:.1f}"
    )
    assert f"{100 * expected['threshold']:.1f} %" in page.inner_text("#gauge-threshold-label")
    assert path.name in page.inner_text("#status")  # the aria-live summary

    assert natural_width(page, "#heatmap") == IMAGE_SIZE
    assert natural_width(page, "#model-view") == IMAGE_SIZE
    with Image.open(path) as original:
        assert natural_width(page, "#original") == original.width  # the file itself
        aspect = original.width / original.height
    assert aspect != pytest.approx(1, abs=0.05)  # the geometry check below means something
    view, heatmap = box(page, "#model-view"), box(page, "#heatmap")
    assert view == heatmap  # the heatmap lies exactly on the model's view...
    assert view["width"] == pytest.approx(view["height"], abs=1)  # ...the stretched square
    shown, frame = box(page, "#original"), box(page, "#original-frame")
    assert shown == frame  # the original fills its frame: no letterbox...
    assert shown["width"] / shown["height"] == pytest.approx(aspect, rel=0.02)  # ...undistorted
    assert shown["height"] == pytest.approx(view["height"], abs=2)  # side by side, equally tall
    assert shown["x"] > view["x"] + view["width"]  # beside the model's view, to its right

    slider = page.get_by_label("Heatmap opacity")  # the slider is labelled and keyboard-driven
    slider.focus()
    page.keyboard.press("ArrowRight")
    assert slider.input_value() == "45"
    assert page.eval_on_selector("#heatmap", "img => img.style.opacity") == "0.45"
    assert page.inner_text("#opacity-value") == "45 %"
    screenshot(page, "web-diagnose.png")


def test_dicom_is_shown_from_the_server_rendering(
    page, server: Server, jpeg_paths: list[Path]
) -> None:
    with Image.open(jpeg_paths[30]) as img:
        data = dicom8(np.asarray(img.convert("L")))
    open_diagnose(page, server)
    upload(page, "chest.dcm", data)
    page.wait_for_selector("#result[data-state='explained']")

    expected = api_predict(server, data, "application/dicom")
    assert float(page.get_attribute("#probability", "data-probability")) == pytest.approx(
        expected["probability"], abs=PROBABILITY_PRECISION
    )
    assert natural_width(page, "#original") == IMAGE_SIZE  # decoded by the server, not the browser
    assert "DICOM" in page.inner_text("#original-note")
    shown = box(page, "#original")
    aspect = expected["input"]["width"] / expected["input"]["height"]
    assert shown["width"] / shown["height"] == pytest.approx(aspect, rel=0.02)
    screenshot(page, "web-diagnose-dicom.png")


@pytest.mark.parametrize(
    ("name", "data", "plain"),
    [
        ("notes.jpeg", b"Patient notes, not an image\n" * 20, "is not a JPEG, PNG or DICOM image"),
        ("cut.png", png_bytes(np.zeros((300, 300), np.uint8))[:60], "could not be read"),
        ("thumb.png", png_bytes(np.zeros((32, 32), np.uint8)), "too small to assess"),
        # Above serve.max_request_bytes (20 MB): refused before upload, in the same words.
        ("huge.jpeg", b"\xff\xd8\xff" + bytes(20_000_000), "too large to analyse"),
    ],
    ids=["not-an-image", "truncated", "too-small", "too-large"],
)
def test_refused_files_are_explained_in_plain_words(
    page, server: Server, name: str, data: bytes, plain: str
) -> None:
    open_diagnose(page, server)
    upload(page, name, data)
    page.wait_for_selector("body[data-state='error']")
    error = page.locator("#error")
    assert error.is_visible() and error.get_attribute("role") == "alert"
    text = error.inner_text()
    assert plain in text and name in text
    assert "{" not in text and '"code"' not in text  # never the raw JSON answer
    assert page.locator("#result").is_hidden()
    screenshot(page, f"web-error-{name.split('.')[0]}.png")


def test_model_card_shows_the_served_model_and_its_metrics(
    page, server: Server, card_lab: ServingLab
) -> None:
    page.goto(f"{server.url}/model-card")
    page.wait_for_selector("body[data-state='ready']")
    metadata = httpx.get(f"{server.url}/metadata", timeout=30).json()

    identity = page.inner_text("#identity")
    assert metadata["model"]["version"] in identity and metadata["model"]["name"] in identity
    cells = page.locator("[data-metric]")
    assert cells.count() == 9 * 3  # nine metrics for all test images and the two slices
    for i in range(cells.count()):
        cell = cells.nth(i)
        part, name = cell.get_attribute("data-metric").split(".")
        expected = metadata["metrics"][part][name]
        assert float(cell.get_attribute("data-value")) == expected, (part, name)
        rate = name in ("accuracy", "precision", "sensitivity", "specificity", "f1")
        shown = f"{100 * expected:.1f} %" if rate else f"{expected:.3f}"
        assert cell.locator(".value").inner_text() == shown, (part, name)
        low, _ = metadata["metrics"][part]["ci"][name]
        assert (f"{100 * low:.1f} %" if rate else f"{low:.3f}") in cell.locator(".ci").inner_text()

    confusion = metadata["metrics"]["test"]["confusion"]
    for cell_name, key in (("True negative", "tn"), ("False positive", "fp"),
                           ("False negative", "fn"), ("True positive", "tp")):  # fmt: skip
        count = page.locator(f"[data-cell='{cell_name}'] .count").inner_text()
        assert int(count) == confusion[key]

    split = json.loads(card_lab.workspace.split_metrics.read_text())
    for name in ("train", "val", "test"):
        row = page.locator(f"tr[data-split='{name}'] td")
        assert int(row.nth(0).inner_text()) == split[name]["images"]
        assert int(row.nth(1).inner_text()) == split[name]["NORMAL"]
    assert "Patient-disjoint" in page.inner_text("#training-data")

    roc = pd.read_csv(card_lab.workspace.eval_plots / "roc.csv")
    points = page.get_attribute("svg.roc polyline", "points").split()
    assert len(points) == len(roc)
    assert page.locator("svg.roc circle.operating").count() == 1

    comparison = pd.read_csv(card_lab.workspace.comparison.with_suffix(".csv"))
    assert page.locator("#comparison tbody tr").count() == len(comparison)
    # pneumo's own row is the served model's (the CSV may predate it)
    assert "this model (resnet, served)" in page.inner_text("#comparison")
    assert "Kermany et al. 2018" in page.inner_text("#comparison")
    assert "Not a substitute for a radiologist" in page.inner_text("#main")
    screenshot(page, "web-model-card.png")


def test_model_card_says_what_was_not_packaged(page, server: Server) -> None:
    """A registry champion the workspace did not evaluate: headline metrics, nothing else."""
    card = httpx.get(f"{server.url}/model_card", timeout=30).json()
    headline = {"roc_auc": 0.91, "accuracy": 0.87, "sensitivity": 0.9, "specificity": 0.8}
    bare = {**card, "evaluation": headline, "training_data": None, "roc": None, "comparison": None}
    page.route("**/model_card", lambda route: route.fulfill(json=bare))
    page.goto(f"{server.url}/model-card")
    page.wait_for_selector("body[data-state='ready']")
    assert page.inner_text("#comparison").startswith("Not computed")
    assert "not packaged" in page.inner_text("#roc")
    assert "not packaged" in page.inner_text("#confusion")
    assert "Not packaged" in page.inner_text("#training-data")
    assert "no confidence intervals" in page.inner_text("#metrics")
    assert page.locator("[data-metric='test.accuracy'] .value").inner_text() == "87.0 %"
    screenshot(page, "web-model-card-bare.png")


def test_threshold_and_band_come_from_metadata_and_the_call_from_the_server(
    page, server: Server, jpeg_paths: list[Path]
) -> None:
    """The page draws /metadata's threshold and band and colours by the server's label: with a
    /metadata whose threshold lies above the probability, a PNEUMONIA answer stays PNEUMONIA."""
    data = jpeg_paths[2].read_bytes()
    answer = api_predict(server, data, "image/jpeg")
    metadata = httpx.get(f"{server.url}/metadata", timeout=30).json()
    moved = min(0.99, answer["probability"] + 0.2)
    band = [moved - 0.05, moved + 0.05]
    page.route("**/metadata", lambda route: route.fulfill(
        json={**metadata, "threshold": moved, "referral_band": band}))  # fmt: skip
    page.route("**/predict", lambda route: route.fulfill(
        json={**answer, "label": "PNEUMONIA", "refer_to_radiologist": True}))  # fmt: skip
    open_diagnose(page, server)
    upload(page, jpeg_paths[2].name, data, "image/jpeg")
    page.wait_for_selector("#result[data-state='explained']")
    assert page.locator("#label").get_attribute("data-label") == "PNEUMONIA"
    assert "above" in page.get_attribute("#gauge-fill", "class")  # the server's call, not p >= t
    assert f"{100 * moved:.1f} %" in page.inner_text("#gauge-threshold-label")
    left = page.eval_on_selector("#gauge-threshold", "node => node.style.left")
    assert float(left.rstrip("%")) == pytest.approx(100 * moved, abs=0.01)
    assert page.locator("#referral").is_visible()


def test_api_docs_render_offline(page, server: Server) -> None:
    """Swagger UI at /docs, from the service's own files, lists every endpoint of /docs.json."""
    page.goto(f"{server.url}/docs")
    page.wait_for_selector("body[data-ready='true']")
    page.wait_for_selector(".opblock")
    shown = set(page.locator(".opblock-summary-path").all_inner_texts())
    shown = {text.replace("\u200b", "").strip() for text in shown}
    assert {"/predict", "/predict_batch", "/explain", "/metadata", "/model_card"} <= shown
    page.locator("#operations-Service_APIs-pneumonia-service__predict").click()
    page.wait_for_selector("text=body_too_large")  # the error codes are documented
    assert page.locator(".opblock-body .responses-table").count() >= 1
    screenshot(page, "web-api-docs.png")


def test_reviewer_corrects_the_call_and_the_live_tab_counts_it(
    page, server: Server, jpeg_paths: list[Path]
) -> None:
    """Confirm / correct after a diagnosis reaches POST /feedback; the model card's live tab
    shows the day's requests and the reviewers' agreement from the prediction log."""
    open_diagnose(page, server)
    upload(page, jpeg_paths[7].name, jpeg_paths[7].read_bytes(), "image/jpeg")
    page.wait_for_selector("#feedback[data-state='open']")
    page.locator("#correct").click()  # no reviewer yet: asked for, nothing sent
    assert page.inner_text("#feedback-status") == "Enter your name or staff id first."
    page.get_by_label("Reviewer").fill("dr.page")
    called = page.locator("#label").get_attribute("data-label")
    page.locator("#correct").click()
    page.wait_for_selector("#feedback[data-state='corrected']")
    other = "normal" if called == "PNEUMONIA" else "pneumonia"
    assert page.inner_text("#feedback-status") == f"Corrected: {other}."
    page.locator("#confirm").click()  # the same reviewer changes their mind: replaced
    page.wait_for_selector("#feedback[data-state='confirmed']")
    assert "earlier answer was replaced" in page.inner_text("#feedback-status")
    screenshot(page, "web-feedback.png")

    live = httpx.get(f"{server.url}/live", timeout=30).json()
    page.goto(f"{server.url}/model-card")
    page.wait_for_selector("body[data-state='ready']")
    page.get_by_role("tab", name="Live").click()
    page.wait_for_selector("body[data-live='ready']")
    total = page.locator("#live-table tfoot td")
    assert int(total.nth(0).inner_text()) == live["total"]["requests"] >= 2
    assert int(total.nth(4).inner_text()) == live["total"]["reviewed"] >= 1
    assert page.locator("#panel-card").is_hidden()
    screenshot(page, "web-live.png")
