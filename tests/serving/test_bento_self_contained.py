"""A Bento runs only from what it carries: served from an empty folder, without the repository
on the import path, every pneumo and serving module the servers load comes from the Bento."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import httpx
import pytest

from pneumo.registry.bento import package
from serving.service import MODEL_TAG_ENV, PARAMS_ENV
from tests.serving.serving_support import REPO, Server, ServingLab, free_port, launch

pytestmark = pytest.mark.slow
ORIGIN = re.compile(
    r"the (model|front) service runs pneumo from (\S+) and serving from (\S+); "
    r"(\d+) of their modules loaded from elsewhere"
)


def serve_bento_alone(tag: str, lab: ServingLab, folder: Path) -> Server:
    """`bentoml serve TAG` with cwd an empty folder and nothing of the repository in the
    environment: no PYTHONPATH, no params or model overrides."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", MODEL_TAG_ENV, PARAMS_ENV)
    }
    env.update(BENTOML_HOME=str(lab.home), BENTOML_DO_NOT_TRACK="true")
    command = [sys.executable, "-m", "bentoml", "serve", tag, "--host", "127.0.0.1"]
    command += ["--port", str(free_port())]
    return launch(command, folder, env, folder / "bentoml.log", timeout=180)


def test_bento_imports_only_its_own_code(
    serving_lab: ServingLab, jpeg_paths: list[Path], tmp_path: Path
) -> None:
    import bentoml

    packaged = package(serving_lab.settings, serving_lab.workspace, from_workspace=True)
    src = Path(bentoml.get(packaged.bento_tag).path) / "src"
    assert (src / "pneumo" / "__init__.py").is_file() and (src / "serving" / "api.py").is_file()
    alone = tmp_path / "elsewhere"
    alone.mkdir()
    server = serve_bento_alone(packaged.bento_tag, serving_lab, alone)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            data = jpeg_paths[0].read_bytes()
            response = client.post("/predict", content=data, headers={"content-type": "image/jpeg"})
            assert response.status_code == 200, response.text
    finally:
        server.stop()
    origins = ORIGIN.findall(server.log.read_text(errors="replace"))
    # With one worker the front service holds the model itself; more run model services.
    expected = {"front", "model"} if serving_lab.settings.serve.workers > 1 else {"front"}
    assert {service for service, *_ in origins} == expected, server.log_tail()
    for _, pneumo_dir, serving_dir, elsewhere in origins:
        assert Path(pneumo_dir) == src / "pneumo" and Path(serving_dir) == src / "serving"
        assert elsewhere == "0"
        assert not Path(pneumo_dir).is_relative_to(REPO)
