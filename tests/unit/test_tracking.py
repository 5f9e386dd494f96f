"""How runs look in MLflow, and that tracking leaves no process-wide state behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from pneumo import tracking
from pneumo.config import Settings, TrackingSettings
from pneumo.workspace import Workspace

REPO = Path(__file__).resolve().parents[2]


def test_only_the_settings_that_shape_the_model_are_params() -> None:
    settings = Settings()
    params = tracking.model_params(settings)
    sections = {key.split(".")[0] for key in params}
    assert sections == {"model", "preprocess", "train"}
    assert params["model.arch"] == "resnet"
    assert params["model.options.widths"] == [32, 64, 128, 256]  # the chosen family only
    assert not [k for k in params if k.startswith("model.") and "paper_cnn" in k]
    assert params["preprocess.image_size"] == 128 and params["train.lr"] == settings.train.lr
    assert params["train.augment.rotation_degrees"] == settings.train.augment.rotation_degrees
    # How and where it runs does not shape the weights.
    assert not {"train.threads", "train.device", "model.tta", "model.batch_size"} & params.keys()


def test_run_name_says_what_ran_and_changes_with_the_recipe_only() -> None:
    settings = Settings()
    name = tracking.run_name(settings)
    assert name.startswith("resnet-128px-") and len(name.split("-")[-1]) == 8
    elsewhere = settings.model_copy(
        update={
            "serve": settings.serve.model_copy(update={"port": 4000}),
            "tracking": TrackingSettings(experiment="other"),
            "train": settings.train.model_copy(update={"threads": 3}),
        }
    )
    assert tracking.run_name(elsewhere) == name
    faster = settings.model_copy(update={"train": settings.train.model_copy(update={"lr": 0.01})})
    assert tracking.run_name(faster) != name
    small = settings.model_copy(
        update={
            "model": settings.model.model_copy(update={"arch": "paper_cnn2"}),
            "preprocess": settings.preprocess.model_copy(update={"image_size": 64}),
        }
    )
    assert tracking.run_name(small).startswith("paper_cnn2-64px-")


@pytest.mark.parametrize(
    ("key", "best", "name"),
    [
        ("train_loss", False, "train/loss"),
        ("train_accuracy", False, "train/accuracy"),
        ("lr", False, "train/lr"),
        ("val_roc_auc", False, "val/roc_auc"),
        ("val_log_loss", False, "val/log_loss"),
        ("val_roc_auc", True, "val/best_roc_auc"),
        ("best_epoch", True, "train/best_epoch"),
        ("epochs_run", True, "train/epochs_run"),
        ("train_minutes", True, "train/minutes"),
        ("seconds_per_epoch", True, "train/seconds_per_epoch"),
    ],
)
def test_training_keys_get_slash_names(key: str, best: bool, name: str) -> None:
    assert tracking.metric_name(key, best) == name


def test_data_version_prefers_dvc_lock(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    digests = {"train": "a" * 64, "val": "b" * 64}
    own = tracking.data_version(ws, digests)
    assert own.startswith("sha256:") and own == tracking.data_version(ws, dict(digests))
    assert tracking.data_version(ws, {**digests, "val": "c" * 64}) != own
    (tmp_path / "dvc.lock").write_text(
        "stages:\n  preprocess:\n    outs:\n    - path: data/arrays\n      md5: 0123abcd.dir\n"
    )
    assert tracking.data_version(ws, digests) == "dvc:0123abcd.dir"
    note = tracking.run_description(Settings(), ws, digests)
    assert "`dvc:0123abcd.dir`" in note and f"train.npz sha256: `{'a' * 64}`" in note
    assert "git commit:" in note and "dvc.lock sha256:" in note


def test_experiment_is_tagged_for_model_development(tmp_path: Path) -> None:
    settings = TrackingSettings(uri=f"sqlite:///{tmp_path / 'm.db'}", experiment="kind")
    ws = Workspace(tmp_path)
    experiment_id = tracking.ensure_experiment(settings, ws)
    client = MlflowClient(settings.uri)
    experiment = client.get_experiment(experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.artifact_location == (tmp_path / "mlartifacts").resolve().as_uri()
    # An older experiment gets the tag; a kind chosen in the UI is kept.
    old = client.create_experiment("older")
    tracking.ensure_experiment(settings.model_copy(update={"experiment": "older"}), ws)
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    client.set_experiment_tag(experiment_id, "mlflow.experimentKind", "genai_development")
    assert tracking.ensure_experiment(settings, ws) == experiment_id
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "genai_development"


def test_fluent_store_restores_mlflow_and_the_team_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mlflow.set_tracking_uri copies the URI into MLFLOW_TRACKING_URI; the block undoes both."""
    from mlflow.tracking._tracking_service import utils as tracking_utils

    ws = Workspace(tmp_path)
    store = f"sqlite:///{tmp_path / 'a.db'}"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = tracking_utils._tracking_uri
    with tracking.fluent_store(store):
        assert mlflow.get_tracking_uri() == store == os.environ["MLFLOW_TRACKING_URI"]
    assert "MLFLOW_TRACKING_URI" not in os.environ and tracking_utils._tracking_uri == before
    assert tracking.resolve_uri("sqlite:///b.db", ws).endswith("/b.db")  # no echo of a.db

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://team:5000")
    with tracking.fluent_store(store):
        pass
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://team:5000"
    assert tracking.resolve_uri("sqlite:///b.db", ws) == "http://team:5000"


def test_team_variable_is_read_when_used_not_at_import(tmp_path: Path) -> None:
    """A process that imported pneumo first still follows a variable set afterwards."""
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from pneumo.tracking import resolve_uri\n"
        "from pneumo.workspace import Workspace\n"
        "ws = Workspace(Path(sys.argv[1]))\n"
        "first = resolve_uri('sqlite:///a.db', ws)\n"
        "os.environ['MLFLOW_TRACKING_URI'] = 'http://mlflow:5000'\n"
        "print(first, resolve_uri('sqlite:///a.db', ws))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(REPO)
    run = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    first, second = run.stdout.split()
    assert first.endswith("/a.db") and second == "http://mlflow:5000"
