"""`pneumo package`: workspace or registry champion -> BentoML model store (-> Bento)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pytest

from pneumo import registry, tracking
from pneumo.cli import main
from pneumo.config import load_settings
from pneumo.data.preprocess import save_arrays
from pneumo.decision.metrics import binary_metrics
from pneumo.errors import PipelineOrderError
from pneumo.inference import predict_proba
from pneumo.models import save_model
from pneumo.registry.bento import PackagingError, import_champion
from pneumo.stored_model import DECISION_FILE, METRICS_FILE, MODEL_FILE, PRECISION_FILE
from pneumo.workspace import Workspace
from tests.serving.serving_support import ServingLab, make_workspace
from tests.synthetic import (
    OPTIONS,
    SIZE,
    synthetic_split,
    train_tiny_model,
    write_counterfactual,
)


def test_workspace_model_is_imported_once_with_its_files_and_labels(
    serving_lab: ServingLab,
) -> None:
    import bentoml

    tag, metadata, reused = import_champion(
        serving_lab.settings, serving_lab.workspace, from_workspace=True
    )
    assert tag == serving_lab.model_tag and reused  # same files: the stored model is reused
    stored = bentoml.models.get(tag)
    assert Path(stored.path).is_relative_to(serving_lab.home)  # never ~/bentoml
    ws = serving_lab.workspace
    for name, source in ((MODEL_FILE, ws.model), (DECISION_FILE, ws.decision)):
        assert Path(stored.path_of(name)).read_bytes() == source.read_bytes()
    assert json.loads(Path(stored.path_of(METRICS_FILE)).read_text())["test"]["roc_auc"] == 0.5
    assert stored.info.labels["source"] == "workspace"
    assert stored.info.labels["threshold"] == "0.500000"
    assert stored.info.metadata["image_size"] == 64
    assert metadata["metrics"] == {"roc_auc": 0.5, "accuracy": 0.5}
    # one digest per thing, each named: the weights file alone, and the served model
    from pneumo.stored_model import model_digest
    from pneumo.workspace import sha256_file

    assert stored.info.metadata["weights_sha256"] == sha256_file(ws.model)
    assert stored.info.metadata["sha256"] == model_digest(ws.model, ws.decision, ws.guard)


def test_missing_evaluation_says_which_step_to_run(tmp_path: Path, serving_lab: ServingLab) -> None:
    workspace = make_workspace(tmp_path)
    workspace.decision.unlink()
    with pytest.raises(PipelineOrderError, match="pneumo evaluate"):
        import_champion(serving_lab.settings, workspace, from_workspace=True)


def test_weights_that_are_not_a_pneumo_model_are_refused(
    tmp_path: Path, serving_lab: ServingLab
) -> None:
    workspace = make_workspace(tmp_path)
    workspace.model.write_bytes(b"not a model")
    with pytest.raises(PackagingError, match="not a pneumo model"):
        import_champion(serving_lab.settings, workspace, from_workspace=True)


@pytest.mark.slow
def test_cli_packages_the_workspace_model(
    serving_lab: ServingLab, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--params", str(serving_lab.params), "package", "--from-workspace"])
    assert code == 0
    out = capsys.readouterr().out
    version = serving_lab.model_tag.split(":")[1]
    assert f"model {serving_lab.model_tag}" in out and f"Bento pneumo-service:{version}" in out


# ---------------------------------------------------------------- the registry champion


@pytest.mark.slow
def test_registry_champion_is_packaged_with_its_version(
    serving_lab: ServingLab, tmp_path: Path
) -> None:
    import bentoml

    params = tmp_path / "params.yaml"
    shutil.copyfile(serving_lab.params, params)
    settings = load_settings(
        params,
        {
            "tracking.uri": f"sqlite:///{tmp_path / 'mlruns.db'}",
            "tracking.experiment": "serving-package",
            "registry.model_name": "pneumo-cnn-serving-test",
        },
    )
    workspace = Workspace(tmp_path)
    train_images, train_frame = synthetic_split(64, seed=1)
    test_images, test_frame = synthetic_split(120, seed=2)
    save_arrays(workspace.arrays("test"), test_images, test_frame)
    model = train_tiny_model(train_images, (train_frame["label"] == "PNEUMONIA").to_numpy(int))
    save_model(
        model, workspace.model, {"arch": "paper_cnn1", "image_size": SIZE, "options": OPTIONS}
    )
    decision = {"threshold": 0.5, "rule": "fixed", "tta": False}
    workspace.decision.write_text(json.dumps(decision))
    probabilities = predict_proba(model, test_images)
    labels = (test_frame["label"] == "PNEUMONIA").to_numpy(int)
    report = {
        "threshold": decision,
        "test": {**binary_metrics(labels, probabilities, 0.5), "ci": {}},
    }
    workspace.eval_metrics.parent.mkdir(parents=True, exist_ok=True)
    workspace.eval_metrics.write_text(json.dumps(report))
    experiment = tracking.ensure_experiment(settings.tracking, workspace)
    uri = tracking.resolve_uri(settings.tracking.uri, workspace)
    with tracking.fluent_store(uri), mlflow.start_run(experiment_id=experiment) as run:
        tracking.log_pyfunc_model(workspace.model, test_images[:2], probabilities[:2])
    workspace.run_id.write_text(run.info.run_id + "\n")
    write_counterfactual(workspace, model, test_images, labels, 0.5)
    # The stress stage's precision evidence travels with the version to the Bento.
    evidence = {"serve": "bf16", "bounds": {"max_probability_gap": 0.02}, "candidates": {}}
    workspace.precision.write_text(json.dumps(evidence))
    assert registry.register_and_gate(settings, workspace).passed

    tag, metadata, reused = import_champion(settings, workspace)  # default: the champion

    assert not reused and tag.startswith("pneumo-cnn-serving-test:v1-")
    assert tag.endswith("-bf16") and metadata["precision_allowed"] == "bf16"
    stored = bentoml.models.get(tag)
    assert json.loads(Path(stored.path_of(PRECISION_FILE)).read_text()) == evidence
    assert stored.info.labels["mlflow_version"] == "1"
    assert stored.info.labels["run_id"] == run.info.run_id
    assert stored.info.metadata["source"] == "registry"
    assert Path(stored.path_of(MODEL_FILE)).read_bytes() == workspace.model.read_bytes()
    stored_metrics = json.loads(Path(stored.path_of(METRICS_FILE)).read_text())
    assert stored_metrics["roc_auc"] == pytest.approx(report["test"]["roc_auc"])
    assert metadata["mlflow_version"] == "1" and metadata["threshold"] == 0.5
