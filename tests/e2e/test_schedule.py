"""`pneumo schedule --cron ...` registers the retrain deployment with its cron on a Prefect server."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.servers import BIN, prefect_env, prefect_server, stop

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_schedule_registers_a_cron_deployment(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy2(REPO / "params.yaml", ws / "params.yaml")
    with prefect_server(tmp_path / "prefect") as api_url:
        env = prefect_env(api_url, tmp_path / "client")
        log = (tmp_path / "schedule.log").open("wb")
        proc = subprocess.Popen(
            [str(BIN / "pneumo"), "schedule", "--cron", "0 3 * * 1"],
            cwd=ws, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            deployment = None
            deadline = time.monotonic() + 120
            while deployment is None and time.monotonic() < deadline:
                assert proc.poll() is None, (tmp_path / "schedule.log").read_text()[-3000:]
                found = httpx.post(f"{api_url}/deployments/filter", json={}, timeout=30).json()
                deployment = next((d for d in found if d["name"] == "pneumo-retrain"), None)
                time.sleep(1)
            assert deployment is not None, (tmp_path / "schedule.log").read_text()[-3000:]
            crons = [s["schedule"].get("cron") for s in deployment["schedules"]]
            assert crons == ["0 3 * * 1"]
            assert deployment["parameters"]["workspace"] == str(ws.resolve())
        finally:
            stop(proc)
            log.close()
