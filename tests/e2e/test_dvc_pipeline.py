"""`make run DATA=...`: the retrain flow end to end on a few hundred real images (64 px).

The flow runs against a real Prefect server on 127.0.0.1, which must record it; the second run
with unchanged data skips every DVC stage and keeps the champion.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.servers import prefect_env, prefect_server

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.prefix) / "bin"
DATA_STAGES = ("ingest", "validate", "split", "preprocess")
MODEL_STAGES = ("train", "evaluate", "explain")
QUICK_PARAMS = (
    "preprocess.image_size=64",
    "train.epochs=2",
    "evaluate.bootstrap_samples=50",
    # Two epochs on 260 images reach no useful floor; the gate itself is tested in tests/flows.
    "registry.min_roc_auc=0.0",
    "registry.min_sensitivity=0.0",
    "registry.min_specificity=0.0",
)


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
    for name in ("dvc.yaml", "params.yaml", "Makefile", "pyproject.toml"):
        shutil.copy2(REPO / name, ws / name)
    for package in ("pneumo", "flows", "serving"):
        if (REPO / package).is_dir():
            shutil.copytree(
                REPO / package, ws / package, ignore=shutil.ignore_patterns("__pycache__")
            )
    (ws / ".venv").symlink_to(Path(sys.prefix))
    subprocess.run([BIN / "dvc", "init", "--no-scm", "-q"], cwd=ws, check=True)
    return ws


def make_run(ws: Path, data: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # -o: never rebuild the (symlinked) virtual environment from inside a test.
    return subprocess.run(
        ["make", "-o", ".venv/.installed", "run", f"DATA={data}"],
        cwd=ws, env={**env, "PATH": f"{BIN}:{env['PATH']}"}, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip


def _flow_runs(api_url: str) -> list[dict]:
    response = httpx.post(f"{api_url}/flow_runs/filter", json={"limit": 20}, timeout=30)
    response.raise_for_status()
    return response.json()


@pytest.mark.slow
def test_make_run_trains_registers_and_is_then_a_no_op(
    workspace: Path, real_root: Path, tmp_path: Path
) -> None:
    data = _subset(real_root, tmp_path / "chest_xray", {"NORMAL": 110, "PNEUMONIA": 150})
    subprocess.run([BIN / "pneumo", "params", "set", *QUICK_PARAMS], cwd=workspace, check=True)
    with prefect_server(tmp_path / "prefect") as api_url:
        env = prefect_env(api_url, tmp_path / "prefect-client")
        first = make_run(workspace, data, env)
        assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
        for stage in (*DATA_STAGES, *MODEL_STAGES):
            assert f"| {stage} | ran |" in first.stdout

        # Outputs of every stage.
        split = json.loads((workspace / "metrics" / "split.json").read_text())
        assert split["patients_in_two_splits"] == 0
        metrics = json.loads((workspace / "metrics" / "metrics.json").read_text())
        assert 0.0 <= metrics["test"]["roc_auc"] <= 1.0 and "ci" in metrics["test"]
        assert (workspace / "reports" / "data_docs" / "index.html").is_file()
        assert (workspace / "plots" / "evaluate" / "evaluation.png").is_file()
        assert (workspace / "plots" / "explain" / "gradcam_grid.png").is_file()

        # A champion in the registry.
        from pneumo.config import load_settings
        from pneumo.registry import status
        from pneumo.workspace import Workspace

        settings = load_settings(workspace / "params.yaml")
        aliases = status(settings, Workspace(workspace))["aliases"]
        assert "champion" in aliases
        champion = aliases["champion"]["version"]

        # The Prefect server recorded the flow run and its decision artifact.
        runs = [r for r in _flow_runs(api_url) if r["state_type"] == "COMPLETED"]
        assert runs, "no completed flow run recorded by the Prefect server"
        artifacts = httpx.post(f"{api_url}/artifacts/filter", json={"limit": 10}, timeout=30).json()
        assert any(a["key"] == "retrain-decision" for a in artifacts)

        second = make_run(workspace, data, env)
        assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
        for stage in (*DATA_STAGES, *MODEL_STAGES):
            assert f"| {stage} | skipped (unchanged) |" in second.stdout
        assert status(settings, Workspace(workspace))["aliases"]["champion"]["version"] == champion
        assert len([r for r in _flow_runs(api_url) if r["state_type"] == "COMPLETED"]) == 2

    shown = subprocess.run(
        [BIN / "dvc", "metrics", "show", "--json"],
        cwd=workspace,
        capture_output=True,
        text=True,
        check=True,
    )
    assert '"images"' in shown.stdout and '"roc_auc"' in shown.stdout


@pytest.mark.slow
def test_make_run_with_a_broken_contract_stops_before_the_split(
    workspace: Path, real_root: Path, tmp_path: Path
) -> None:
    import os

    data = _subset(real_root, tmp_path / "chest_xray", {"NORMAL": 10, "PNEUMONIA": 200})
    run = make_run(workspace, data, dict(os.environ))
    assert run.returncode != 0
    assert "expect_column_mean_to_be_between(is_pneumonia)" in run.stderr + run.stdout
    assert not (workspace / "data" / "split.parquet").exists()


@pytest.mark.slow
def test_make_run_against_shared_mlflow_and_prefect_servers(
    workspace: Path, real_root: Path, tmp_path: Path
) -> None:
    """The team set-up by settings alone: MLflow on PostgreSQL with proxied artifacts + Prefect."""
    from tests.e2e.servers import mlflow_server, postgres_server

    data = _subset(real_root, tmp_path / "chest_xray", {"NORMAL": 110, "PNEUMONIA": 150})
    subprocess.run([BIN / "pneumo", "params", "set", *QUICK_PARAMS], cwd=workspace, check=True)
    with (
        postgres_server() as pg,
        mlflow_server(pg, tmp_path / "artifacts") as tracking_uri,
        prefect_server(tmp_path / "prefect") as api_url,
    ):
        env = prefect_env(api_url, tmp_path / "prefect-client", MLFLOW_TRACKING_URI=tracking_uri)
        run = make_run(workspace, data, env)
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]

        api = f"{tracking_uri}/api/2.0/mlflow"
        alias = httpx.get(
            f"{api}/registered-models/alias",
            params={"name": "pneumo-cnn", "alias": "champion"},
            timeout=30,
        )
        assert alias.status_code == 200, alias.text
        version = alias.json()["model_version"]
        assert version["tags"] and any(t["key"] == "validation_status" for t in version["tags"])
        run_id = (workspace / "models" / "run_id.txt").read_text().strip()
        assert version["run_id"] == run_id
        logged = httpx.get(f"{api}/runs/get", params={"run_id": run_id}, timeout=30).json()["run"]
        metric_names = {m["key"] for m in logged["data"]["metrics"]}
        assert {"test_roc_auc", "test_accuracy"} <= metric_names  # evaluation reopened the run
        assert any(r["state_type"] == "COMPLETED" for r in _flow_runs(api_url))
    assert not (workspace / "mlruns.db").exists()  # nothing went to the embedded store
    assert list((tmp_path / "artifacts").rglob("model.pt"))  # artifacts proxied to the server
