"""Distributed training: torchrun with two CPU ranks matches one process at the same global batch."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pneumo.config import Settings
from pneumo.data.preprocess import load_arrays
from pneumo.errors import ConfigError
from pneumo.inference import predict_proba
from pneumo.models import load_model
from pneumo.training.train import train
from pneumo.workspace import Workspace
from tests.model.realdata import REPO, copy_workspace, fast_settings

# No dropout: its masks are drawn per rank over the rank's slice, so they differ from one process.
# paper_cnn2 has no BatchNorm, whose per-rank batch statistics would differ as well (see README).
OVERRIDES: dict[str, object] = {
    "model.arch": "paper_cnn2",
    "model.paper_cnn.dropout": 0.0,
    "train.epochs": 2,
    "train.batch_size": 32,
    "tracking.experiment": "pneumo-ddp-test",
    "tracking.log_model": False,
    # fp32: bf16 rounds the two ranks' half-batches differently (about 1e-2 apart after 16 steps).
    "train.precision": "fp32",
    # One network: the weights of three members side by side drift further apart by rounding
    # alone (measured 2.5e-4 after 16 steps), which would hide a real mismatch under the tolerance.
    "model.members": 1,
}
# Averaging gradients over two ranks rounds differently from one batch: measured 1e-5 after 16 steps.
WEIGHT_TOLERANCE = 1e-4
PROBABILITY_TOLERANCE = 1e-3
# Per-rank BatchNorm statistics on the CPU (SyncBatchNorm needs CUDA): measured 6e-4 after 16 steps.
RESNET_PROBABILITY_TOLERANCE = 5e-3


def _write_params(settings: Settings, workspace: Workspace) -> Path:
    """The settings as the workspace's params.yaml: the CLI takes its workspace from that folder."""
    path = workspace.root / "params.yaml"
    path.write_text(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False))
    return path


def _history(workspace: Workspace) -> list[dict[str, str]]:
    with open(workspace.train_history) as handle:
        return [
            {k: v for k, v in r.items() if k != "epoch_seconds"} for r in csv.DictReader(handle)
        ]


def _files(workspace: Workspace) -> set[str]:
    skip = {"params.yaml", "mlruns.db"}
    return {
        str(p.relative_to(workspace.root))
        for p in workspace.root.rglob("*")
        if p.is_file() and not {"arrays", "mlartifacts"} & set(p.parts) and p.name not in skip
    }


def _torchrun(params: Path) -> None:
    """``pneumo train`` on two CPU ranks, as a user would start it."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(REPO)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "-m", "pneumo.cli", "--params", str(params), "train"]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]


def _max_weight_difference(a: Workspace, b: Workspace) -> float:
    wa = torch.load(a.model, weights_only=True)["state_dict"]
    wb = torch.load(b.model, weights_only=True)["state_dict"]
    assert wa.keys() == wb.keys()
    return max(
        (wa[k].double() - wb[k].double()).abs().max().item()
        for k in wa
        if wa[k].is_floating_point()
    )


@pytest.mark.slow
def test_two_ranks_match_single_process_training(
    small_workspace: Workspace, tmp_path: Path
) -> None:
    import mlflow

    tracking_uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    settings = fast_settings(**OVERRIDES, **{"tracking.uri": tracking_uri})
    distributed = copy_workspace(small_workspace, tmp_path / "ddp")
    params = _write_params(settings, distributed)
    _torchrun(params)

    single = copy_workspace(small_workspace, tmp_path / "single")
    result = train(settings, single, track=False)

    ddp_history, single_history = _history(distributed), _history(single)
    assert len(ddp_history) == len(single_history) == result.epochs_run == 2
    for ddp_row, single_row in zip(ddp_history, single_history, strict=True):
        assert float(ddp_row["train_loss"]) == pytest.approx(
            float(single_row["train_loss"]), abs=1e-4
        )
        assert ddp_row["train_accuracy"] == single_row["train_accuracy"]

    max_diff = _max_weight_difference(distributed, single)
    print(f"max weight difference {max_diff:.2e}")
    assert max_diff < WEIGHT_TOLERANCE, f"weights differ by up to {max_diff:.2e}"

    images = load_arrays(single.arrays("val"))["images"]
    ddp_model, _ = load_model(distributed.model)
    single_model, _ = load_model(single.model)
    probs_diff = np.abs(predict_proba(ddp_model, images) - predict_proba(single_model, images))
    print(f"max val probability difference {probs_diff.max():.2e}")
    assert probs_diff.max() < PROBABILITY_TOLERANCE

    # Only rank 0 tracked and wrote: one MLflow run with one value per epoch, the same outputs.
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(settings.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    assert distributed.run_id.read_text().strip() == runs[0].info.run_id
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "val/roc_auc")] == [1, 2]
    assert _files(distributed) - {str(distributed.run_id.relative_to(distributed.root))} == (
        _files(single)
    )
    # One process recognises the finished distributed checkpoint: nothing is trained again.
    epochs_seen: list[int] = []
    train(settings, distributed, track=False, on_epoch_end=lambda e, m: epochs_seen.append(e))
    assert epochs_seen == []


@pytest.mark.slow
def test_two_ranks_resume_an_interrupted_training(
    small_workspace: Workspace, tmp_path: Path
) -> None:
    settings = fast_settings(**OVERRIDES, **{"tracking.uri": f"sqlite:///{tmp_path / 'm.db'}"})
    uninterrupted = copy_workspace(small_workspace, tmp_path / "whole")
    train(settings, uninterrupted, track=False)

    def interrupt_after_first_epoch(epoch: int, metrics: dict[str, float]) -> None:
        raise KeyboardInterrupt

    resumed = copy_workspace(small_workspace, tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        train(settings, resumed, track=False, on_epoch_end=interrupt_after_first_epoch)
    _torchrun(_write_params(settings, resumed))
    assert [row["epoch"] for row in _history(resumed)] == ["1", "2"]
    assert _history(resumed)[0] == _history(uninterrupted)[0]  # epoch 1 came from the checkpoint
    assert _max_weight_difference(resumed, uninterrupted) < WEIGHT_TOLERANCE


def test_global_batch_must_divide_over_the_ranks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="multiple of 3"):
        train(fast_settings(**{"train.batch_size": 32}), Workspace(tmp_path), track=False)


@pytest.mark.slow
def test_two_ranks_train_the_default_resnet_like_one_process(
    small_workspace: Workspace, tmp_path: Path
) -> None:
    """BatchNorm sees each rank's half-batch, so the result is close to one process, not equal."""
    overrides = {**OVERRIDES, "model.arch": "resnet", "model.resnet.widths": [8, 16],
                 "model.resnet.stem_width": 8, "model.resnet.dropout": 0.0}  # fmt: skip
    settings = fast_settings(**overrides, **{"tracking.uri": f"sqlite:///{tmp_path / 'm.db'}"})
    distributed = copy_workspace(small_workspace, tmp_path / "ddp")
    _torchrun(_write_params(settings, distributed))
    single = copy_workspace(small_workspace, tmp_path / "single")
    train(settings, single, track=False)
    images = load_arrays(single.arrays("val"))["images"]
    ddp_model, _ = load_model(distributed.model)
    single_model, _ = load_model(single.model)
    differences = np.abs(predict_proba(ddp_model, images) - predict_proba(single_model, images))
    print(f"resnet: max val probability difference {differences.max():.2e}")
    assert differences.max() < RESNET_PROBABILITY_TOLERANCE
    assert _max_weight_difference(distributed, single) > 0  # per-rank BN: not bit-equal
