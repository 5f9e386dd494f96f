"""Fixtures of the serving tests: a small model packaged into a temporary BentoML home, and the
service module imported against it (helpers in serving_support.py)."""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from pneumo.config import load_settings
from pneumo.params_file import set_param
from tests.serving.serving_support import REPO, ServingLab, make_workspace


@pytest.fixture(scope="session")
def serving_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServingLab]:
    from bentoml._internal.configuration.containers import BentoMLContainer

    from pneumo.package import import_champion

    root = tmp_path_factory.mktemp("serving")
    params = root / "params.yaml"
    shutil.copyfile(REPO / "params.yaml", params)
    home = root / ".bentoml"
    set_param(params, "serve.bentoml_home", str(home))
    workspace = make_workspace(root)
    settings = load_settings(params)
    saved_env = {
        k: os.environ.get(k) for k in ("BENTOML_HOME", "PNEUMO_MODEL_TAG", "PNEUMO_PARAMS")
    }
    tag, _, _ = import_champion(settings, workspace, from_workspace=True)
    # The service module reads these when it is imported (in-process and in servers).
    os.environ["PNEUMO_MODEL_TAG"] = tag
    os.environ["PNEUMO_PARAMS"] = str(params)
    yield ServingLab(root, params, settings, workspace, home, tag)
    for key, value in saved_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    for provider in (
        BentoMLContainer.bentoml_home,
        BentoMLContainer.bento_store_dir,
        BentoMLContainer.model_store_dir,
        BentoMLContainer.env_store_dir,
        BentoMLContainer.tmp_bento_store_dir,
        BentoMLContainer.bento_store,
        BentoMLContainer.tmp_bento_store,
        BentoMLContainer.model_store,
    ):
        provider.reset()


@pytest.fixture(scope="session")
def service_module(serving_lab: ServingLab):  # -> the serving.service module
    """serving/service.py imported against the lab's model and params."""
    if "serving.service" in sys.modules:
        return importlib.reload(sys.modules["serving.service"])
    return importlib.import_module("serving.service")


@pytest.fixture(scope="session")
def asgi_client(service_module) -> Iterator[TestClient]:
    """The service in-process (``to_asgi``), once per session: BentoML registers its Prometheus
    metrics globally, so a second app in the same process would fail on duplicates."""
    app = service_module.PneumoniaService.to_asgi()
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="session")
def jpeg_paths(originals_root: Path) -> list[Path]:
    paths = sorted(originals_root.rglob("*.jpeg"))
    assert len(paths) == 48
    return paths
