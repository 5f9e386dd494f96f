"""`make run DATA=...` (dvc repro) on a temporary workspace with a few hundred real images."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
STAGES = ("ingest", "validate", "split", "preprocess")


def _subset(real_root: Path, dest: Path, per_class: dict[str, int]) -> Path:
    """Copy the first images of each class (by name, so whole patients mostly stay together)."""
    for label, count in per_class.items():
        target = dest / "train" / label
        target.mkdir(parents=True)
        for f in sorted((real_root / "train" / label).iterdir())[:count]:
            shutil.copy(f, target / f.name)
    return dest


@pytest.fixture()
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    for name in ("dvc.yaml", "params.yaml", "Makefile"):
        shutil.copy2(REPO / name, ws / name)
    shutil.copytree(REPO / "pneumo", ws / "pneumo", ignore=shutil.ignore_patterns("__pycache__"))
    (ws / ".venv").symlink_to(Path(sys.prefix))
    subprocess.run([Path(sys.prefix) / "bin" / "dvc", "init", "--no-scm", "-q"], cwd=ws, check=True)
    return ws


def make_run(ws: Path, data: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.prefix) / 'bin'}:{os.environ['PATH']}"}
    # -o: never rebuild the (symlinked) virtual environment from inside a test.
    return subprocess.run(
        ["make", "-o", ".venv/.installed", "run", f"DATA={data}"],
        cwd=ws,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_make_run_builds_the_dataset_then_is_a_no_op(
    workspace: Path, real_root: Path, tmp_path: Path
) -> None:
    data = _subset(real_root, tmp_path / "chest_xray", {"NORMAL": 120, "PNEUMONIA": 200})
    first = make_run(workspace, data)
    assert first.returncode == 0, first.stdout + first.stderr
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first.stdout

    split = pd.read_parquet(workspace / "data" / "split.parquet")
    assert 300 <= len(split) <= 320  # byte-identical copies are set aside by ingest
    assert split.groupby("patient_id")["split"].nunique().max() == 1
    metrics = json.loads((workspace / "metrics" / "split.json").read_text())
    assert metrics["patients_in_two_splits"] == 0
    assert sum(metrics[s]["images"] for s in ("train", "val", "test")) == len(split)
    for name in ("train", "val", "test", "stats"):
        suffix = "json" if name == "stats" else "npz"
        assert (workspace / "data" / "arrays" / f"{name}.{suffix}").is_file()
    assert (workspace / "reports" / "data_docs" / "index.html").is_file()
    assert (workspace / "dvc.lock").is_file()

    second = make_run(workspace, data)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Running stage" not in second.stdout
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in second.stdout

    shown = subprocess.run(
        [Path(sys.prefix) / "bin" / "dvc", "metrics", "show", "--json"],
        cwd=workspace,
        capture_output=True,
        text=True,
        check=True,
    )
    assert '"train"' in shown.stdout and '"images"' in shown.stdout


@pytest.mark.slow
def test_make_run_with_a_broken_contract_stops_before_the_split(
    workspace: Path, real_root: Path, tmp_path: Path
) -> None:
    data = _subset(real_root, tmp_path / "chest_xray", {"NORMAL": 10, "PNEUMONIA": 200})
    run = make_run(workspace, data)
    assert run.returncode != 0
    assert "expect_column_mean_to_be_between(is_pneumonia)" in run.stderr
    assert not (workspace / "data" / "split.parquet").exists()
