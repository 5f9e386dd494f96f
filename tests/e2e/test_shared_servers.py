"""The team set-up on real servers: PostgreSQL + MLflow (proxied artifacts), Prefect server + worker.

Every server runs on 127.0.0.1 on a free port, in a temporary folder, and is stopped by PID (see
tests/e2e/servers.py). pneumo is switched to them by settings only: MLFLOW_TRACKING_URI and
PREFECT_API_URL, exactly as infra/README.md tells a team to do. What the servers stored is read
back through their REST APIs, not through the client that wrote it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest

from pneumo import tracking
from pneumo.config import Settings, load_settings
from pneumo.workspace import Workspace
from tests.e2e.servers import (
    BIN,
    ServerStartError,
    client_env,
    mlflow_server,
    postgres_bin,
    postgres_server,
    prefect_env,
    prefect_server,
    prefect_worker,
    worker_log,
)
from tests.synthetic import (
    OPTIONS,
    SIZE,
    synthetic_split,
    train_tiny_model,
    write_counterfactual,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DECISION = {"threshold": 0.5, "rule": "fixed", "tta": False}


def _require_postgres() -> None:
    try:
        postgres_bin()
    except ServerStartError as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))  # .ci/run installs PostgreSQL: CI must never skip this
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """PostgreSQL backend + MLflow server with proxied artifacts; yields (URL, artifact folder)."""
    _require_postgres()
    artifacts = tmp_path_factory.mktemp("mlflow") / "artifacts"
    with postgres_server("mlflow") as backend, mlflow_server(backend, artifacts) as url:
        yield url, artifacts


def _api(url: str, path: str, **query: str) -> dict:
    response = httpx.get(f"{url}/api/2.0/mlflow/{path}", params=query, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _params(tmp: Path, experiment: str, model_name: str, uri: str | None = None) -> Path:
    """params.yaml pointing at ``uri``, or left at the embedded SQLite default when None."""
    params = tmp / "params.yaml"
    tracking_uri = f"  uri: {uri}\n" if uri else ""
    params.write_text(
        f"tracking:\n{tracking_uri}  experiment: {experiment}\n"
        f"registry:\n  model_name: {model_name}\ntrain:\n  threads: 1\n"
    )
    return params


@pytest.fixture(autouse=True)
def _restore_mlflow_globals() -> Iterator[None]:
    """This test sets MLflow's process-wide URIs, which MLflow copies into MLFLOW_TRACKING_URI and
    MLFLOW_REGISTRY_URI: undo all four, or later tests talk to this module's stopped server."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    variables = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved_env = {name: os.environ.get(name) for name in variables}
    saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    yield
    mlflow.set_tracking_uri(saved[0])
    registry_utils._registry_uri = saved[1]
    for name, value in saved_env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _trained_workspace(root: Path, settings: Settings) -> tuple[Workspace, str]:
    """What `pneumo train` + `pneumo evaluate` leave behind, tracked with pneumo's own functions."""
    from pneumo.data.preprocess import save_arrays
    from pneumo.decision.metrics import binary_metrics
    from pneumo.inference import predict_proba
    from pneumo.models import save_model

    ws = Workspace(root)
    train_images, train_frame = synthetic_split(64, seed=1)
    test_images, test_frame = synthetic_split(80, seed=2)
    save_arrays(ws.arrays("test"), test_images, test_frame)
    model = train_tiny_model(train_images, (train_frame["label"] == "PNEUMONIA").to_numpy(int))
    save_model(model, ws.model, {"arch": "paper_cnn1", "image_size": SIZE, "options": OPTIONS})
    probabilities = predict_proba(model, test_images)
    test_labels = (test_frame["label"] == "PNEUMONIA").to_numpy(int)
    metrics = binary_metrics(test_labels, probabilities, DECISION["threshold"])
    history = root / "reports" / "train_history.csv"
    history.parent.mkdir(parents=True, exist_ok=True)
    history.write_text("epoch,train_loss\n1,0.5\n")
    with tracking.training_run(settings, ws, None) as run_id:
        tracking.log_epoch({"train_loss": 0.5, "val_auc": 0.9}, 1)
        tracking.log_final({"val_auc": 0.9}, [history])
        tracking.log_pyfunc_model(ws.model, test_images[:2], probabilities[:2])
    ws.run_id.write_text(run_id + "\n")
    ws.decision.write_text(json.dumps(DECISION))
    ws.eval_metrics.parent.mkdir(parents=True, exist_ok=True)
    ws.eval_metrics.write_text(json.dumps({"threshold": DECISION, "test": {**metrics, "ci": {}}}))
    write_counterfactual(ws, model, test_images, test_labels, DECISION["threshold"])  # the stress stage
    return ws, run_id


def test_runs_versions_and_aliases_land_on_the_shared_server(
    tracking_server: tuple[str, Path], tmp_path: Path
) -> None:
    url, artifacts = tracking_server
    settings = load_settings(_params(tmp_path, "team-e2e", "pneumo-team-e2e", uri=url))

    ws, run_id = _trained_workspace(tmp_path, settings)
    # pneumo leaves MLflow's process-wide URIs alone; this test uses MLflow's own fluent API.
    mlflow.set_tracking_uri(url)
    mlflow.set_registry_uri(url)
    version = mlflow.register_model(f"runs:/{run_id}/{tracking.MODEL_NAME}", "pneumo-team-raw")
    client = mlflow.MlflowClient(tracking_uri=url, registry_uri=url)
    client.set_registered_model_alias("pneumo-team-raw", "champion", version.version)

    run = _api(url, "runs/get", run_id=run_id)["run"]
    assert run["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert "train.lr" in params and not [k for k in params if k.startswith("tracking.")]
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert metrics["val/best_auc"] == pytest.approx(0.9)
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["pipeline_step"] == "train"
    experiment = _api(url, "experiments/get-by-name", experiment_name="team-e2e")["experiment"]
    assert experiment["artifact_location"].startswith("mlflow-artifacts:")  # proxied, not a path
    alias = _api(url, "registered-models/alias", name="pneumo-team-raw", alias="champion")
    assert alias["model_version"]["version"] == version.version
    assert alias["model_version"]["run_id"] == run_id

    # Artifacts went through the server into its artifact store; nothing was written locally.
    stored = {p.name for p in artifacts.rglob("*") if p.is_file()}
    assert {"MLmodel", "model.pt", "train_history.csv"} <= stored
    assert not (tmp_path / "mlruns.db").exists() and not ws.mlflow_artifacts.exists()

    # The registered model loads back through the server and predicts as pneumo does.
    loaded = mlflow.pyfunc.load_model("models:/pneumo-team-raw@champion")
    example = np.full((2, SIZE, SIZE), 128, dtype=np.uint8)
    assert loaded.predict(example).shape == (2,)


def test_env_var_switches_the_registry_gate_to_the_shared_server(
    tracking_server: tuple[str, Path], tmp_path: Path
) -> None:
    """`MLFLOW_TRACKING_URI=... pneumo registry register` with params.yaml left at its default."""
    registry = pytest.importorskip("pneumo.registry")
    url, artifacts = tracking_server
    on_server = load_settings(_params(tmp_path, "team-gate", "pneumo-team-gate", uri=url))
    ws, run_id = _trained_workspace(tmp_path, on_server)  # as `pneumo train` on the server left it
    params = _params(tmp_path, "team-gate", "pneumo-team-gate")  # tracking.uri: SQLite default
    assert load_settings(params).tracking.uri.startswith("sqlite:")

    run = subprocess.run(
        [str(BIN / "pneumo"), "--params", str(params), "registry", "register"],
        cwd=tmp_path,
        env=client_env(MLFLOW_TRACKING_URI=url),
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert run.returncode == 0, run.stdout + run.stderr
    assert "verdict: promoted" in run.stdout, run.stdout
    assert not (tmp_path / "mlruns.db").exists()  # the default store was never touched
    alias = _api(url, "registered-models/alias", name="pneumo-team-gate", alias="champion")
    assert alias["model_version"]["run_id"] == run_id
    tags = {t["key"]: t["value"] for t in alias["model_version"]["tags"]}
    assert tags["validation_status"] == "passed"
    versions = _api(url, "model-versions/search", filter="name='pneumo-team-gate'")
    assert [v["version"] for v in versions["model_versions"]] == ["1"]
    assert list(artifacts.rglob("decision.json"))  # added to the version through the proxy

    status = registry.status(on_server, ws)
    assert status["tracking_uri"] == url
    assert status["aliases"]["champion"]["version"] == 1
    fetched = registry.download_version(on_server, ws, "champion", tmp_path / "fetched")
    assert fetched["version"] == 1
    assert (tmp_path / "fetched" / "model.pt").read_bytes() == ws.model.read_bytes()


# ---------------------------------------------------------------- Prefect server, pool, worker


def _prefect(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    run = subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, f"prefect {' '.join(args)}:\n{run.stdout}\n{run.stderr}"
    return run


def test_worker_runs_a_deployment_from_prefect_yaml(tmp_path: Path) -> None:
    """The team commands of infra/README.md: pool, `prefect deploy --all`, worker, run."""
    worker_env = {"PNEUMO_WORKSPACE": str(REPO)}  # prefect.yaml's pull step: run in this checkout
    with prefect_server(tmp_path / "server") as api_url:
        env = prefect_env(api_url, tmp_path / "client", **worker_env)
        _prefect(env, "work-pool", "create", "pneumo-process", "--type", "process")
        deployed = _prefect(env, "deploy", "--all")
        assert "retrain/pneumo-retrain" in deployed.stdout
        assert "healthcheck/pneumo-healthcheck" in deployed.stdout
        with prefect_worker(api_url, "pneumo-process", tmp_path / "worker", worker_env):
            started = _prefect(env, "deployment", "run", "healthcheck/pneumo-healthcheck")
            flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", started.stdout).group(1)
            state = _wait_for_final_state(api_url, flow_run_id, timeout=150)
            assert state["type"] == "COMPLETED", worker_log(tmp_path / "worker", "pneumo-process")

        flow_run = httpx.get(f"{api_url}/flow_runs/{flow_run_id}", timeout=30).json()
        assert flow_run["work_pool_name"] == "pneumo-process"
        assert flow_run["parameters"] == {"workspace": ".", "params": "params.yaml"}
        artifacts = httpx.post(
            f"{api_url}/artifacts/filter",
            json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}},
            timeout=30,
        ).json()
        report = next(a for a in artifacts if a["key"] == "pneumo-healthcheck")["data"]
        assert f"`{REPO}`" in report  # the worker ran in this checkout and loaded its params
        deployment = httpx.get(
            f"{api_url}/deployments/name/retrain/pneumo-retrain", timeout=30
        ).json()
        assert deployment["entrypoint"] == "flows/retrain.py:retrain"
        assert deployment["work_pool_name"] == "pneumo-process"
        assert deployment["schedules"][0]["schedule"]["cron"] == "0 3 * * 1"


def _wait_for_final_state(api_url: str, flow_run_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    state: dict = {}
    while time.monotonic() < deadline:
        state = httpx.get(f"{api_url}/flow_runs/{flow_run_id}", timeout=30).json()["state"]
        if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return state
        time.sleep(1)
    return state
