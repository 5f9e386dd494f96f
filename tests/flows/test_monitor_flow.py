"""The monitor flow on real radiographs: ok on a replay of the validation distribution, alert on
the same images darkened and re-compressed; its report renders offline; the verdict is stored,
published and printed by `pneumo monitor status`."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from pneumo.config import Settings
from pneumo.monitor.store import utcnow
from pneumo.workspace import Workspace
from tests.monitor.monitor_support import (
    REFERENCE_PER_CLASS,
    REPLAY_PER_CLASS,
    log_images,
    make_lab,
    model_info,
    sample_paths,
    shifted_bytes,
)

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, real_root: Path) -> tuple[Settings, Workspace]:
    return make_lab(tmp_path_factory.mktemp("monitor-flow"), real_root)


def _logged(lab: tuple[Settings, Workspace], images: list[bytes]) -> tuple[str, str]:
    settings, workspace = lab
    start = utcnow()
    log_images(settings, workspace.root, images, model_info(workspace))
    return start.isoformat(), (utcnow() + timedelta(seconds=1)).isoformat()


def test_monitor_flow_ok_then_alert_with_an_offline_report(
    prefect_harness: None, lab: tuple[Settings, Workspace], real_root: Path
) -> None:
    from prefect.artifacts import Artifact

    from flows.monitor import monitor

    settings, workspace = lab
    paths = sample_paths(real_root, REPLAY_PER_CLASS, skip=REFERENCE_PER_CLASS)
    since, until = _logged(lab, [p.read_bytes() for p in paths])
    ok = monitor(workspace=str(workspace.root), since=since, until=until)
    assert ok["status"] == "ok", ok["reasons"]
    since, until = _logged(lab, [shifted_bytes(p) for p in paths])
    alert = monitor(workspace=str(workspace.root), since=since, until=until)
    assert alert["status"] == "alert", alert["reasons"]
    assert alert["retrain"] == "not started: monitor.retrain_on_alert is off"
    report = Path(alert["report"])
    assert report.is_file() and report.parent == workspace.root / "reports" / "monitor"
    artifact = Artifact.get("monitor-verdict")
    assert artifact is not None and "**Verdict: alert**" in str(artifact.data)
    # links the Prefect UI can open: HTTP to the MLflow run's artifact, never file://
    assert "file://" not in str(artifact.data)
    assert f"/artifacts/{report.name}" in str(artifact.data) and "http://" in str(artifact.data)
    assert alert["mlflow_run_id"]
    from pneumo import tracking

    client = tracking.client_for(settings.tracking, workspace)
    experiment = client.get_run(alert["mlflow_run_id"]).info.experiment_id
    # monitor runs land in their own experiment, not between the training runs
    assert client.get_experiment(experiment).name == settings.tracking.monitor_experiment
    status = subprocess.run(
        [str(BIN / "pneumo"), "--params", str(workspace.root / "params.yaml"), "monitor", "status"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("ALERT") and "pixel_mean" in status.stdout
    _renders_offline(report)


def _renders_offline(report: Path) -> None:
    """Evidently's report draws its charts in Chromium with the network cut off."""
    from tests.serving.browser_support import offline_browser, screenshot

    with offline_browser() as browser:
        page, problems = browser.new_page(60_000)
        page.goto(report.resolve().as_uri())
        page.wait_for_selector(".js-plotly-plot", timeout=60_000)
        assert page.locator(".js-plotly-plot").count() >= 1
        assert "pixel_mean" in page.content()
        # the verdict and its reasons on top of Evidently's charts
        assert page.locator("#pneumo-verdict").inner_text().startswith("pneumo monitor: verdict")
        screenshot(page, "monitor-report.png")
        assert not problems and not browser.outside, (problems, browser.outside)


def test_too_few_predictions_say_not_enough_data(
    prefect_harness: None, lab: tuple[Settings, Workspace], real_root: Path
) -> None:
    from flows.monitor import monitor

    settings, workspace = lab
    paths = sample_paths(real_root, 3, skip=REFERENCE_PER_CLASS + REPLAY_PER_CLASS)
    since, until = _logged(lab, [p.read_bytes() for p in paths])
    summary = monitor(workspace=str(workspace.root), since=since, until=until)
    assert summary["status"] == "insufficient"
    assert summary["reasons"] == [f"not enough data (6 < {settings.monitor.min_predictions})"]
    # a report all the same: the verdict and why, with no drift charts to draw
    text = Path(summary["report"]).read_text()
    assert "verdict insufficient" in text and "not enough data (6 &lt;" in text
