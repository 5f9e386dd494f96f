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
