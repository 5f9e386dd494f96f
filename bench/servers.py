"""`bentoml serve` for the benchmarks: start on a free 127.0.0.1 port, stop by PID, and the CPU
seconds its processes used (front service, model workers), next to this client's."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from pneumo.config import load_settings

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(
    params: Path, home: Path, model_tag: str, log: Path, timeout: float
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "BENTOML_HOME": str(home),
        "PNEUMO_PARAMS": str(params),
        "PNEUMO_MODEL_TAG": model_tag,
        "BENTOML_DO_NOT_TRACK": "true",
    }
    from serving.service import ServiceArguments

    command = [sys.executable, "-m", "bentoml", "serve", "serving.service:PneumoniaService"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--working-dir", str(REPO)]
    command += ServiceArguments.command_line(load_settings(params).serve)  # workers, batching
    with log.open("wb") as handle:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {process.returncode}; see {log}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    stop_server(process)
    raise RuntimeError(f"bentoml serve not ready after {timeout:.0f} s; see {log}")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """Stop `bentoml serve` and every worker it started (workers may leave its process group)."""
    workers = _tree(process.pid)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    _, alive = psutil.wait_procs(workers, timeout=10)
    for worker in alive:
        worker.kill()


def _tree(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds used so far by the server's processes, by role, and by this client."""
    roles: dict[str, float] = {"front": 0.0, "model_workers": 0.0, "arbiter": 0.0}
    for proc in [psutil.Process(pid), *_tree(pid)]:
        try:
            command, times = " ".join(proc.cmdline()), proc.cpu_times()
        except psutil.Error:
            continue
        role = (
            "model_workers"
            if "pneumonia-model" in command
            else "front"
            if "pneumonia-service" in command
            else "arbiter"
        )
        roles[role] += times.user + times.system
    mine = psutil.Process().cpu_times()
    return {**roles, "client": mine.user + mine.system}
