"""Helpers of the serving tests: a small evaluated model in a workspace, and `bentoml serve`.

The network is untrained: the tests check the service's contract and compare served
probabilities with `pneumo predict` on the same model, so any weights will do.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import torch

from pneumo.config import Settings, load_settings
from pneumo.models import build_model, save_model
from pneumo.workspace import Workspace
from serving.service import ServiceArguments

REPO = Path(__file__).resolve().parents[2]
IMAGE_SIZE = 64
OPTIONS = {"widths": [8, 16, 32, 64], "blocks_per_stage": 1, "stem_width": 8, "dropout": 0.0}
THRESHOLD = 0.5
MARGIN = 0.1  # the referral band around the threshold, saved in decision.json


@dataclass
class ServingLab:
    """A workspace with an evaluated model, imported into its own BentoML home."""

    root: Path
    params: Path
    settings: Settings
    workspace: Workspace
    home: Path
    model_tag: str


def middleware_chain(app: Any) -> list[Any]:
    """A built ASGI app and the middlewares it wraps, outermost first."""
    chain: list[Any] = []
    while app is not None and all(app is not seen for seen in chain):
        chain.append(app)
        app = getattr(app, "middleware_stack", None) or getattr(app, "app", None)
    return chain


def make_workspace(root: Path, seed: int = 0) -> Workspace:
    """models/model.pt + decision.json + metrics/metrics.json, as `dvc repro` leaves them."""
    workspace = Workspace(root)
    torch.manual_seed(seed)
    model = build_model("resnet", IMAGE_SIZE, **OPTIONS)
    metadata = {"arch": "resnet", "image_size": IMAGE_SIZE, "options": OPTIONS}
    save_model(model, workspace.model, {**metadata, "mlflow_run_id": None})
    decision = {"threshold": THRESHOLD, "rule": "fixed", "tta": False, "referral_margin": MARGIN}
    workspace.decision.write_text(json.dumps(decision))
    workspace.eval_metrics.parent.mkdir(parents=True, exist_ok=True)
    report = {"threshold": decision, "test": {"n": 10, "roc_auc": 0.5, "accuracy": 0.5}}
    workspace.eval_metrics.write_text(json.dumps(report))
    return workspace


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Server:
    """A `bentoml serve` child process (its own process group) on 127.0.0.1."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


ServerT = TypeVar("ServerT", bound=Server)


def start_server(
    target: str, lab: ServingLab, log: Path, timeout: float = 180.0, params: Path | None = None
) -> Server:
    """Start ``bentoml serve target`` and wait until /readyz answers 200 (``params``: another
    params.yaml than the lab's)."""
    port = free_port()
    env = {
        **os.environ,
        "BENTOML_HOME": str(lab.home),
        "PNEUMO_PARAMS": str(params or lab.params),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    if target.startswith("serving."):
        env["PNEUMO_MODEL_TAG"] = lab.model_tag
    else:
        env.pop("PNEUMO_MODEL_TAG", None)  # a Bento names its own model
    command = [sys.executable, "-m", "bentoml", "serve", target]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    if target.startswith("serving."):
        command += ["--working-dir", str(REPO)]
        command += ServiceArguments.command_line(load_settings(params or lab.params).serve)
    return launch(command, REPO, env, log, timeout)


@contextmanager
def serving(
    target: str, lab: ServingLab, log: Path, params: Path | None = None
) -> Iterator[Server]:
    """A started server for a ``with`` block (a module's fixture), stopped after it."""
    running = start_server(target, lab, log, params=params)
    try:
        yield running
    finally:
        running.stop()


def start_source_server(lab: ServingLab, folder: Path, **overrides: str) -> Server:
    """`bentoml serve` of the source tree with the lab's params.yaml changed by ``overrides``
    (dotted keys), written to ``folder``; the log goes there too."""
    from pneumo.config.params_file import set_param

    params = folder / "params.yaml"
    shutil.copyfile(lab.params, params)
    for key, value in overrides.items():
        set_param(params, key, value)
    return start_server("serving.service:PneumoniaService", lab, folder / "log", params=params)


def launch(command: list[str], cwd: Path, env: dict[str, str], log: Path, timeout: float) -> Server:
    """Run a `bentoml serve` command in its own process group; wait until /readyz answers 200."""
    port = command[command.index("--port") + 1]
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return wait_ready(Server(process, f"http://127.0.0.1:{port}", log), "/readyz", timeout)


def wait_ready(server: ServerT, path: str, timeout: float) -> ServerT:
    """Wait until GET ``path`` answers 200; stop the process and say why if it never does."""
    args = [str(a) for a in server.process.args]  # type: ignore[union-attr]
    what = " ".join([Path(args[0]).name, *args[1:4]])  # e.g. python3.11 -m bentoml serve
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{what} exited with {server.process.returncode}:\n{server.log_tail()}"
            )
        try:
            if httpx.get(f"{server.url}{path}", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"{what} not ready after {timeout:.0f} s:\n{server.log_tail()}")
