"""`pneumo schedule [monitor] --cron ...` registers the retrain (or monitor) deployment with its
cron on a Prefect server."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.servers import BIN, prefect_env, prefect_server, stop

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Prefect server for both flows (its start-up is ~16 s): their deployments differ."""
    with prefect_server(tmp_path_factory.mktemp("prefect")) as url:
        yield url


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flow", "deployment", "cron"),
    [([], "pneumo-retrain", "0 3 * * 1"), (["monitor"], "pneumo-monitor", "*/30 * * * *")],
)
def test_schedule_registers_a_cron_deployment(
    api_url: str, tmp_path: Path, flow: list[str], deployment: str, cron: str
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy2(REPO / "params.yaml", ws / "params.yaml")
    env = prefect_env(api_url, tmp_path / "client")
    log = (tmp_path / "schedule.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN / "pneumo"), "schedule", *flow, "--cron", cron],
        cwd=ws, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deployed = None
        deadline = time.monotonic() + 120
        while deployed is None and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "schedule.log").read_text()[-3000:]
            found = httpx.post(f"{api_url}/deployments/filter", json={}, timeout=30).json()
            deployed = next((d for d in found if d["name"] == deployment), None)
            time.sleep(1)
        assert deployed is not None, (tmp_path / "schedule.log").read_text()[-3000:]
        crons = [s["schedule"].get("cron") for s in deployed["schedules"]]
        assert crons == [cron]
        assert deployed["parameters"]["workspace"] == str(ws.resolve())
    finally:
        stop(proc)
        log.close()
