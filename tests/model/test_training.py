"""Training on real radiographs: learning, reproducibility, resume, NaN guard, tracking."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

import pneumo.training.train as train_module
from pneumo.data.preprocess import load_arrays
from pneumo.errors import PipelineOrderError
from pneumo.inference import predict_proba
from pneumo.models import load_model
from pneumo.training.train import TrainingDivergedError, train
from pneumo.workspace import Workspace
from tests.model.realdata import copy_workspace, fast_settings


def _weights(workspace: Workspace) -> dict[str, torch.Tensor]:
    return torch.load(workspace.model, weights_only=True)["state_dict"]


def _same_weights(a: Workspace, b: Workspace) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _history(workspace: Workspace) -> list[dict[str, str]]:
    with open(workspace.train_history) as handle:
        return [
            {k: v for k, v in row.items() if k != "epoch_seconds"} for row in csv.DictReader(handle)
        ]


def test_loss_decreases_over_two_epochs(small_workspace: Workspace, tmp_path: Path) -> None:
    workspace = copy_workspace(small_workspace, tmp_path)
    settings = fast_settings(**{"train.augment.enabled": False, "train.label_smoothing": 0.0})
    result = train(settings, workspace, track=False)
    losses = [float(row["train_loss"]) for row in _history(workspace)]
    assert losses[1] < losses[0]
    assert result.epochs_run == 2 and workspace.model.is_file()
    summary = json.loads(workspace.train_metrics.read_text())
    assert 0.0 <= summary["val_roc_auc"] <= 1.0 and summary["best_epoch"] in (1, 2)
    assert workspace.train_curves.stat().st_size > 0


def test_same_params_and_seed_give_identical_weights(
    small_workspace: Workspace, tmp_path: Path
) -> None:
    settings = fast_settings()
    first = copy_workspace(small_workspace, tmp_path / "a")
    second = copy_workspace(small_workspace, tmp_path / "b")
    train(settings, first, track=False)
    train(settings, second, track=False)
    assert _same_weights(first, second)
    other_seed = copy_workspace(small_workspace, tmp_path / "c")
    train(fast_settings(**{"train.seed": 7}), other_seed, track=False)
    assert not _same_weights(first, other_seed)


def test_training_runs_deterministic_kernels_without_the_nan_fill(
    small_workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deterministic mode's NaN fill of new tensors (a debugging aid, ~12 % of a CPU step) is
    off while training, changes no weight, and the caller's settings come back afterwards."""
    flags = torch.utils.deterministic
    seen: list[tuple[bool, bool]] = []

    def record(_epoch: int, _row: dict[str, float]) -> None:
        seen.append((torch.are_deterministic_algorithms_enabled(), flags.fill_uninitialized_memory))

    settings, plain = fast_settings(), copy_workspace(small_workspace, tmp_path / "plain")
    train(settings, plain, track=False, on_epoch_end=record)
    assert seen == [(True, False), (True, False)]
    assert not torch.are_deterministic_algorithms_enabled() and flags.fill_uninitialized_memory

    original = train_module.deterministic

    @contextmanager
    def with_the_fill() -> Iterator[None]:
        with original():
            flags.fill_uninitialized_memory = True
            yield

    monkeypatch.setattr(train_module, "deterministic", with_the_fill)
    filled = copy_workspace(small_workspace, tmp_path / "filled")
    train(settings, filled, track=False)
    assert _same_weights(plain, filled)


def test_interrupted_run_resumes_to_the_uninterrupted_result(
    small_workspace: Workspace, tmp_path: Path
) -> None:
    settings = fast_settings(**{"train.epochs": 3})
    uninterrupted = copy_workspace(small_workspace, tmp_path / "whole")
    train(settings, uninterrupted, track=False)

    def interrupt_after_second_epoch(epoch: int, metrics: dict[str, float]) -> None:
        if epoch == 2:
            raise KeyboardInterrupt  # what Ctrl-C does between two batches

    resumed = copy_workspace(small_workspace, tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        train(settings, resumed, track=False, on_epoch_end=interrupt_after_second_epoch)
    assert resumed.checkpoint.is_file() and not resumed.model.exists()
    epochs_seen: list[int] = []
    train(settings, resumed, track=False, on_epoch_end=lambda e, m: epochs_seen.append(e))
    assert epochs_seen == [3]  # only the missing epoch ran
    assert _same_weights(uninterrupted, resumed)
    assert _history(uninterrupted) == _history(resumed)
    # Rerun once finished (DVC reruns the stage for a code change): no epoch, and the file is
    # kept byte for byte, so a registry that recorded this run's weights still agrees with it.
    before = resumed.model.read_bytes()
    epochs_seen.clear()
    train(settings, resumed, track=False, on_epoch_end=lambda e, m: epochs_seen.append(e))
    assert epochs_seen == [] and resumed.model.read_bytes() == before


def test_changed_params_do_not_resume_a_foreign_checkpoint(
    small_workspace: Workspace, tmp_path: Path
) -> None:
    workspace = copy_workspace(small_workspace, tmp_path)
    train(fast_settings(**{"train.epochs": 1}), workspace, track=False)
    epochs_seen: list[int] = []
    train(fast_settings(**{"train.epochs": 1, "train.lr": 1e-3}), workspace, track=False,
          on_epoch_end=lambda e, m: epochs_seen.append(e))  # fmt: skip
    assert epochs_seen == [1]


def test_nan_loss_stops_with_the_epoch_and_keeps_last_good_checkpoint(
    small_workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = copy_workspace(small_workspace, tmp_path)
    real_loss = train_module.batch_loss
    calls = {"n": 0}
    steps_per_epoch = 256 // 32

    def loss_that_explodes_in_epoch_two(*args: object) -> torch.Tensor:
        calls["n"] += 1
        loss = real_loss(*args)  # type: ignore[arg-type]
        return loss * float("nan") if calls["n"] > steps_per_epoch + 2 else loss

    monkeypatch.setattr(train_module, "batch_loss", loss_that_explodes_in_epoch_two)
    with pytest.raises(TrainingDivergedError, match="epoch 2") as failure:
        train(fast_settings(**{"train.epochs": 3}), workspace, track=False)
    assert "train.lr" in str(failure.value)
    checkpoint = torch.load(workspace.checkpoint, weights_only=True)
    assert checkpoint["epoch"] == 1
    assert all(
        torch.isfinite(t).all() for t in checkpoint["model"].values() if t.is_floating_point()
    )
    assert not workspace.model.exists()


def test_missing_arrays_say_which_step_to_run(tmp_path: Path) -> None:
    with pytest.raises(PipelineOrderError, match="pneumo preprocess"):
        train(fast_settings(), Workspace(tmp_path), track=False)


def test_training_is_tracked_in_one_mlflow_run(small_workspace: Workspace, tmp_path: Path) -> None:
    import mlflow

    from pneumo import tracking

    workspace = copy_workspace(small_workspace, tmp_path)
    settings = fast_settings(**{"train.epochs": 2, "tracking.experiment": "pneumo-test"})
    result = train(settings, workspace, track=True)
    run_id = workspace.run_id.read_text().strip()
    assert result.run_id == run_id
    uri = tracking.resolve_uri(settings.tracking.uri, workspace)
    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == tracking.run_name(settings)
    assert run.info.run_name.startswith(f"{settings.model.arch}-64px-")
    assert run.data.params["train.lr"] == str(settings.train.lr)
    assert run.data.params["data.version"].startswith(("sha256:", "dvc:"))
    assert not [k for k in run.data.params if k.startswith(("serve.", "score.", "tracking."))]
    assert "data version" in run.data.tags["mlflow.note.content"]
    assert [m.step for m in client.get_metric_history(run_id, "val/roc_auc")] == [1, 2]
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [1, 2]
    assert {"train/best_epoch", "val/best_roc_auc", "train/lr"} <= run.data.metrics.keys()
    assert not [k for k in run.data.metrics if "/" not in k]  # every metric has its prefix
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"train", "val"}
    assert {a.path for a in client.list_artifacts(run_id)} >= {
        "train_curves.png",
        "train_history.csv",
    }
    # The logged pyfunc predicts exactly what predict_proba does with the model file.
    [logged] = client.search_logged_models([run.info.experiment_id])
    images = load_arrays(workspace.arrays("val"))["images"][:4]
    with tracking.fluent_store(uri):
        via_mlflow = mlflow.pyfunc.load_model(logged.model_uri).predict(images)
    model, metadata = load_model(workspace.model)
    assert np.allclose(via_mlflow, predict_proba(model, images, tta=metadata["tta"]))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fp32_and_bf16_training_both_learn_real_radiographs(
    small_workspace: Workspace, tmp_path: Path, precision: str
) -> None:
    """bf16 autocast trains the same network (weights stay fp32); emulated where not native."""
    workspace = copy_workspace(small_workspace, tmp_path)
    settings = fast_settings(**{"train.precision": precision, "train.epochs": 5})
    result = train(settings, workspace, track=False)
    losses = [float(row["train_loss"]) for row in _history(workspace)]
    assert losses[-1] < losses[0]
    assert result.metrics["val_roc_auc"] > 0.75  # 256 real images, 5 epochs at 64 px
    weights = _weights(workspace)
    assert all(t.dtype == torch.float32 for t in weights.values() if t.is_floating_point())
    timing = json.loads(workspace.train_timing.read_text())
    assert timing["device"].startswith(f"cpu {precision}")


def _scripted_validation(
    monkeypatch: pytest.MonkeyPatch, key: str, values: list[float]
) -> list[dict[str, float]]:
    """Replace validation by a script of values of the monitored metric, one per epoch."""
    real = train_module.validate
    script = iter(values)
    seen: list[dict[str, float]] = []

    def scripted(*args: object) -> dict[str, float]:
        row = real(*args)  # type: ignore[arg-type]
        try:
            row[key] = next(script)
        except StopIteration:  # the final re-validation of the selected weights
            pass
        seen.append(row)
        return row

    monkeypatch.setattr(train_module, "validate", scripted)
    return seen


def test_early_stopping_keeps_the_best_epoch_of_the_monitored_metric(
    small_workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = copy_workspace(small_workspace, tmp_path)
    _scripted_validation(monkeypatch, "val_roc_auc", [0.80, 0.90, 0.89, 0.88, 0.95, 0.96])
    settings = fast_settings(**{"train.epochs": 6, "train.early_stopping_patience": 2})
    result = train(settings, workspace, track=False)
    assert result.epochs_run == 4 and result.best_epoch == 2  # epochs 3 and 4 did not improve
    checkpoint = torch.load(workspace.checkpoint, weights_only=True)
    assert checkpoint["finished"] and checkpoint["epoch"] == 4
    # The saved model is epoch 2's weights, not the last epoch's.
    assert all(
        torch.equal(checkpoint["best_weights"][k], v) for k, v in _weights(workspace).items()
    )


def test_monitor_val_log_loss_selects_the_lowest_loss(
    small_workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = copy_workspace(small_workspace, tmp_path)
    _scripted_validation(monkeypatch, "val_log_loss", [0.50, 0.40, 0.45])
    settings = fast_settings(**{"train.epochs": 3, "train.monitor": "val_log_loss"})
    assert train(settings, workspace, track=False).best_epoch == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_matches_the_cpu_path(small_workspace: Workspace, tmp_path: Path) -> None:
    """On a GPU: AMP bf16 training learns, and the CUDA model predicts like its CPU copy."""
    workspace = copy_workspace(small_workspace, tmp_path)
    settings = fast_settings(**{"train.device": "cuda", "train.epochs": 3})
    result = train(settings, workspace, track=False)
    assert result.metrics["val_roc_auc"] > 0.75
    assert json.loads(workspace.train_timing.read_text())["device"].startswith("cuda")
    from pneumo.accel import Accelerator

    model, _ = load_model(workspace.model)
    images = load_arrays(workspace.arrays("val"))["images"]
    on_gpu = predict_proba(model, images, accel=Accelerator("cuda", "fp32"))
    on_cpu = predict_proba(model, images)
    assert np.abs(on_gpu - on_cpu).max() < 1e-3


def test_an_ensemble_trains_resumes_and_saves_its_members(
    small_workspace: Workspace, tmp_path: Path
) -> None:
    workspace = copy_workspace(small_workspace, tmp_path)
    settings = fast_settings(**{"model.members": 2, "train.epochs": 2})
    result = train(settings, workspace, track=False)
    model, metadata = load_model(workspace.model)
    assert metadata["members"] == 2 and len(model.members) == 2
    assert result.metrics["val_roc_auc"] > 0.5
    epochs_seen: list[int] = []
    train(settings, workspace, track=False, on_epoch_end=lambda e, m: epochs_seen.append(e))
    assert epochs_seen == []  # the finished ensemble's checkpoint is recognised
