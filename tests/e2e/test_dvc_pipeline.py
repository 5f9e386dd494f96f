"""`make run DATA=...`: the retrain flow end to end on a few hundred real images (64 px).

The workspace is a git checkout, as a user's is. The flow runs against a real Prefect server on
127.0.0.1, which must record it with one task per stage and the training's progress; the second
run with unchanged data skips every DVC stage, keeps the champion and leaves git clean.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.e2e.servers import prefect_env, prefect_server
from tests.e2e.workspaces import BIN, QUICK_PARAMS, copy_project, real_subset, set_params

STAGES = ("ingest", "validate", "split", "preprocess", "train", "evaluate", "explain")
GIT = ["git", "-c", "user.name=pneumo tests", "-c", "user.email=tests@pneumo.invalid"]


def git(ws: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=ws, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Prefect server for this module's flows (~16 s to start); each test counts its own runs."""
    with prefect_server(tmp_path_factory.mktemp("prefect")) as api_url:
        yield api_url


@pytest.fixture()
def workspace(tmp_path: Path) -> Path:
    ws = copy_project(tmp_path / "ws")
    git(ws, "init", "-q")
    subprocess.run([BIN / "dvc", "init", "-q"], cwd=ws, check=True)
    git(ws, "add", "-A")
    git(ws, "commit", "-qm", "a fresh clone")
    return ws


def make_run(ws: Path, data: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # -o: never rebuild the (symlinked) virtual environment from inside a test.
    return subprocess.run(
        ["make", "-o", ".venv/.installed", "run", f"DATA={data}"],
        cwd=ws, env={**env, "PATH": f"{BIN}:{env['PATH']}"}, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip


def api(api_url: str, path: str, body: dict) -> list[dict]:
    response = httpx.post(f"{api_url}/{path}/filter", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def completed_runs(api_url: str) -> list[dict]:
    return [r for r in api(api_url, "flow_runs", {"limit": 20}) if r["state_type"] == "COMPLETED"]


def latest_artifact(api_url: str, key: str) -> dict:
    found = api(
        api_url, "artifacts", {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC"}
    )
    assert found, f"no artifact {key}"
    return found[0]


def task_log(api_url: str, name: str) -> list[dict]:
    """Log records of the (last) task run called ``name``, oldest first."""
    runs = api(
        api_url,
        "task_runs",
        {"task_runs": {"name": {"any_": [name]}}, "sort": "EXPECTED_START_TIME_DESC"},
    )
    assert runs, f"no task run {name}"
    body = {
        "logs": {"task_run_id": {"any_": [runs[0]["id"]]}},
        "sort": "TIMESTAMP_ASC",
        "limit": 200,
    }
    return api(api_url, "logs", body)


def dvc_status(ws: Path) -> dict:
    run = subprocess.run([BIN / "dvc", "status", "--json"], cwd=ws, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def _check_first_run(ws: Path, run: subprocess.CompletedProcess[str], api_url: str) -> None:
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    for stage in STAGES:
        assert f"| {stage} | ran |" in run.stdout
    assert "git add" not in run.stdout + run.stderr  # DVC's hint stays out of the log
    split = json.loads((ws / "metrics" / "split.json").read_text())
    assert split["patients_in_two_splits"] == 0
    metrics = json.loads((ws / "metrics" / "metrics.json").read_text())
    assert metrics["test"]["n"] == split["test"]["images"] and "ci" in metrics["test"]
    assert (ws / "reports" / "data_docs" / "index.html").is_file()
    assert (ws / "plots" / "evaluate" / "evaluation.png").is_file()
    assert (ws / "plots" / "explain" / "gradcam_grid.png").is_file()
    # `dvc metrics show`: one short line per stage (headline figures), readable in a terminal
    shown = subprocess.run([BIN / "dvc", "metrics", "show"], cwd=ws, capture_output=True,
                           text=True, check=True).stdout  # fmt: skip
    assert "metrics/summary/evaluate.json" in shown and "test_roc_auc" in shown
    assert max(len(line) for line in shown.splitlines()) < 200, shown
    timing = json.loads((ws / "metrics" / "timing" / "stages.json").read_text())
    assert set(STAGES) <= set(timing["minutes"]) and timing["total_minutes"] > 0
    assert "| train | ran | " in run.stdout  # with its minutes

    # One task per stage, whose log streamed while it ran: training's epochs are seconds apart
    # from its start (a log posted only at the end would carry one timestamp).
    log = task_log(api_url, "train")
    messages = [record["message"] for record in log]
    assert "> pneumo train" in messages
    epochs = [i for i, m in enumerate(messages) if "pneumo.training.train: epoch " in m]
    assert len(epochs) == 2, messages
    started, last_epoch = (
        datetime.fromisoformat(log[i]["timestamp"])
        for i in (messages.index("> pneumo train"), epochs[-1])
    )
    assert (last_epoch - started).total_seconds() >= 1
    progress = latest_artifact(api_url, "train-progress")
    assert progress["type"] == "progress" and progress["data"] == 100.0
    assert progress["description"].startswith("epoch 2/2: train loss ")


@pytest.mark.slow
def test_make_run_trains_registers_and_is_then_a_no_op_that_leaves_git_clean(
    workspace: Path, real_root: Path, tmp_path: Path, prefect_api: str
) -> None:
    data = real_subset(real_root, tmp_path / "chest_xray", {"NORMAL": 110, "PNEUMONIA": 150})
    set_params(workspace, *QUICK_PARAMS)
    api_url, runs_before = prefect_api, len(completed_runs(prefect_api))
    env = prefect_env(api_url, tmp_path / "prefect-client")
    first = make_run(workspace, data, env)
    _check_first_run(workspace, first, api_url)
    from pneumo.config import load_settings
    from pneumo.registry import status
    from pneumo.workspace import Workspace

    settings = load_settings(workspace / "params.yaml")
    champion = status(settings, Workspace(workspace))["aliases"]["champion"]["version"]
    decision = latest_artifact(api_url, "retrain-decision")["data"]
    assert f"**Decision:** promoted: v{champion} is the champion" in decision
    _links_open_in_a_browser(workspace, decision, tmp_path)
    git(workspace, "add", "-A")
    git(workspace, "commit", "-qm", "first run")

    started = time.monotonic()
    second = make_run(workspace, data, env)
    print(f"no-op make run: {time.monotonic() - started:.1f} s")
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    for stage in STAGES:
        assert f"| {stage} | skipped (unchanged) |" in second.stdout
    assert status(settings, Workspace(workspace))["aliases"]["champion"]["version"] == champion
    assert len(completed_runs(api_url)) == runs_before + 2
    decision = latest_artifact(api_url, "retrain-decision")["data"]
    assert f"**Decision:** unchanged: v{champion} kept" in decision
    run_id = (workspace / "models" / "run_id.txt").read_text().strip()
    assert f"/runs/{run_id}?workflowType=machine_learning)" in decision
    # the Data Docs over HTTP, in the MLflow run: the Prefect UI cannot open file:// links
    assert f"/runs/{run_id}/artifacts/data_docs/index.html?" in decision
    assert "file://" not in decision
    assert git(workspace, "status", "--porcelain") == ""

    # Deterministic reruns of stages that mint no new MLflow run change no tracked file either.
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    for stage in ("validate", "evaluate"):
        command = [BIN / "dvc", "repro", "--force", "--single-item", stage]
        subprocess.run(command, cwd=workspace, env=env, check=True, capture_output=True)
        assert git(workspace, "status", "--porcelain") == "", stage

    # `dvc metrics show`: the stages' headline figures; timings are this machine's, git-ignored.
    shown = subprocess.run([BIN / "dvc", "metrics", "show", "--json"], cwd=workspace,
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert '"test_roc_auc"' in shown and '"shortcut_auc"' in shown and '"val_roc_auc"' in shown
    assert "metrics/timing" not in shown
    assert '"train_minutes"' in (workspace / "metrics" / "timing" / "train.json").read_text()
    git(workspace, "check-ignore", "-q", "metrics/timing/train.json")

    # Where results are logged, and how many cores work, rerun nothing; a real change does.
    for assignment, stale in (
        ("tracking.experiment=renamed", {}),
        ("train.threads=1", {}),
        ("evaluate.bootstrap_samples=51", {"evaluate"}),
        ("train.lr=0.001", {"train"}),
    ):
        set_params(workspace, assignment)
        assert set(dvc_status(workspace)) == set(stale), assignment
        git(workspace, "checkout", "params.yaml")


@pytest.mark.slow
def test_make_run_with_a_broken_contract_stops_before_the_split(
    workspace: Path, real_root: Path, tmp_path: Path, prefect_api: str
) -> None:
    data = real_subset(real_root, tmp_path / "chest_xray", {"NORMAL": 10, "PNEUMONIA": 200})
    # (without PREFECT_API_URL a run starts a local server: tests/unit/test_team_setup.py)
    run = make_run(workspace, data, prefect_env(prefect_api, tmp_path / "prefect-client"))
    assert run.returncode != 0
    assert "expect_column_mean_to_be_between(is_pneumonia)" in run.stderr + run.stdout
    assert not (workspace / "data" / "split.parquet").exists()


@pytest.mark.slow
def test_make_run_against_shared_mlflow_and_prefect_servers(
    workspace: Path, real_root: Path, tmp_path: Path, prefect_api: str
) -> None:
    """The team set-up by settings alone: MLflow on PostgreSQL with proxied artifacts + Prefect."""
    from tests.e2e.servers import mlflow_server, postgres_server

    data = real_subset(real_root, tmp_path / "chest_xray", {"NORMAL": 110, "PNEUMONIA": 150})
    set_params(workspace, *QUICK_PARAMS)
    with (
        postgres_server() as pg,
        mlflow_server(pg, tmp_path / "artifacts") as tracking_uri,
    ):
        api_url, runs_before = prefect_api, len(completed_runs(prefect_api))
        env = prefect_env(api_url, tmp_path / "prefect-client", MLFLOW_TRACKING_URI=tracking_uri)
        run = make_run(workspace, data, env)
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]

        mlflow_api = f"{tracking_uri}/api/2.0/mlflow"
        alias = httpx.get(
            f"{mlflow_api}/registered-models/alias",
            params={"name": "pneumo-cnn", "alias": "champion"},
            timeout=30,
        )
        assert alias.status_code == 200, alias.text
        version = alias.json()["model_version"]
        assert version["tags"] and any(t["key"] == "validation_status" for t in version["tags"])
        run_id = (workspace / "models" / "run_id.txt").read_text().strip()
        assert version["run_id"] == run_id
        logged = httpx.get(f"{mlflow_api}/runs/get", params={"run_id": run_id}, timeout=30)
        metric_names = {m["key"] for m in logged.json()["run"]["data"]["metrics"]}
        assert {"test/roc_auc", "test/accuracy"} <= metric_names  # evaluation reopened the run
        assert len(completed_runs(api_url)) == runs_before + 1
        decision = latest_artifact(api_url, "retrain-decision")["data"]
        assert f"]({tracking_uri}/#/experiments/" in decision  # the run, on the team server
    assert not (workspace / "mlruns.db").exists()  # nothing went to the embedded store
    assert list((tmp_path / "artifacts").rglob("model.pt"))  # artifacts proxied to the server


def _links_open_in_a_browser(ws: Path, decision: str, tmp_path: Path) -> None:
    """The Prefect artifact's Data Docs link opens in the MLflow UI (HTTP, as a browser allows
    from a web page) and the Data Docs on disk open as a file: both show the suites."""
    import re

    from tests.e2e.servers import mlflow_server
    from tests.serving.browser_support import offline_browser

    assert "file://" not in decision
    link = re.search(r"\[in the MLflow run\]\((http[^)]+)\)", decision)
    assert link, decision
    with mlflow_server(f"sqlite:///{ws / 'mlruns.db'}", tmp_path / "ui-artifacts") as url:
        target = re.sub(r"^http://[^/#]+", url, link.group(1))
        with offline_browser() as browser:
            page, _ = browser.new_page(90_000)
            page.goto(target)
            page.wait_for_timeout(2000)
            for _ in range(40):  # the UI loads, then renders the artifact in a frame
                if any("Expectation Suites" in frame.content() for frame in page.frames):
                    break
                page.wait_for_timeout(500)
            assert any("Expectation Suites" in f.content() for f in page.frames), target
            docs, _ = browser.new_page(60_000)
            docs.goto((ws / "reports" / "data_docs" / "index.html").resolve().as_uri())
            assert "Expectation Suites" in docs.content()
