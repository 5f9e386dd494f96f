"""Train the network on the train split; choose the best epoch on the validation split only.

Reproducible (same params, data and seed give identical weights on a CPU), resumable (a checkpoint
is written atomically after every epoch and a rerun continues from it) and tracked in MLflow (one
run per training, reopened on resume). The test split is never read here.

Under ``torchrun`` (WORLD_SIZE > 1) it trains with DistributedDataParallel: each rank takes its
slice of the single-process global batch, and only rank 0 validates, checkpoints, tracks and writes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import pickle
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pneumo.config import Settings, TrainSettings
from pneumo.data.preprocess import load_arrays
from pneumo.data.transforms import NORMALISATION, augment_batch, build_augmentation, standardize
from pneumo.errors import ConfigError, PipelineOrderError, PneumoError
from pneumo.inference import available_cores, configure_threads, predict_proba
from pneumo.models import build_model, save_model
from pneumo.workspace import Workspace, atomic_path

log = logging.getLogger(__name__)

CLASSES = ("NORMAL", "PNEUMONIA")
DECISION_THRESHOLD = 0.5
_MIN_DELTA = 1e-4  # smaller changes of the monitored metric do not count as improvement
EpochHook = Callable[[int, dict[str, float]], None]


class TrainingDivergedError(PneumoError):
    """The loss became NaN or infinite; the checkpoint of the last good epoch is kept."""


@dataclass(frozen=True)
class TrainResult:
    model_path: Path
    run_id: str | None
    best_epoch: int
    epochs_run: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job; world_size 1 is plain single-process training."""

    rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Distributed:
        """Read the variables torchrun sets (WORLD_SIZE, RANK, LOCAL_WORLD_SIZE)."""
        try:
            return cls(
                rank=int(os.environ.get("RANK", "0")),
                world_size=int(os.environ.get("WORLD_SIZE", "1")),
                local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
            )
        except ValueError as exc:
            raise ConfigError(
                f"RANK, WORLD_SIZE and LOCAL_WORLD_SIZE must be integers ({exc}): start "
                "distributed training with torchrun"
            ) from None


@contextmanager
def _process_group(ddp: Distributed) -> Iterator[None]:
    """Join torchrun's process group for the training (gloo for CPU tensors, nccl for CUDA ones)."""
    if not ddp.enabled or dist.is_initialized():
        yield
        return
    dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def _broadcast_from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (early stop, the final result)."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ---------------------------------------------------------------- data, loss, schedule, metrics


def _load_split(workspace: Workspace, split: str, image_size: int) -> dict[str, np.ndarray]:
    arrays = load_arrays(workspace.arrays(split))
    if arrays["images"].shape[1:] != (image_size, image_size):
        raise PipelineOrderError(
            f"{workspace.arrays(split)} holds {arrays['images'].shape[1]} px images but "
            f"preprocess.image_size is {image_size}: run `pneumo preprocess` (or `dvc repro`)"
        )
    if len(np.unique(arrays["labels"])) < 2:
        raise PipelineOrderError(f"{workspace.arrays(split)} lacks one of the classes: resplit")
    return arrays


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fingerprint(settings: Settings, data_digests: dict[str, str]) -> str:
    """Identity of a training: a checkpoint is resumed only by the training it belongs to."""
    blob = {
        "model": settings.model.model_dump(mode="json", exclude={"tta"}),
        "train": settings.train.model_dump(mode="json"),
        "image_size": settings.preprocess.image_size,
        "data": data_digests,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def _epoch_seed(seed: int, epoch: int) -> int:
    """Every epoch draws from its own seed, so a resumed run repeats the uninterrupted one."""
    return (seed * 1_000_003 + epoch) % 2**63


def _epoch_order(
    labels: np.ndarray, class_balance: str, generator: torch.Generator
) -> torch.Tensor:
    """Image indices for one epoch; "sampler" draws both classes equally often (with replacement)."""
    if class_balance == "sampler":
        counts = np.bincount(labels, minlength=2)
        weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.float64)
        return torch.multinomial(weights, len(labels), replacement=True, generator=generator)
    return torch.randperm(len(labels), generator=generator)


def _sample_weights(labels: np.ndarray, class_balance: str) -> torch.Tensor:
    """Per-image loss weights; "weights" makes both classes count equally in the loss."""
    if class_balance != "weights":
        return torch.ones(len(labels))
    counts = np.bincount(labels, minlength=2)
    return torch.as_tensor(len(labels) / (2.0 * counts[labels]), dtype=torch.float32)


def _batch_loss(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, label_smoothing: float
) -> torch.Tensor:
    """Binary cross-entropy against smoothed targets (0 -> e/2, 1 -> 1 - e/2)."""
    soft_targets = targets * (1.0 - label_smoothing) + 0.5 * label_smoothing
    return F.binary_cross_entropy_with_logits(logits, soft_targets, weight=weights)


def _learning_rate(step: int, total_steps: int, warmup_steps: int, cfg: TrainSettings) -> float:
    """Linear warm-up, then constant or cosine decay to zero at the last planned step."""
    if step < warmup_steps:
        return cfg.lr * (step + 1) / warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _optimizer(model: nn.Module, cfg: TrainSettings) -> torch.optim.Optimizer:
    """SGD with momentum (the paper's) or AdamW; no weight decay on biases and norm scales."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr)


@torch.no_grad()
def _update_ema(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """Exponential moving average of weights and BN statistics; short memory early on."""
    decay = min(decay, (1.0 + step) / (10.0 + step))
    for averaged, current in zip(
        ema.state_dict().values(), model.state_dict().values(), strict=True
    ):
        if averaged.is_floating_point():
            averaged.lerp_(current, 1.0 - decay)
        else:
            averaged.copy_(current)


def binary_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Loss, ROC-AUC and decision metrics at the 0.5 threshold (pneumonia = positive)."""
    labels = np.asarray(labels).astype(bool)
    predicted = probs >= DECISION_THRESHOLD
    clipped = np.clip(probs, 1e-7, 1 - 1e-7)
    loss = -np.mean(np.where(labels, np.log(clipped), np.log(1 - clipped)))
    positives, negatives = labels.sum(), (~labels).sum()
    both = positives > 0 and negatives > 0
    return {
        "loss": float(loss),
        "auc": float(roc_auc_score(labels, probs)) if both else float("nan"),
        "accuracy": float(np.mean(predicted == labels)),
        "sensitivity": float((predicted & labels).sum() / positives) if positives else float("nan"),
        "specificity": float((~predicted & ~labels).sum() / negatives)
        if negatives
        else float("nan"),
    }


def _perturbations(images: np.ndarray) -> dict[str, np.ndarray]:
    """Acquisition-like changes of the same radiographs: tone curve, saturation, blur, JPEG."""
    from PIL import Image, ImageFilter

    pixels = images.astype(np.float32) / 255.0
    mean = pixels.mean(axis=(1, 2), keepdims=True)

    def pil_each(op: Callable[[Image.Image], Image.Image]) -> np.ndarray:
        return np.stack([np.asarray(op(Image.fromarray(img))) for img in images])

    def jpeg(img: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=30)
        return Image.open(buffer).convert("L")

    def to_uint8(x: np.ndarray) -> np.ndarray:
        return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)

    return {
        "gamma_0.7": to_uint8(pixels**0.7),
        "gamma_1.4": to_uint8(pixels**1.4),
        "contrast_1.4": to_uint8(mean + 1.4 * (pixels - mean)),
        "blur_1": pil_each(lambda img: img.filter(ImageFilter.GaussianBlur(1.0))),
        "jpeg_30": pil_each(jpeg),
    }


def shift_probe(model: nn.Module, images: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """How much predictions move under acquisition-like changes: a proxy for robustness to shift.

    Reports the share of decisions that flip and the mean absolute change of probability.
    """
    flips, changes = [], []
    for perturbed in _perturbations(images).values():
        moved = predict_proba(model, perturbed, batch_size=128)
        flips.append(np.mean((moved >= DECISION_THRESHOLD) != (probs >= DECISION_THRESHOLD)))
        changes.append(np.mean(np.abs(moved - probs)))
    return {
        "shift_flip_rate": float(np.mean(flips)),
        "shift_mean_abs_change": float(np.mean(changes)),
    }


# ---------------------------------------------------------------- checkpoint and outputs


def _clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path, fingerprint: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as exc:
        log.warning("checkpoint %s is unreadable (%s); training from scratch", path, exc)
        return None
    if state.get("fingerprint") != fingerprint:
        log.info("checkpoint %s belongs to other params or data; training from scratch", path)
        return None
    return state


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def _plot_history(path: Path, history: list[dict[str, float]], best_epoch: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], label="train (augmented)")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], label="validation")
    ax_loss.set(xlabel="epoch", ylabel="binary cross-entropy", title="loss")
    for key in ("val_auc", "val_accuracy", "val_specificity"):
        ax_val.plot(epochs, [r[key] for r in history], label=key.removeprefix("val_"))
    ax_val.set(xlabel="epoch", title="validation", ylim=(0.5, 1.0))
    for ax in (ax_loss, ax_val):
        ax.axvline(best_epoch, color="grey", linestyle=":", label="selected epoch")
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


@contextmanager
def _deterministic() -> Iterator[None]:
    """Deterministic kernels and a private RNG stream, restored afterwards for the caller."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.use_deterministic_algorithms(previous)


# ---------------------------------------------------------------- the training loop


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
    cfg, image_size = settings.train, settings.preprocess.image_size
    ddp = Distributed.from_env()
    if cfg.batch_size % ddp.world_size:
        raise ConfigError(
            f"train.batch_size {cfg.batch_size} is the global batch and must divide evenly over "
            f"{ddp.world_size} processes: choose a multiple of {ddp.world_size}"
        )
    track = track and ddp.is_main
    if not workspace.array_stats.is_file():
        raise PipelineOrderError(
            f"{workspace.array_stats} not found: run `pneumo preprocess` first"
        )
    train_data = _load_split(workspace, "train", image_size)
    val_data = _load_split(workspace, "val", image_size)
    digests = {s: _file_digest(workspace.arrays(s)) for s in ("train", "val")}
    fingerprint = _fingerprint(settings, digests)
    if ddp.enabled:  # the node's cores are shared by its ranks
        threads = configure_threads(
            cfg.threads or max(1, available_cores() // ddp.local_world_size)
        )
    else:
        threads = configure_threads(cfg.threads)

    with _process_group(ddp), _deterministic():
        torch.manual_seed(cfg.seed)
        model = build_model(settings.model.arch, image_size, **settings.model.options())
        ema = build_model(settings.model.arch, image_size, **settings.model.options())
        ema.load_state_dict(model.state_dict())
        ema.requires_grad_(False)
        optimizer = _optimizer(model, cfg)
        state = _load_checkpoint(workspace.checkpoint, fingerprint)
        if state is None:
            state = {
                "fingerprint": fingerprint,
                "epoch": 0,
                "finished": False,
                "run_id": "",
                "global_step": 0,
                "bad_epochs": 0,
                "best_epoch": 0,
                "best_score": float("nan"),
                "best_state": _clone_state(model),
                "history": [],
                "train_seconds": 0.0,
            }
        else:
            model.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
            log.info("resuming from %s after epoch %d", workspace.checkpoint, state["epoch"])

        tracking_context = nullcontext(None)
        if track:
            from pneumo import tracking

            tracking_context = tracking.training_run(settings, workspace, state["run_id"] or None)
        with tracking_context as run_id:
            if track and not state["run_id"]:
                for split, data in (("train", train_data), ("val", val_data)):
                    tracking.log_dataset(
                        workspace.arrays(split),
                        data["images"],
                        data["labels"],
                        split,
                        digests[split],
                    )
            state["run_id"] = run_id or ""
            _fit(
                model,
                ema,
                optimizer,
                state,
                train_data,
                val_data,
                settings,
                workspace,
                track,
                on_epoch_end,
                threads,
                ddp,
            )
            result = None
            if ddp.is_main:
                result = _finish(
                    ema if cfg.ema_decay > 0 else model, state, val_data, settings, workspace, track
                )
            if ddp.enabled:
                result = _broadcast_from_main(result)
                dist.barrier()
            assert result is not None
            return result


def _fit(
    model: nn.Module,
    ema: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    train_data: dict[str, np.ndarray],
    val_data: dict[str, np.ndarray],
    settings: Settings,
    workspace: Workspace,
    track: bool,
    on_epoch_end: EpochHook | None,
    threads: int,
    ddp: Distributed = Distributed(),
) -> None:
    """Run the remaining epochs, checkpointing after each; updates ``state`` in place.

    Every rank augments the whole global batch (same random draws as one process) and trains on
    its slice; DDP averages the gradients, so the step equals the single-process one.
    """
    cfg = settings.train
    per_rank = cfg.batch_size // ddp.world_size
    net: nn.Module = DistributedDataParallel(model) if ddp.enabled else model
    images = torch.from_numpy(train_data["images"]).unsqueeze(1)
    labels = train_data["labels"]
    targets = torch.as_tensor(labels, dtype=torch.float32)
    sample_weights = _sample_weights(labels, cfg.class_balance)
    augmentation = build_augmentation(cfg.augment)
    steps_per_epoch = len(labels) // cfg.batch_size
    if steps_per_epoch == 0:
        raise PipelineOrderError(
            f"the train split has {len(labels)} images, fewer than train.batch_size "
            f"{cfg.batch_size}: lower train.batch_size"
        )
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    eval_model = ema if cfg.ema_decay > 0 else model
    higher_is_better = cfg.monitor == "val_auc"
    log.info(
        "training %s on %d images (%d val) at %d px, %d threads, up to %d epochs",
        settings.model.arch,
        len(labels),
        len(val_data["labels"]),
        settings.preprocess.image_size,
        threads,
        cfg.epochs,
    )
    epochs = tqdm(
        range(state["epoch"] + 1, cfg.epochs + 1),
        desc="train",
        unit="epoch",
        disable=None if ddp.is_main else True,
        initial=state["epoch"],
        total=cfg.epochs,
    )
    for epoch in epochs:
        if state["finished"]:
            break
        started = time.perf_counter()
        torch.manual_seed(_epoch_seed(cfg.seed, epoch))
        generator = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch))
        order = _epoch_order(labels, cfg.class_balance, generator)
        net.train()
        loss_sum, correct, seen = 0.0, 0, 0
        batches = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch}",
            unit="batch",
            leave=False,
            disable=None if ddp.is_main else True,
        )
        for step in batches:
            index = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            lr = _learning_rate(state["global_step"], total_steps, warmup_steps, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            pixels = augment_batch(images[index], augmentation)
            if ddp.enabled:
                shard = slice(ddp.rank * per_rank, (ddp.rank + 1) * per_rank)
                index, pixels = index[shard], pixels[shard]
            logits = net(standardize(pixels))
            loss = _batch_loss(logits, targets[index], sample_weights[index], cfg.label_smoothing)
            batch_loss = loss.detach()
            batch_correct = ((logits > 0) == (targets[index] > 0.5)).sum()
            if ddp.enabled:  # the global batch's numbers, so all ranks judge divergence alike
                totals = torch.stack([batch_loss, batch_correct.float()])
                dist.all_reduce(totals)
                batch_loss, batch_correct = totals[0] / ddp.world_size, totals[1]
            if not torch.isfinite(batch_loss):
                raise TrainingDivergedError(
                    f"the training loss became {batch_loss.item()} in epoch {epoch} "
                    f"(batch {step + 1}): "
                    f"lower train.lr (now {cfg.lr}); the checkpoint of epoch {state['epoch']} "
                    f"is kept in {workspace.checkpoint}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            state["global_step"] += 1
            if cfg.ema_decay > 0 and ddp.is_main:
                _update_ema(ema, model, cfg.ema_decay, state["global_step"])
            loss_sum += batch_loss.item() * cfg.batch_size
            correct += int(batch_correct)
            seen += cfg.batch_size
            batches.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}")

        if not ddp.is_main:  # rank 0 validates and checkpoints; follow its early-stop decision
            if _broadcast_from_main(None):
                break
            continue

        val_probs = predict_proba(eval_model, val_data["images"], batch_size=128)
        val = binary_metrics(val_data["labels"], val_probs)
        seconds = time.perf_counter() - started
        row = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": loss_sum / seen,
            "train_accuracy": correct / seen,
            **{f"val_{k}": v for k, v in val.items()},
            "epoch_seconds": seconds,
        }
        score = row[cfg.monitor]
        best = state["best_score"]
        improved = math.isnan(best) or (
            score > best + _MIN_DELTA if higher_is_better else score < best - _MIN_DELTA
        )
        if improved:
            state.update(
                best_score=score,
                best_epoch=epoch,
                best_state=_clone_state(eval_model),
                bad_epochs=0,
            )
        else:
            state["bad_epochs"] += 1
        patience = cfg.early_stopping_patience
        stop = patience > 0 and state["bad_epochs"] >= patience
        if ddp.enabled:
            _broadcast_from_main(stop)
        state["history"].append(row)
        state.update(
            epoch=epoch,
            train_seconds=state["train_seconds"] + seconds,
            finished=stop or epoch == cfg.epochs,
        )
        state.update(
            model=model.state_dict(), ema=ema.state_dict(), optimizer=optimizer.state_dict()
        )
        _save_checkpoint(workspace.checkpoint, state)
        if track:
            from pneumo import tracking

            tracking.log_epoch({k: v for k, v in row.items() if k != "epoch"}, epoch)
        epochs.set_postfix(
            val_auc=f"{val['auc']:.4f}", val_loss=f"{val['loss']:.4f}", best=state["best_epoch"]
        )
        log.info(
            "epoch %d: train loss %.4f, val loss %.4f, val AUC %.4f, val accuracy %.3f, %.1f s%s",
            epoch,
            row["train_loss"],
            val["loss"],
            val["auc"],
            val["accuracy"],
            seconds,
            " (best)" if improved else "",
        )
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
        if stop:
            log.info("early stop: %s has not improved for %d epochs", cfg.monitor, patience)
            break
    epochs.close()


def _finish(
    eval_model: nn.Module,
    state: dict[str, Any],
    val_data: dict[str, np.ndarray],
    settings: Settings,
    workspace: Workspace,
    track: bool,
) -> TrainResult:
    """Export the selected epoch's weights, metrics, history and curves; log them to MLflow."""
    eval_model.load_state_dict(state["best_state"])
    eval_model.eval()
    val_probs = predict_proba(eval_model, val_data["images"], batch_size=128)
    history = state["history"]
    epochs_run = len(history)
    summary: dict[str, float] = {
        "best_epoch": state["best_epoch"],
        "epochs_run": epochs_run,
        "train_minutes": state["train_seconds"] / 60.0,
        "seconds_per_epoch": state["train_seconds"] / max(1, epochs_run),
        **{f"val_{k}": v for k, v in binary_metrics(val_data["labels"], val_probs).items()},
        **{
            f"val_{k}": v for k, v in shift_probe(eval_model, val_data["images"], val_probs).items()
        },
    }
    metadata = {
        "arch": settings.model.arch,
        "options": settings.model.options(),
        "image_size": settings.preprocess.image_size,
        "normalisation": NORMALISATION,
        "classes": list(CLASSES),
        "decision_threshold": DECISION_THRESHOLD,
        "tta": settings.model.tta,
        "best_epoch": state["best_epoch"],
        "val_metrics": {k: v for k, v in summary.items() if k.startswith("val_")},
        "fingerprint": state["fingerprint"],
        "mlflow_run_id": state["run_id"] or None,
    }
    save_model(eval_model, workspace.model, metadata)
    with atomic_path(workspace.train_metrics) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    _write_history(workspace.train_history, history)
    _plot_history(workspace.train_curves, history, state["best_epoch"])
    log.info(
        "selected epoch %d of %d: val AUC %.4f, accuracy %.3f; %.1f training minutes",
        state["best_epoch"],
        epochs_run,
        summary["val_auc"],
        summary["val_accuracy"],
        summary["train_minutes"],
    )
    run_id = state["run_id"] or None
    if track and run_id:
        from pneumo import tracking

        tracking.log_final(summary, [workspace.train_curves, workspace.train_history])
        if settings.tracking.log_model:
            example = val_data["images"][:2]
            tracking.log_pyfunc_model(workspace.model, example, val_probs[:2])
        with atomic_path(workspace.run_id) as tmp:
            tmp.write_text(run_id + "\n")
    return TrainResult(workspace.model, run_id, state["best_epoch"], epochs_run, summary)
