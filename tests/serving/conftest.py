"""Fixtures of the serving tests: a small model packaged into a temporary BentoML home, and the
service module imported against it (helpers in serving_support.py)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from pneumo.config import load_settings
from pneumo.config.params_file import set_param
from serving.service import MODEL_TAG_ENV, PARAMS_ENV
from tests.serving.serving_support import REPO, ServingLab, make_workspace


def _reset_bentoml_stores() -> None:
    """BentoML caches its store paths on first use; the lab's BENTOML_HOME must win in this
    test process (production code sets BENTOML_HOME for its `bentoml` children instead)."""
    from bentoml._internal.configuration.containers import BentoMLContainer

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
def serving_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServingLab]:
    from pneumo.registry.bento import import_champion

    root = tmp_path_factory.mktemp("serving")
    params = root / "params.yaml"
    shutil.copyfile(REPO / "params.yaml", params)
    home = root / ".bentoml"
    set_param(params, "serve.bentoml_home", str(home))
    workspace = make_workspace(root)
    settings = load_settings(params)
    saved_env = {k: os.environ.get(k) for k in ("BENTOML_HOME", MODEL_TAG_ENV, PARAMS_ENV)}
    tag, _, _ = import_champion(settings, workspace, from_workspace=True)
    # What the services read in their constructors (in-process and in servers).
    os.environ.update({"BENTOML_HOME": str(home), MODEL_TAG_ENV: tag, PARAMS_ENV: str(params)})
    _reset_bentoml_stores()
    yield ServingLab(root, params, settings, workspace, home, tag)
    for key, value in saved_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _reset_bentoml_stores()


@pytest.fixture(scope="session")
def service_module(serving_lab: ServingLab):  # -> the serving.service module
    """serving/service.py: importing it reads nothing; the services read the lab's settings and
    model (PNEUMO_PARAMS, PNEUMO_MODEL_TAG) when they are constructed."""
    import serving.service

    return serving.service


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
