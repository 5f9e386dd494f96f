"""Train the network on the train split; choose the best epoch on the validation split only.

Reproducible (same params, data and seed give identical weights on a given machine), resumable (a
checkpoint is written atomically after every epoch and a rerun continues from it) and tracked in
MLflow (one run per training, reopened on resume). The test split is never read here.

Under ``torchrun`` (WORLD_SIZE > 1) it trains with DistributedDataParallel: each rank takes its
slice of the single-process global batch, and only rank 0 validates, checkpoints, tracks and writes.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pneumo import accel as accelerators
from pneumo.config import Settings
from pneumo.data.kermany import CLASSES
from pneumo.data.transforms import NORMALISATION, standardize
from pneumo.decision.metrics import binary_metrics
from pneumo.errors import ConfigError, PneumoError
from pneumo.evaluation import plots
from pneumo.inference import predict_proba, prepare
from pneumo.models import build_model, save_model
from pneumo.training.distributed import (
    Distributed,
    barrier,
    broadcast_from_main,
    global_mean_and_sum,
    process_group,
)
from pneumo.training.inputs import Augmenter, load_train_data, make_augmenter
from pneumo.training.optimization import (
    batch_loss,
    build_optimizer,
    epoch_order,
    epoch_seed,
    learning_rate,
    update_ema,
)
from pneumo.training.train_state import TrainData, TrainResult, TrainState, fingerprint
from pneumo.workspace import Workspace, atomic_path

log = logging.getLogger(__name__)

# Validation metrics recorded per epoch (at the neutral threshold 0.5; the real one comes later).
VAL_METRICS = ("log_loss", "roc_auc", "accuracy", "sensitivity", "specificity")
EpochHook = Callable[[int, dict[str, float]], None]


class TrainingDivergedError(PneumoError):
    """The loss became NaN or infinite; the checkpoint of the last good epoch is kept."""


@contextmanager
def deterministic() -> Iterator[None]:
    """Deterministic kernels and a private RNG stream, restored afterwards for the caller.

    Deterministic mode also fills every new tensor with NaN by default, a debugging aid against
    kernels that read memory they never wrote: ~12 % of a CPU training step here (`aten::fill_`)
    for no change in any result, so it is off while training.
    """
    previous = torch.are_deterministic_algorithms_enabled()
    filled = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.utils.deterministic.fill_uninitialized_memory = filled


def validate(
    model: nn.Module, data: TrainData, accel: accelerators.Accelerator
) -> dict[str, float]:
    """Validation metrics at the neutral threshold 0.5 (no test-time augmentation)."""
    probabilities = predict_proba(model, data.val_images, batch_size=128, accel=accel)
    values = binary_metrics(data.val_labels, probabilities, 0.5)
    return {f"val_{name}": values[name] for name in VAL_METRICS}


def train_one_epoch(
    net: nn.Module,
    ema: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: TrainData,
    state: TrainState,
    settings: Settings,
    augment: Augmenter,
    accel: accelerators.Accelerator,
    ddp: Distributed,
) -> dict[str, float]:
    """One pass over an epoch's batches; returns the augmented training loss and accuracy.

    Every rank augments the whole global batch (the same draws as one process) and trains on its
    slice; DDP averages the gradients, so the step equals the single-process one.
    """
    cfg, epoch = settings.train, state.epoch + 1
    steps = len(data.labels) // cfg.batch_size
    total_steps, warmup = steps * cfg.epochs, round(cfg.warmup_epochs * steps)
    per_rank = cfg.batch_size // ddp.world_size
    seed = epoch_seed(cfg.seed, epoch)
    torch.manual_seed(seed)  # dropout (and the per-image reference augmentation)
    order = epoch_order(data.labels, cfg.class_balance, torch.Generator().manual_seed(seed))
    augment_rng = torch.Generator().manual_seed(seed ^ 0x5EED)
    model = net.module if isinstance(net, DistributedDataParallel) else net
    net.train()
    loss_sum, correct, seen, lr = 0.0, 0, 0, 0.0
    bar = tqdm(range(steps), desc=f"epoch {epoch}", unit="batch", leave=False,
               disable=None if ddp.is_main else True)  # fmt: skip
    for step in bar:
        index = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        lr = learning_rate(state.global_step, total_steps, warmup, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        pixels = augment(data.images[index], augment_rng)
        if ddp.enabled:
            shard = slice(ddp.rank * per_rank, (ddp.rank + 1) * per_rank)
            index, pixels = index[shard], pixels[shard]
        targets = data.targets[index].to(accel.device, non_blocking=True)
        pixels = pixels.to(accel.device, non_blocking=True)
        with accel.autocast():
            logits = net(standardize(pixels))
        weights = data.weights[index].to(accel.device)
        loss = batch_loss(logits, targets, weights, cfg.label_smoothing)
        called = logits.detach().mean(dim=-1) if logits.ndim == 2 else logits.detach()
        batch_correct = ((called > 0) == (targets > 0.5)).sum()
        mean_loss, batch_correct = global_mean_and_sum(loss.detach(), batch_correct, ddp)
        _check_finite(mean_loss, epoch, step, cfg.lr, state.epoch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state.global_step += 1
        if cfg.ema_decay > 0 and ddp.is_main:
            update_ema(ema, model, cfg.ema_decay, state.global_step)
        loss_sum += mean_loss.item() * cfg.batch_size
        correct += int(batch_correct)
        seen += cfg.batch_size
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}")
    bar.close()
    return {"lr": lr, "train_loss": loss_sum / seen, "train_accuracy": correct / seen}


def build_network(settings: Settings) -> nn.Module:
    """The untrained network (or ensemble) ``settings.model`` describes, at the preprocess size."""
    model = settings.model
    return build_model(model.arch, settings.preprocess.image_size, model.members, **model.options())


def _check_finite(loss: torch.Tensor, epoch: int, step: int, lr: float, last_good: int) -> None:
    if not torch.isfinite(loss):
        raise TrainingDivergedError(
            f"the training loss became {loss.item()} in epoch {epoch} (batch {step + 1}): "
            f"lower train.lr (now {lr}); the checkpoint of epoch {last_good} is kept"
        )


def train(
    settings: Settings,
    workspace: Workspace = Workspace(),
    track: bool = True,
    on_epoch_end: EpochHook | None = None,
) -> TrainResult:
    """Train ``settings.model`` with ``settings.train`` on the workspace's train/val arrays.

    Writes the model, metrics, history and curves (paths in :class:`Workspace`); with ``track`` it
    logs everything to one MLflow run and writes the run id for evaluation. ``on_epoch_end`` is
    called after each epoch's checkpoint is safely on disk (progress reporting, tests).
    Under torchrun every rank calls this; only rank 0 tracks, writes files and calls
    ``on_epoch_end``, and every rank returns rank 0's result.
    """
    cfg, size = settings.train, settings.preprocess.image_size
    ddp = Distributed.from_env()
    if cfg.batch_size % ddp.world_size:
        raise ConfigError(
            f"train.batch_size {cfg.batch_size} is the global batch and must divide evenly over "
            f"{ddp.world_size} processes: choose a multiple of {ddp.world_size}"
        )
    data, arrays, digests = load_train_data(settings, workspace)
    accel = accelerators.resolve(ddp.device(cfg.device), cfg.precision)
    threads = cfg.threads or max(1, accelerators.available_cores() // ddp.local_world_size)
    accelerators.configure_threads(threads)
    track = track and ddp.is_main

    with process_group(ddp, accel.device_type), deterministic():
        torch.manual_seed(cfg.seed)
        model = prepare(build_network(settings), accel)
        ema = prepare(build_network(settings), accel)
        ema.load_state_dict(model.state_dict())
        ema.requires_grad_(False)
        optimizer = build_optimizer(model, cfg)
        key = fingerprint(settings, digests)
        state = TrainState.from_checkpoint(workspace.checkpoint, key, model, ema, optimizer)
        if state is None:
            state = TrainState(key)
        else:
            log.info("resuming from %s after epoch %d", workspace.checkpoint, state.epoch)
        with _tracked(settings, workspace, state, arrays, digests, track) as run_id:
            state.run_id = run_id or ""
            log.info(
                "training %s on %d images (%d val) at %d px on %s, %d threads, up to %d epochs",
                settings.model.arch, len(data.labels), len(data.val_labels), size, accel.describe(),
                threads, cfg.epochs,
            )  # fmt: skip
            _fit(model, ema, optimizer, data, state, settings, workspace, accel, ddp, track,
                 on_epoch_end)  # fmt: skip
            result = None
            if ddp.is_main:
                result = _finish(ema if cfg.ema_decay > 0 else model, state, data, settings,
                                 workspace, accel, track)  # fmt: skip
            result = broadcast_from_main(result, ddp)
            barrier(ddp)
            return result


@contextmanager
def _tracked(
    settings: Settings,
    workspace: Workspace,
    state: TrainState,
    arrays: dict[str, dict[str, np.ndarray]],
    digests: dict[str, str],
    track: bool,
) -> Iterator[str | None]:
    """The training's MLflow run (reopened on resume), with its data inputs; None untracked."""
    if not track:
        yield None
        return
    from pneumo import tracking

    with tracking.training_run(settings, workspace, state.run_id or None, digests) as run_id:
        if not state.run_id:  # a new run: record which data it learns from
            for split, split_arrays in arrays.items():
                tracking.log_dataset(workspace.arrays(split), split_arrays["images"],
                                     split_arrays["labels"], split, digests[split])  # fmt: skip
        yield run_id


def _fit(
    model: nn.Module,
    ema: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: TrainData,
    state: TrainState,
    settings: Settings,
    workspace: Workspace,
    accel: accelerators.Accelerator,
    ddp: Distributed,
    track: bool,
    on_epoch_end: EpochHook | None,
) -> None:
    """The remaining epochs: train, validate, keep the best weights, checkpoint, report."""
    cfg = settings.train
    if ddp.enabled and accel.device_type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net: nn.Module = DistributedDataParallel(model) if ddp.enabled else model
    augment = make_augmenter(settings)
    eval_model = ema if cfg.ema_decay > 0 else model
    epochs = tqdm(range(state.epoch + 1, cfg.epochs + 1), desc="train", unit="epoch",
                  initial=state.epoch, total=cfg.epochs, disable=None if ddp.is_main else True)  # fmt: skip
    for epoch in epochs:
        if state.finished:
            break
        started = time.perf_counter()
        row = {"epoch": epoch, **train_one_epoch(net, ema, optimizer, data, state, settings,
                                                 augment, accel, ddp)}  # fmt: skip
        stop = False
        if ddp.is_main:
            row.update(validate(eval_model, data, accel))
            improved = state.record(
                row, row[cfg.monitor], cfg.monitor != "val_log_loss", eval_model
            )
            patience = cfg.early_stopping_patience
            stop = patience > 0 and state.bad_epochs >= patience
            state.epoch, state.finished = epoch, stop or epoch == cfg.epochs
            state.train_seconds += time.perf_counter() - started
            with atomic_path(workspace.checkpoint) as tmp:
                torch.save(state.to_checkpoint(model, ema, optimizer), tmp)
            _report_epoch(row, improved, state, epochs, track, on_epoch_end)
        else:
            state.epoch = epoch
        if broadcast_from_main(stop, ddp):
            log.info(
                "early stop: %s has not improved for %d epochs",
                cfg.monitor,
                cfg.early_stopping_patience,
            )
            break
    epochs.close()


def _report_epoch(
    row: dict[str, float],
    improved: bool,
    state: TrainState,
    bar: Any,
    track: bool,
    on_epoch_end: EpochHook | None,
) -> None:
    if track:
        from pneumo import tracking

        tracking.log_epoch({k: v for k, v in row.items() if k != "epoch"}, int(row["epoch"]))
    bar.set_postfix(val_auc=f"{row['val_roc_auc']:.4f}", val_loss=f"{row['val_log_loss']:.4f}",
                    best=state.best_epoch)  # fmt: skip
    log.info(
        "epoch %d: train loss %.4f, val loss %.4f, val ROC-AUC %.4f, val accuracy %.3f%s",
        row["epoch"], row["train_loss"], row["val_log_loss"], row["val_roc_auc"],
        row["val_accuracy"], " (best)" if improved else "",
    )  # fmt: skip
    if on_epoch_end is not None:
        on_epoch_end(int(row["epoch"]), row)


def _finish(
    eval_model: nn.Module,
    state: TrainState,
    data: TrainData,
    settings: Settings,
    workspace: Workspace,
    accel: accelerators.Accelerator,
    track: bool,
) -> TrainResult:
    """Export the selected epoch's weights, metrics, history and curves; log them to MLflow."""
    eval_model.load_state_dict(state.best_weights)
    val = validate(eval_model, data, accel)
    epochs_run = len(state.history)
    summary: dict[str, float] = {"best_epoch": state.best_epoch, "epochs_run": epochs_run, **val}
    timing = {
        "train_minutes": state.train_seconds / 60.0,
        "seconds_per_epoch": state.train_seconds / max(1, epochs_run),
        "device": accel.describe(),
    }
    metadata = {
        "arch": settings.model.arch,
        "options": settings.model.options(),
        "members": settings.model.members,
        "image_size": settings.preprocess.image_size,
        "normalisation": NORMALISATION,
        "classes": list(CLASSES),
        "tta": settings.model.tta,
        "best_epoch": state.best_epoch,
        "val_metrics_at_0.5": val,
        "fingerprint": state.fingerprint,
        "mlflow_run_id": state.run_id or None,
    }
    # Byte-for-byte reproducible (pneumo.models.write_torch): a resumed, finished run writes
    # the same file again, so the registry's record of this run still holds.
    save_model(eval_model.to("cpu"), workspace.model, metadata)
    workspace.write_summary("train", {"val_roc_auc": summary.get("val_roc_auc")})
    for path, content in ((workspace.train_metrics, summary), (workspace.train_timing, timing)):
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(content, indent=2) + "\n")
    _write_history(workspace.train_history, state.history)
    plots.training_curves(workspace.train_curves, state.history, state.best_epoch)
    log.info(
        "selected epoch %d of %d: val ROC-AUC %.4f, accuracy %.3f; %.1f training minutes",
        state.best_epoch, epochs_run, val["val_roc_auc"], val["val_accuracy"], timing["train_minutes"],
    )  # fmt: skip
    run_id = state.run_id or None
    if track and run_id:
        from pneumo import tracking

        numbers = {k: v for k, v in {**summary, **timing}.items() if isinstance(v, int | float)}
        tracking.log_final(numbers, [workspace.train_curves, workspace.train_history])
        if settings.tracking.log_model:
            example = data.val_images[:2]
            tracking.log_pyfunc_model(workspace.model, example, predict_proba(eval_model, example))
        with atomic_path(workspace.run_id) as tmp:
            tmp.write_text(run_id + "\n")
    return TrainResult(workspace.model, run_id, state.best_epoch, epochs_run, {**summary, **timing})


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)

