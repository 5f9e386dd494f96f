"""Small real-data project copies for the end-to-end tests: a few hundred images, tiny settings."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.prefix) / "bin"  # the project's virtual environment
PROJECT_FILES = (
    "dvc.yaml",
    "params.yaml",
    "Makefile",
    "pyproject.toml",
    ".gitignore",
    ".dvcignore",
)
PROJECT_PACKAGES = ("pneumo", "flows", "serving")
QUICK_PARAMS = (
    "preprocess.image_size=64",
    "train.epochs=2",
    "evaluate.bootstrap_samples=50",
    # Two epochs on 260 images reach no useful floor; the gate itself is tested in tests/flows.
    "registry.min_roc_auc=0.0",
    "registry.min_sensitivity=0.0",
    "registry.min_specificity=0.0",
    "registry.min_counterfactual_sensitivity=0.0",
    "registry.min_counterfactual_specificity=0.0",
)


def real_subset(real_root: Path, dest: Path, per_class: dict[str, int]) -> Path:
    """Copy the first images of each class (by name, so whole patients mostly stay together)."""
    for label, count in per_class.items():
        target = dest / "train" / label
        target.mkdir(parents=True)
        for f in sorted((real_root / "train" / label).iterdir())[:count]:
            shutil.copy(f, target / f.name)
    return dest


def copy_project(ws: Path) -> Path:
    """The project's pipeline files and code in ``ws`` (its .venv linked to this environment)."""
    ws.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        shutil.copy2(REPO / name, ws / name)
    for package in PROJECT_PACKAGES:
        if (REPO / package).is_dir():
            shutil.copytree(
                REPO / package, ws / package, ignore=shutil.ignore_patterns("__pycache__")
            )
    # data.scope_root's folder, as a clone has it: its README only (no out-of-scope set)
    (ws / "data" / "scope").mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "data" / "scope" / "README.md", ws / "data" / "scope" / "README.md")
    (ws / ".venv").symlink_to(Path(sys.prefix))
    return ws


def set_params(ws: Path, *assignments: str) -> None:
    """`pneumo params set` in ``ws`` (each assignment is validated in turn)."""
    run = subprocess.run(
        [BIN / "pneumo", "params", "set", *assignments], cwd=ws, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
