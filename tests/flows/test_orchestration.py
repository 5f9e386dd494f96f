"""Retry policy, workspace lock and failure modes of the retrain flow (no training needed)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.retrain import is_transient, retrain
from pneumo.errors import ConfigError, ContractError
from pneumo.locking import RunInProgressError, workspace_lock

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (ConnectionError("refused"), True),
        (TimeoutError("slow"), True),
        (OSError(5, "Input/output error"), True),
        (FileNotFoundError("models/model.pt"), False),
        (ValueError("bad params"), False),
        (ContractError("broken contract"), False),
        (None, False),
    ],
)
def test_only_transient_failures_are_retried(exc: BaseException | None, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_mlflow_server_errors_are_transient_client_errors_are_not() -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE

    assert is_transient(MlflowException("down", error_code=TEMPORARILY_UNAVAILABLE))
    import requests

    try:
        try:
            raise requests.ConnectionError(
                "Max retries exceeded with url: /api/2.0/mlflow/runs/get"
            )
        except requests.ConnectionError as cause:
            raise MlflowException("API request to http://127.0.0.1:5000 failed") from cause
    except MlflowException as unreachable:
        assert is_transient(unreachable)
    assert not is_transient(MlflowException("no such model", error_code=RESOURCE_DOES_NOT_EXIST))


def test_second_run_on_a_workspace_is_refused_naming_the_first(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys,time; from pathlib import Path; from pneumo.locking import workspace_lock\n"
         "with workspace_lock(Path(sys.argv[1]), \"flow run 'brave-otter'\"):\n"
         "    print('locked', flush=True); time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunInProgressError, match=rf"flow run 'brave-otter' \(pid {holder.pid}"):
            with workspace_lock(tmp_path, "second"):
                pass
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    with workspace_lock(tmp_path, "third"):  # released when the holder died
        pass


def _workspace(tmp_path: Path, data: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(REPO / name, ws / name)
    shutil.copytree(REPO / "pneumo", ws / "pneumo", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=ws, check=True)
    subprocess.run(
        [sys.executable, "-m", "pneumo.cli", "params", "set", f"data.root={data}"],
        cwd=ws,
        check=True,
    )
    return ws


def test_bad_params_fail_before_anything_runs(
    prefect_harness, tmp_path: Path, synthetic_root: Path
) -> None:
    ws = _workspace(tmp_path, synthetic_root)
    (ws / "params.yaml").write_text((ws / "params.yaml").read_text().replace("seed: 42", "sed: 42"))
    state = retrain(workspace=str(ws), return_state=True)
    assert state.is_failed()
    with pytest.raises(ConfigError, match="unknown key 'split.sed'"):
        state.result()
    assert not (ws / "data").exists()


def test_broken_data_contract_fails_the_flow_with_the_gx_summary(
    prefect_harness, tmp_path: Path, real_root: Path
) -> None:
    data = tmp_path / "chest_xray"
    (data / "train" / "NORMAL").mkdir(parents=True)
    (data / "train" / "PNEUMONIA").mkdir(parents=True)
    for f in sorted((real_root / "train" / "PNEUMONIA").iterdir())[:120]:
        shutil.copy(f, data / "train" / "PNEUMONIA" / f.name)  # no normals: balance bound broken
    ws = _workspace(tmp_path, data)
    state = retrain(workspace=str(ws), return_state=True)
    assert state.is_failed()
    with pytest.raises(ContractError, match=r"expect_column_mean_to_be_between\(is_pneumonia\)"):
        state.result()
    assert not (ws / "data" / "split.parquet").exists()


# ------------------------------------------------------------------ stage tasks and progress


def _git_dvc_project(root: Path) -> Path:
    """A git + DVC project with one trivial stage, as a user's checkout is."""
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    (root / "dvc.yaml").write_text(
        "stages:\n  hello:\n    cmd: echo hello > hello.txt\n    outs:\n      - hello.txt\n"
    )
    return root


def test_dvc_output_keeps_its_stage_lines_and_drops_the_git_hint(tmp_path: Path) -> None:
    from flows.stages import readable_lines

    root = _git_dvc_project(tmp_path / "project")
    run = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", "--single-item", "hello"],
        cwd=root, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "git add" in run.stdout  # what DVC prints in a git checkout
    kept = list(readable_lines(iter(run.stdout.splitlines())))
    assert "Running stage 'hello':" in kept and "> echo hello > hello.txt" in kept
    assert not [line for line in kept if "git add" in line or "autostage" in line]
    assert "Use `dvc push` to send your updates to remote storage." not in kept


def test_changed_stages_follow_dvc_status(prefect_harness, tmp_path: Path) -> None:
    from prefect import flow

    from flows.stages import changed_stages, stages_to_run

    root = _git_dvc_project(tmp_path / "project")

    @flow
    def plan() -> list[str]:
        return changed_stages(root)

    assert plan() == ["hello"] and stages_to_run(root, ["hello"]) == ["hello"]
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-q"], cwd=root, check=True)
    assert plan() == [] and stages_to_run(root, []) == []


def test_training_progress_becomes_an_artifact_epoch_by_epoch(
    prefect_harness, tmp_path: Path
) -> None:
    import json

    from prefect import flow
    from prefect.client.orchestration import get_client

    from flows.stages import TrainingProgress

    progress_file = tmp_path / "progress" / "train.jsonl"
    row = {"train_loss": 0.5, "val_log_loss": 0.4, "val_roc_auc": 0.9}

    @flow
    def follow() -> list[tuple[int, float]]:
        progress = TrainingProgress(progress_file, epochs=4)
        seen = []
        with progress_file.open("a") as handle:
            for epoch in (1, 2):
                handle.write(json.dumps({**row, "epoch": epoch}) + "\n")
            handle.write('{"epoch": 3, "train_lo')  # a line still being written
            handle.flush()
            progress.poll()
            seen.append((progress.done, _progress_of(progress.artifact)))
            handle.write('ss": 0.3, "val_log_loss": 0.35, "val_roc_auc": 0.95}\n')
        progress.close("ran")
        seen.append((progress.done, _progress_of(progress.artifact)))
        return seen

    def _progress_of(artifact_id) -> float:
        with get_client(sync_client=True) as client:
            return next(a.data for a in client.read_artifacts() if a.id == artifact_id)

    assert follow() == [(2, 50.0), (3, 75.0)]
    with get_client(sync_client=True) as client:
        artifact = next(a for a in client.read_artifacts() if a.key == "train-progress")
    assert artifact.type == "progress"
    assert artifact.description == (
        "epoch 3/4: train loss 0.3000, val loss 0.3500, val ROC-AUC 0.9500"
    )


# ------------------------------------------------------------------ the decision artifact


def _decision(**changes: object) -> dict:
    base = {
        "version": 1, "run_id": "abc", "verdict": "promoted: v1 is the champion",
        "newly_registered": True, "champion_now": 1, "decided_at": "2026-01-01T00:00:00+00:00",
        "reasons": [], "comparison": {}, "tracking_uri": "sqlite:////ws/mlruns.db",
        "run_url": "http://127.0.0.1:5000/#/experiments/1/runs/abc",
    }  # fmt: skip
    return {**base, **changes}


def test_a_rerun_that_changed_nothing_says_the_champion_was_kept(tmp_path: Path) -> None:
    from flows.retrain import decision_markdown, run_headline

    ran = {"train": "ran", "evaluate": "ran"}
    skipped = dict.fromkeys(ran, "skipped (unchanged)")
    assert run_headline(_decision(), ran) == "promoted: v1 is the champion"
    assert run_headline(_decision(newly_registered=False), skipped) == "unchanged: v1 kept"
    # A champion rolled back by hand since: the artifact names the champion there is now.
    assert run_headline(_decision(newly_registered=False, version=2), skipped) == "unchanged: v1 kept"
    page = decision_markdown(_decision(newly_registered=False), skipped, "pneumo:v1-x", tmp_path)
    assert "**Decision:** unchanged: v1 kept" in page and "promoted" in page.split("\n")[4]
    docs = (tmp_path / "reports" / "data_docs" / "index.html").resolve()
    assert f"on disk `{docs}`" in page and "file://" not in page  # no link a browser refuses
    linked = decision_markdown(_decision(newly_registered=False, data_docs_url="http://m/d.html"),
                               skipped, None, tmp_path)  # fmt: skip
    assert "[in the MLflow run](http://m/d.html)" in linked
    assert "[abc](http://127.0.0.1:5000/#/experiments/1/runs/abc)" in page
    assert "mlflow ui --backend-store-uri sqlite:////ws/mlruns.db" in page


# ------------------------------------------------------------------ where runs are recorded


def _recorded_runs(prefect_home: Path) -> list[tuple[str, str]]:
    import sqlite3

    with sqlite3.connect(prefect_home / "prefect.db") as db:
        return db.execute(
            "SELECT flow.name, flow_run.state_type FROM flow_run JOIN flow ON flow.id = "
            "flow_run.flow_id"
        ).fetchall()


def test_runs_from_the_command_line_are_recorded_in_prefect_home(
    tmp_path: Path, tool_homes: Path, synthetic_root: Path
) -> None:
    """Prefect's own temporary server (healthcheck) and retrain's early one store alike."""
    import os

    from prefect.settings import PREFECT_HOME

    home = Path(os.environ["PREFECT_HOME"])
    assert home.is_relative_to(tool_homes) and PREFECT_HOME.value() == home
    ws = _workspace(tmp_path, synthetic_root)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    pneumo = [sys.executable, "-m", "pneumo.cli", "--params", str(ws / "params.yaml")]
    check = subprocess.run([*pneumo, "healthcheck"],
                           env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert check.returncode == 0, check.stderr[-3000:]
    (ws / "params.yaml").write_text("split:\n  sed: 42\n")  # fails inside the flow, quickly
    retrain_run = subprocess.run([*pneumo, "retrain"],
                                 env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert retrain_run.returncode == 1 and "unknown key 'split.sed'" in retrain_run.stderr
    assert "Error logging to API" not in retrain_run.stderr  # logs delivered before the stop
    runs = _recorded_runs(home)
    assert ("healthcheck", "COMPLETED") in runs and ("retrain", "FAILED") in runs


def test_the_decision_says_how_long_each_stage_took(tmp_path: Path) -> None:
    """Time to champion, stage by stage (issue 26): in the Prefect summary and a timing file."""
    import json

    from flows.retrain import decision_markdown, write_stage_minutes

    ran = {"train": "ran", "evaluate": "ran"}
    minutes = {"train": 5.21, "evaluate": 0.42, "register": 0.1, "package": 0.3}
    page = decision_markdown(_decision(), ran, None, tmp_path, minutes)
    assert "| stage | status | minutes |" in page
    assert "| train | ran | 5.2 |" in page and "| package | done | 0.3 |" in page
    assert "| **total** | | 6.0 |" in page
    written = json.loads(write_stage_minutes(tmp_path, minutes).read_text())
    assert written["minutes"]["train"] == 5.21 and written["total_minutes"] == 6.03
