"""Shared fixtures: where the real data lives, and small synthetic Kermany folders.

Every tool's home (Prefect's database and result storage, BentoML's stores, the config and cache
folders MLflow, DVC and matplotlib write to) is a temporary folder for the whole session, set in
``pytest_configure``: before any test module is collected, so before Prefect is first imported.
Nothing a test runs lands in the user's ``~/.prefect``, ``~/bentoml`` or ``~/.config``, nor on the
MLflow or Prefect server their environment names.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PNEUMO_SHARED_DATA", REPO.parent / "shared" / "data"))
# variable -> folder under the session's temporary homes
TOOL_HOMES = {
    "PREFECT_HOME": "prefect",
    "BENTOML_HOME": "bentoml",
    "XDG_CONFIG_HOME": "config",  # MLflow's and DVC's telemetry ids, Chromium's profile
    "XDG_CACHE_HOME": "cache",
    "MPLCONFIGDIR": "matplotlib",
}


# A developer's team servers: tests start their own where they need one, and report nowhere else.
SERVER_VARIABLES = ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")
_homes: Path | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _homes
    _homes = Path(tempfile.mkdtemp(prefix="pneumo-test-homes-"))
    for variable, folder in TOOL_HOMES.items():
        os.environ[variable] = str(_homes / folder)
    for variable in SERVER_VARIABLES:
        os.environ.pop(variable, None)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _homes is not None:
        shutil.rmtree(_homes, ignore_errors=True)


@pytest.fixture(scope="session")
def tool_homes() -> Path:
    """The session's temporary folder holding every tool's home (see TOOL_HOMES)."""
    assert _homes is not None
    return _homes


def _require(path: Path) -> Path:
    if not path.is_dir():
        message = f"real data not found at {path} (set PNEUMO_SHARED_DATA)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must exercise the real images, never skip them
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def real_root() -> Path:
    """The shared Kermany train/val folder (224 px, 5,232 images), read-only."""
    return _require(SHARED_DATA / "chest_xray")


@pytest.fixture(scope="session")
def originals_root() -> Path:
    """48 full-resolution radiographs in {NORMAL,PNEUMONIA}/ folders, read-only."""
    return _require(SHARED_DATA / "originals")


def write_image(
    path: Path, size: tuple[int, int] = (80, 72), seed: int = 0, mode: str = "L"
) -> Path:
    """A small random radiograph-like image; different seeds give different bytes."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0]), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


@pytest.fixture()
def synthetic_root(tmp_path: Path) -> Path:
    """A tiny Kermany-layout folder: 3 patients per class in train, one test image per class."""
    root = tmp_path / "chest_xray"
    seed = 0
    for split, patients in (("train", range(1, 4)), ("test", range(10, 11))):
        for p in patients:
            for k in range(2):
                seed += 1
                write_image(root / split / "NORMAL" / f"IM-{p:04d}-000{k + 1}.jpeg", seed=seed)
                seed += 1
                write_image(
                    root / split / "PNEUMONIA" / f"person{p}_bacteria_{seed}.jpeg", seed=seed
                )
    return root
