"""Everything pneumo writes into MLflow runs: one run per training, reopened by evaluation.

A run looks the way MLflow's users expect:
- the experiment is tagged for model development (``mlflow.experimentKind``), so the UI opens on
  runs and models rather than the GenAI overview;
- the run is named ``<arch>-<image_size>px-<params hash>`` and its description holds the data
  version and the git commit;
- params are only what shapes the model (:func:`model_params`); metrics have slash prefixes
  (``train/``, ``val/``, ``test/``, see :func:`metric_name`); the train, val and test splits are
  dataset inputs with their digests.

No global state: the store is resolved at each call (``MLFLOW_TRACKING_URI``, a team server, wins
over ``tracking.uri``) and written through an ``MlflowClient`` bound to it. MLflow's fluent API,
which logging a model needs, is bound only inside :func:`fluent_store`. The registry's own calls
live in :mod:`pneumo.registry.client`. The default store is an SQLite file in the workspace, so
``mlflow ui --backend-store-uri sqlite:///mlruns.db`` shows every run without a server.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow  # telemetry is switched off in pneumo/__init__.py, before this import
import numpy as np
import yaml
from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag, Metric
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from pneumo.config import Settings, TrackingSettings
from pneumo.workspace import Workspace, sha256_file

log = logging.getLogger(__name__)

URI_VARIABLE = "MLFLOW_TRACKING_URI"  # a team server; read at each call, never cached
MODEL_NAME = "model"  # the logged model's name inside the run
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # read by the MLflow 3 UI
MODEL_DEVELOPMENT = "custom_model_development"  # the UI's "Machine learning" kind
TRAIN_EXCLUDED = frozenset({"threads", "device"})  # where training runs, not what it makes
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store


def resolve_uri(uri: str, workspace: Workspace) -> str:
    """The store to use: ``MLFLOW_TRACKING_URI`` (a team server) wins over ``uri`` (params.yaml).

    A relative ``sqlite:///file.db`` is relative to the workspace, not the current directory.
    """
    uri = os.environ.get(URI_VARIABLE) or uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not Path(uri[len(prefix) :]).is_absolute():
        return prefix + str((workspace.root / uri[len(prefix) :]).resolve())
    return uri


def client_for(settings: TrackingSettings, workspace: Workspace) -> MlflowClient:
    """A client bound to the configured store, registry included (nothing process-wide is
    changed, and a stray MLFLOW_REGISTRY_URI does not send versions elsewhere)."""
    uri = resolve_uri(settings.uri, workspace)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextmanager
def fluent_store(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (``mlflow.start_run``, ``log_model``) at ``uri`` for this block.

    ``mlflow.set_tracking_uri`` also copies the URI into ``MLFLOW_TRACKING_URI`` (for
    subprocesses); both are put back afterwards, so that variable keeps meaning "the team server".
    """
    # None = never set: MLflow falls back to its default again afterwards.
    saved_uri = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    saved_env = os.environ.get(URI_VARIABLE)
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved_uri)
        if saved_env is None:
            os.environ.pop(URI_VARIABLE, None)
        else:
            os.environ[URI_VARIABLE] = saved_env


def ensure_experiment(
    settings: TrackingSettings, workspace: Workspace, name: str | None = None
) -> str:
    """The experiment's id (``tracking.experiment`` unless ``name`` is given), created when new;
    tagged for model development unless it has a kind."""
    uri = resolve_uri(settings.uri, workspace)
    client = MlflowClient(tracking_uri=uri)
    name = name or settings.experiment
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        # An embedded store keeps its artifacts in the workspace, not where the process started.
        location = (
            workspace.mlflow_artifacts.resolve().as_uri() if uri.startswith("sqlite:") else None
        )
        tags = {EXPERIMENT_KIND_TAG: MODEL_DEVELOPMENT}
        return client.create_experiment(name, location, tags)
    if EXPERIMENT_KIND_TAG not in experiment.tags:  # a kind chosen in the UI is kept
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT)
    return experiment.experiment_id


# ---------------------------------------------------------------- what a run records


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


def model_params(settings: Settings) -> dict[str, Any]:
    """The settings that shape the weights: architecture, its options, input size, recipe."""
    train = settings.train.model_dump(mode="json", exclude=set(TRAIN_EXCLUDED))
    return {
        "model.arch": settings.model.arch,
        **flatten(settings.model.options(), "model.options."),
        "preprocess.image_size": settings.preprocess.image_size,
        **flatten(train, "train."),
    }


def params_hash(settings: Settings) -> str:
    """8 hex digits that differ when any of :func:`model_params` differs."""
    blob = json.dumps(model_params(settings), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:8]


def run_name(settings: Settings) -> str:
    """What ran, readable in the runs table: ``resnet-128px-1a2b3c4d``."""
    return f"{settings.model.arch}-{settings.preprocess.image_size}px-{params_hash(settings)}"


def metric_name(key: str, best: bool = False) -> str:
    """A training key as an MLflow name: val_roc_auc -> val/roc_auc, lr -> train/lr.

    ``best``: the validation metrics of the selected epoch, val_roc_auc -> val/best_roc_auc.
    """
    split, _, name = key.partition("_")
    if split not in ("train", "val") or not name:
        split, name = "train", key
    return f"{split}/{'best_' if best and split == 'val' else ''}{name}"


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


def data_version(workspace: Workspace, digests: dict[str, str]) -> str:
    """DVC's hash of data/arrays when dvc.lock records it, else the arrays' own sha256."""
    arrays_md5 = dvc_tags(workspace.root).get("dvc_arrays_md5")
    if arrays_md5:
        return f"dvc:{arrays_md5}"
    combined = hashlib.sha256("".join(digests[k] for k in sorted(digests)).encode())
    return f"sha256:{combined.hexdigest()[:16]}"


def run_description(settings: Settings, workspace: Workspace, digests: dict[str, str]) -> str:
    """The run's note (``mlflow.note.content``): what ran, on which data, from which commit."""
    lines = [
        f"**{settings.model.arch}** at {settings.preprocess.image_size} px, params hash "
        f"`{params_hash(settings)}` (`pneumo train`).",
        "",
        f"- data version: `{data_version(workspace, digests)}`",
    ]
    lines += [f"- {split}.npz sha256: `{digest}`" for split, digest in sorted(digests.items())]
    dvc = dvc_tags(workspace.root)
    if "dvc_lock_sha256" in dvc:
        lines.append(f"- dvc.lock sha256: `{dvc['dvc_lock_sha256']}`")
    lines.append(f"- git commit: `{git_commit(workspace.root) or 'unknown'}`")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the training run (fluent)


@contextmanager
def training_run(
    settings: Settings,
    workspace: Workspace,
    run_id: str | None,
    digests: dict[str, str] | None = None,
) -> Iterator[str]:
    """Start (or, after an interruption, reopen) the training's run; yields its id.

    ``digests``: sha256 of each split's arrays file, the data version in the run's description.
    """
    uri = resolve_uri(settings.tracking.uri, workspace)
    experiment_id = ensure_experiment(settings.tracking, workspace)
    if run_id is not None and not _run_exists(MlflowClient(tracking_uri=uri), run_id):
        log.warning("MLflow run %s of the checkpoint is gone; starting a new run", run_id)
        run_id = None
    new: dict[str, Any] = {}
    if run_id is None:
        digests = digests or {}
        tags = {"pipeline_step": "train", **dvc_tags(workspace.root)}
        commit = git_commit(workspace.root)
        if commit:
            tags["git_commit"] = commit
        description = run_description(settings, workspace, digests)
        new = {"run_name": run_name(settings), "tags": tags, "description": description}
    with fluent_store(uri), mlflow.start_run(run_id, experiment_id, **new) as run:
        if run_id is None:
            params = model_params(settings)
            params["data.version"] = data_version(workspace, digests or {})
            mlflow.log_params(params)
        try:
            yield run.info.run_id
        except KeyboardInterrupt:
            mlflow.end_run(status="KILLED")  # resumable: the next `pneumo train` reopens it
            raise


def _run_exists(client: MlflowClient, run_id: str) -> bool:
    try:
        client.get_run(run_id)
    except MlflowException:
        return False
    return True


def dataset_input(
    path: Path, images: np.ndarray, labels: np.ndarray, context: str, sha256: str | None = None
) -> DatasetInput:
    """One split as a dataset input of a run (digest = hash of its arrays file)."""
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
    return DatasetInput(dataset._to_mlflow_entity(), [InputTag(MLFLOW_DATASET_CONTEXT, context)])


def log_dataset(
    path: Path, images: np.ndarray, labels: np.ndarray, context: str, sha256: str | None = None
) -> None:
    """Record a split the active training run used (inside :func:`training_run`)."""
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_dataset needs the active run of tracking.training_run")
    mlflow.MlflowClient().log_inputs(
        run.info.run_id, [dataset_input(path, images, labels, context, sha256)]
    )


def log_epoch(metrics: dict[str, float], epoch: int) -> None:
    """One epoch's history row (``train_loss``, ``val_roc_auc``, ...) as train/ and val/ metrics."""
    mlflow.log_metrics({metric_name(k): v for k, v in metrics.items()}, step=epoch)


def log_final(metrics: dict[str, float], artifacts: list[Path]) -> None:
    """The training summary (best epoch, its val metrics, timings) and its files."""
    mlflow.log_metrics({metric_name(k, best=True): v for k, v in metrics.items()})
    for path in artifacts:
        mlflow.log_artifact(str(path))


def log_pyfunc_model(model_path: Path, example: np.ndarray, probabilities: np.ndarray) -> str:
    """Log the model as an MLflow pyfunc (uint8 images -> probabilities); returns its model URI."""
    import torch
    import torchvision

    from pneumo.tracking import pyfunc

    signature = mlflow.models.infer_signature(example, probabilities)
    info = mlflow.pyfunc.log_model(
        name=MODEL_NAME,
        python_model=pyfunc.__file__,
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


def log_model_to_run(
    uri: str,
    run_id: str,
    model_path: Path,
    example: np.ndarray,
    probabilities: np.ndarray,
) -> str:
    """Add the pyfunc model to a finished run in the store at ``uri`` (resolved)."""
    with fluent_store(uri):
        with mlflow.start_run(run_id=run_id):
            return log_pyfunc_model(model_path, example, probabilities)


# ---------------------------------------------------------------- later steps (client only)


def log_to_run(
    settings: Settings,
    workspace: Workspace,
    run_id: str,
    metrics: dict[str, float],
    files: Sequence[Path],
    artifact_dir: str,
    texts: dict[str, str] | None = None,
    datasets: Sequence[DatasetInput] = (),
) -> None:
    """Add a later step's metrics, files, text files and dataset inputs to a finished run."""
    client = client_for(settings.tracking, workspace)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path=artifact_dir or None)
    for name, text in (texts or {}).items():
        client.log_text(run_id, text, f"{artifact_dir}/{name}" if artifact_dir else name)
    if datasets:
        client.log_inputs(run_id, list(datasets))


def log_standalone_run(
    settings: Settings,
    workspace: Workspace,
    step: str,
    files: Sequence[Path],
    metrics: dict[str, float] | None = None,
    experiment: str | None = None,
) -> str:
    """A run of its own for a step that trains nothing to keep (e.g. `pneumo compare`), in
    ``experiment`` (default ``tracking.experiment``)."""
    experiment_id = ensure_experiment(settings.tracking, workspace, experiment)
    client = client_for(settings.tracking, workspace)
    run_id = client.create_run(
        experiment_id, run_name=step, tags={"pipeline_step": step}
    ).info.run_id
    try:
        log_to_run(settings, workspace, run_id, metrics or {}, files, "")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id)
    return run_id


def run_url(settings: Settings, workspace: Workspace, run_id: str, ui: str = LOCAL_UI) -> str:
    """The MLflow UI page of a run: on the tracking server, or on `mlflow ui` for a local store.

    ``workflowType=machine_learning`` opens the model-development view (the UI defaults to GenAI).
    """
    uri = resolve_uri(settings.tracking.uri, workspace)
    experiment = client_for(settings.tracking, workspace).get_run(run_id).info.experiment_id
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else ui
    return f"{base}/#/experiments/{experiment}/runs/{run_id}?workflowType=machine_learning"
