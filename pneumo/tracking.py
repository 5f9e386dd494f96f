"""The one place that talks to MLflow tracking: one run per training, reopened by evaluation.

The default backend is an SQLite file in the workspace (``sqlite:///mlruns.db``), so
``mlflow ui --backend-store-uri sqlite:///mlruns.db`` shows every run without a server.
"""

from __future__ import annotations

import logging
import os
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow  # telemetry is switched off in pneumo/__init__.py, before this import
import numpy as np
import yaml

from pneumo.config import Settings, TrackingSettings
from pneumo.workspace import Workspace, sha256_file

log = logging.getLogger(__name__)

MODEL_NAME = "model"  # the logged model's name inside the run
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store
# A team server given as MLFLOW_TRACKING_URI wins over tracking.uri. Read once, as the process
# starts: MLflow copies every URI passed to mlflow.set_tracking_uri into that variable (for its
# subprocesses), so later it would only echo whichever store this process used last.
ENV_TRACKING_URI: str | None = os.environ.get("MLFLOW_TRACKING_URI") or None


def resolve_uri(uri: str, workspace: Workspace) -> str:
    """The store to use: ``MLFLOW_TRACKING_URI`` (a team server) wins over ``uri`` (params.yaml).

    A relative ``sqlite:///file.db`` is relative to the workspace, not the current directory.
    """
    uri = ENV_TRACKING_URI or uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not Path(uri[len(prefix) :]).is_absolute():
        return prefix + str((workspace.root / uri[len(prefix) :]).resolve())
    return uri


def configure(settings: TrackingSettings, workspace: Workspace) -> str:
    """Point MLflow at the configured store and experiment; return the experiment id."""
    uri = resolve_uri(settings.uri, workspace)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(settings.experiment)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:"):
        # Keep artifacts in the workspace, not in whatever directory the process started from.
        artifact_location = workspace.mlflow_artifacts.resolve().as_uri()
    return mlflow.create_experiment(settings.experiment, artifact_location=artifact_location)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 0.1}} -> {"train.lr": 0.1}: params.yaml keys as MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def git_commit(root: Path) -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def dvc_tags(root: Path) -> dict[str, str]:
    """Hash of dvc.lock and the DVC hash of the preprocessed arrays, when the pipeline has run."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return {}
    tags = {"dvc_lock_sha256": sha256_file(lock)}
    try:
        stages = yaml.safe_load(lock.read_text()).get("stages", {})
        for out in stages.get("preprocess", {}).get("outs", []):
            if out.get("path") == "data/arrays" and "md5" in out:
                tags["dvc_arrays_md5"] = out["md5"]
    except (yaml.YAMLError, AttributeError):
        log.warning("dvc.lock is not readable YAML; logging only its hash")
    return tags


@contextmanager
def training_run(settings: Settings, workspace: Workspace, run_id: str | None) -> Iterator[str]:
    """Start (or, after an interruption, reopen) the training's run; yields its id."""
    experiment_id = configure(settings.tracking, workspace)
    if run_id is not None:
        try:
            mlflow.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            log.warning("MLflow run %s of the checkpoint is gone; starting a new run", run_id)
            run_id = None
    with mlflow.start_run(run_id=run_id, experiment_id=experiment_id) as run:
        if run_id is None:
            mlflow.log_params(flatten(settings.model_dump(mode="json", by_alias=True)))
            tags = {"pipeline_step": "train", **dvc_tags(workspace.root)}
            commit = git_commit(workspace.root)
            if commit:
                tags["git_commit"] = commit
            mlflow.set_tags(tags)
        try:
            yield run.info.run_id
        except KeyboardInterrupt:
            mlflow.end_run(status="KILLED")  # resumable: the next `pneumo train` reopens it
            raise


def log_dataset(
    path: Path, images: np.ndarray, labels: np.ndarray, context: str, sha256: str | None = None
) -> None:
    """Record which data version the run used (digest = hash of the arrays file)."""
    with warnings.catch_warnings():
        # MLflow registers two local-file source classes and warns that it picks one of them.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        dataset = mlflow.data.from_numpy(
            features=images,
            targets=labels,
            source=str(Path(path).resolve()),
            name=Path(path).stem,
            digest=(sha256 or sha256_file(path))[:16],
        )
    mlflow.log_input(dataset, context=context)


def log_epoch(metrics: dict[str, float], epoch: int) -> None:
    mlflow.log_metrics(metrics, step=epoch)


def log_final(metrics: dict[str, float], artifacts: list[Path]) -> None:
    mlflow.log_metrics({f"final_{k}": v for k, v in metrics.items()})
    for path in artifacts:
        mlflow.log_artifact(str(path))


def log_pyfunc_model(model_path: Path, example: np.ndarray, probabilities: np.ndarray) -> str:
    """Log the model as an MLflow pyfunc (uint8 images -> probabilities); returns its model URI."""
    import torch
    import torchvision

    from pneumo import mlflow_model

    signature = mlflow.models.infer_signature(example, probabilities)
    info = mlflow.pyfunc.log_model(
        name=MODEL_NAME,
        python_model=mlflow_model.__file__,
        artifacts={"model": str(model_path)},
        signature=signature,
        input_example=example,
        # Listed, not inferred: inference would load the model once more in a subprocess.
        pip_requirements=[
            f"torch=={torch.__version__.split('+')[0]}",
            f"torchvision=={torchvision.__version__.split('+')[0]}",
            f"mlflow=={mlflow.__version__}",
            "numpy",
            "pneumo",
        ],
    )
    return info.model_uri


def log_to_run(
    settings: Settings,
    workspace: Workspace,
    run_id: str,
    metrics: dict[str, float],
    files: list[Path],
    artifact_dir: str,
) -> None:
    """Reopen a finished run (e.g. the training's) and add metrics and files to it."""
    configure(settings.tracking, workspace)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(metrics)
        for path in files:
            mlflow.log_artifact(str(path), artifact_path=artifact_dir)


def log_standalone_run(
    settings: Settings,
    workspace: Workspace,
    step: str,
    files: list[Path],
    metrics: dict[str, float] | None = None,
) -> str:
    """A run of its own for a step that trains nothing to keep (e.g. `pneumo compare`)."""
    experiment_id = configure(settings.tracking, workspace)
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=step, tags={"pipeline_step": step}
    ) as run:
        if metrics:
            mlflow.log_metrics(metrics)
        for path in files:
            mlflow.log_artifact(str(path))
        return run.info.run_id


def run_url(settings: Settings, workspace: Workspace, run_id: str, ui: str = LOCAL_UI) -> str:
    """The MLflow UI page of a run: on the tracking server, or on `mlflow ui` for a local store."""
    uri = resolve_uri(settings.tracking.uri, workspace)
    experiment = mlflow.MlflowClient(uri).get_run(run_id).info.experiment_id
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else ui
    return f"{base}/#/experiments/{experiment}/runs/{run_id}"
