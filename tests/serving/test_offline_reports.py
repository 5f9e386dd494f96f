"""The HTML reports render without the internet: `dvc plots show` (through the committed template
in .dvc/config) and the Great Expectations Data Docs, opened as files in headless Chromium with
every request that would leave the machine aborted.

Both are made from real radiographs with pneumo's own code: the plots from a copy of dvc.yaml,
params.yaml and .dvc/config with evaluation curves written by pneumo.evaluation.plots, the Data Docs by
the validate step on a small Kermany folder of shared images. Charts and tables must actually
draw (pixels on the canvases, rows in the tables), not only load. Screenshots go to
test-artifacts/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumo.config import ValidateSettings
from pneumo.data.ingest import ingest
from pneumo.data.validate import validate
from pneumo.evaluation.plots import evaluation_curves
from pneumo.evaluation.shifts import SHIFTS
from pneumo.web_assets import WebAssetsError, vendor
from pneumo.workspace import Workspace
from tests.serving.browser_support import OfflineBrowser, offline_browser, screenshot
from tests.serving.serving_support import REPO

pytestmark = pytest.mark.slow
PAGE_TIMEOUT_MS = 60_000
# The Vega plots of dvc.yaml, by the element ids `dvc plots show` gives them.
CHARTS = ("ROC__test_", "Precision-recall__test_", "Calibration__test_", "Confusion__test_",
          "Training_curves", "Stress_ROC-AUC__validation_under_acquisition_shifts_")  # fmt: skip
# The page's stylesheets with a file name, and how many rules each brought.
STYLESHEETS = """() => [...document.styleSheets].filter(s => s.href)
  .map(s => [s.href.split("/").pop(), s.cssRules.length])"""
# How many canvas pixels of a chart are not background: a drawn chart has thousands.
INKED_PIXELS = """canvas => {
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let inked = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i + 3] > 0 && (data[i] < 200 || data[i + 1] < 200 || data[i + 2] < 200)) inked++;
  }
  return inked;
}"""


@pytest.fixture(scope="module")
def vendored() -> Path:
    """`make vendor`: the npm packages, fetched once into vendor/ (git-ignored)."""
    try:
        return vendor()
    except WebAssetsError as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def browser() -> Iterator[OfflineBrowser]:
    with offline_browser() as running:
        yield running
        assert not running.outside, running.outside


def _dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    dvc = [sys.executable, "-m", "dvc", *args]
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(dvc, cwd=cwd, env=env, capture_output=True, text=True, check=False)


def _write_plot_data(root: Path) -> None:
    """What evaluate and train leave for `dvc plots`, from a realistic score distribution."""
    rng = np.random.default_rng(3)
    labels = (np.arange(400) % 4 != 0).astype(int)
    scores = 1 / (1 + np.exp(-rng.normal(np.where(labels == 1, 1.6, -1.6), 1.0)))
    evaluation_curves(root / "plots" / "evaluate", labels, scores, 0.5, bins=10)
    names = np.array(["NORMAL", "PNEUMONIA"])
    pd.DataFrame({"actual": names[labels], "predicted": names[(scores >= 0.5).astype(int)]}).to_csv(
        root / "plots" / "evaluate" / "test_predictions.csv", index=False
    )
    history = {"epoch": range(1, 9), "train_loss": 0.7 * 0.8 ** np.arange(8)}
    history["val_log_loss"] = history["train_loss"] + 0.05
    (root / "reports").mkdir(exist_ok=True)
    pd.DataFrame(history).to_csv(root / "reports" / "train_history.csv", index=False)
    shifts = [s.name for s in SHIFTS]
    (root / "plots" / "stress").mkdir(parents=True)
    severities = [1] * len(shifts) + [2] * len(shifts)
    # As pneumo/evaluation/stress.py writes it: one `case` (shift@severity) per bar.
    pd.DataFrame({"case": [f"{n}@{v}" for n, v in zip(shifts * 2, severities, strict=True)],
                  "shift": shifts * 2, "severity": severities,
                  "roc_auc": rng.uniform(0.9, 1.0, 2 * len(shifts))}).to_csv(
        root / "plots" / "stress" / "stress.csv", index=False)  # fmt: skip


@pytest.fixture(scope="module")
def dvc_plots(vendored: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`dvc plots show` in a copy of the repository's DVC set-up, as a user runs it."""
    root = tmp_path_factory.mktemp("plots")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    assert _dvc("init", "-q", cwd=root).returncode == 0
    for name in ("dvc.yaml", "params.yaml", ".dvc/config"):
        shutil.copyfile(REPO / name, root / name)
    template = Path("reports") / "dvc_plots_template.html"  # where .dvc/config points
    (root / "reports").mkdir()
    shutil.copyfile(REPO / template, root / template)
    (root / "vendor").symlink_to(vendored)
    _write_plot_data(root)
    shown = _dvc("plots", "show", cwd=root)
    index = root / "dvc_plots" / "index.html"
    assert index.is_file(), shown.stdout + shown.stderr
    return index


def test_dvc_plots_render_offline(browser: OfflineBrowser, dvc_plots: Path) -> None:
    html = dvc_plots.read_text()
    assert "cdn.jsdelivr.net" not in html and "../vendor/vega/build/vega.min.js" in html
    page, problems = browser.new_page(PAGE_TIMEOUT_MS)
    page.goto(dvc_plots.as_uri())
    for chart in CHARTS:
        assert f"vegaEmbed('#{chart}'" in html, chart
    page.wait_for_function(
        f"document.querySelectorAll('.vega-embed canvas').length >= {len(CHARTS)}"
    )
    assert page.locator("#missing-vega").count() == 0
    for chart in CHARTS:
        canvases = page.locator(f"[id='{chart}'] canvas")
        assert canvases.count() >= 1, chart
        inked = sum(canvases.nth(j).evaluate(INKED_PIXELS) for j in range(canvases.count()))
        assert inked > 500, f"{chart} is blank"
    screenshot(page, "report-dvc-plots.png")
    page.close()
    assert not problems, problems


@pytest.fixture(scope="module")
def data_docs(vendored: Path, real_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The validate step's Data Docs for forty shared radiographs in a Kermany folder."""
    root = tmp_path_factory.mktemp("docs")
    for label in ("NORMAL", "PNEUMONIA"):
        folder = root / "chest_xray" / "train" / label
        folder.mkdir(parents=True)
        for path in sorted((real_root / "train" / label).glob("*.jpeg"))[:20]:
            (folder / path.name).symlink_to(path)
    workspace = Workspace(root)
    ingest(root / "chest_xray", workspace)
    outcome = validate(workspace.manifest, ValidateSettings(min_rows=10), workspace)
    assert outcome.success
    return workspace.data_docs / "index.html"


def test_data_docs_render_offline(browser: OfflineBrowser, data_docs: Path) -> None:
    page, problems = browser.new_page(PAGE_TIMEOUT_MS)
    page.goto(data_docs.as_uri())
    rows = page.locator("table.ge-index-page-validation-results-table tbody tr")
    rows.first.wait_for()  # filled in by bootstrap-table: empty when its script cannot load
    assert "manifest_contract" in rows.first.inner_text()
    sheets = dict(page.evaluate(STYLESHEETS))
    assert {"bootstrap.min.css", "bootstrap-table.min.css", "all.min.css"} <= set(sheets)
    assert all(rules > 0 for rules in sheets.values()), sheets  # every stylesheet loaded
    page.evaluate("() => document.fonts.ready")
    assert page.evaluate("() => document.fonts.check('900 16px \"Font Awesome 6 Free\"')")
    screenshot(page, "report-data-docs.png")
    rows.first.click()  # into the validation result, one folder deeper
    page.wait_for_selector("text=Successful Expectations")
    assert "/validations/manifest_contract/" in page.url
    assert "Succeeded" in page.inner_text("body") and page.locator("table").count() >= 10
    screenshot(page, "report-data-docs-validation.png")
    page.close()
    assert not problems, problems
    site = data_docs.parent
    for html in site.rglob("*.html"):
        assert "cdn.jsdelivr.net" not in html.read_text() and "unpkg.com" not in html.read_text()
    assert (site / "static" / "vendor" / "jquery" / "dist" / "jquery.min.js").is_file()
