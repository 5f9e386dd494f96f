"""An alert of the monitor flow starts the retrain deployment on a real Prefect server, and says
why (monitor.retrain_on_alert: true). Nobody serves the deployment here: the run it starts is
checked as the server recorded it, scheduled with the monitor's tag."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from pneumo.monitor.store import utcnow
from tests.e2e.servers import prefect_env, prefect_server
from tests.monitor.monitor_support import (
    REFERENCE_PER_CLASS,
    REPLAY_PER_CLASS,
    log_images,
    make_lab,
    model_info,
    sample_paths,
    shifted_bytes,
)

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
REGISTER = (
    "from flows.retrain import retrain; print(retrain.to_deployment(name='pneumo-retrain').apply())"
)


def test_an_alert_starts_the_retrain_deployment(tmp_path: Path, real_root: Path) -> None:
    settings, workspace = make_lab(tmp_path / "lab", real_root, retrain_on_alert=True)
    paths = sample_paths(real_root, REPLAY_PER_CLASS, skip=REFERENCE_PER_CLASS)
    since = utcnow()
    log_images(settings, workspace.root, [shifted_bytes(p) for p in paths], model_info(workspace))
    until = utcnow() + timedelta(seconds=1)
    with prefect_server(tmp_path / "prefect") as api_url:
        env = prefect_env(api_url, tmp_path / "client")
        registered = subprocess.run([sys.executable, "-c", REGISTER], cwd=REPO, env=env,
                                    capture_output=True, text=True, timeout=300)  # fmt: skip
        assert registered.returncode == 0, registered.stderr[-3000:]
        run = subprocess.run(
            [sys.executable, "-m", "pneumo.cli", "--params", str(workspace.root / "params.yaml"),
             "monitor", "run", "--since", since.isoformat(), "--until", until.isoformat()],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        summary = json.loads(run.stdout[run.stdout.index("{") :])
        assert summary["status"] == "alert"
        deployments = httpx.post(f"{api_url}/deployments/filter", json={}, timeout=30).json()
        (deployment,) = [d for d in deployments if d["name"] == "pneumo-retrain"]
        query = {"deployments": {"id": {"any_": [deployment["id"]]}}}
        runs = httpx.post(f"{api_url}/flow_runs/filter", json=query, timeout=30).json()
        assert len(runs) == 1 and "monitor-alert" in runs[0]["tags"]
        assert runs[0]["state"]["type"] == "SCHEDULED"
        artifacts = httpx.post(f"{api_url}/artifacts/filter",
                               json={"artifacts": {"key": {"any_": ["monitor-verdict"]}}},
                               timeout=30).json()  # fmt: skip
        text = artifacts[-1]["data"]
        assert f"retrain started: flow run {runs[0]['name']}" in text
        assert "input drift" in text  # and why
