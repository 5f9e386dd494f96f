"""Fixtures: a small real-data workspace and a briefly trained model (see realdata.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pneumo.config import Settings
from pneumo.workspace import Workspace
from tests.model.realdata import fast_settings, make_workspace


@pytest.fixture(scope="session")
def small_workspace(
    tmp_path_factory: pytest.TempPathFactory, real_root: Path, originals_root: Path
) -> Workspace:
    """256 train + 128 val real images; tests copy it before writing models into it."""
    return make_workspace(
        tmp_path_factory.mktemp("small"), real_root, originals_root, {"train": 256, "val": 128}
    )


@pytest.fixture(scope="session")
def briefly_trained(
    tmp_path_factory: pytest.TempPathFactory, real_root: Path, originals_root: Path
) -> tuple[Workspace, Settings]:
    """A model trained briefly on 640 real images: good enough for behavioural tests."""
    from pneumo.training.train import train

    workspace = make_workspace(
        tmp_path_factory.mktemp("trained"), real_root, originals_root, {"train": 640, "val": 160}
    )
    settings = fast_settings(**{"train.epochs": 8, "train.warmup_epochs": 1.0})
    train(settings, workspace, track=False)
    return workspace, settings
