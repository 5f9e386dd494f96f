"""The monitoring lab: a small model, real validation images and their reference (once)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pneumo.config import Settings
from pneumo.workspace import Workspace
from tests.monitor.monitor_support import make_lab


@pytest.fixture(scope="session")
def monitor_lab(
    tmp_path_factory: pytest.TempPathFactory, real_root: Path
) -> tuple[Settings, Workspace]:
    return make_lab(tmp_path_factory.mktemp("monitor-lab"), real_root)
