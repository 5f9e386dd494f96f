"""What one training step optimises and how: loss, learning-rate schedule, optimiser, EMA, sampling.

Every function here is pure given its seed, so the training loop in pneumo/training/train.py stays a
flat, readable sequence and each rule is unit-tested on its own.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pneumo.config import TrainSettings


def epoch_seed(seed: int, epoch: int) -> int:
    """Every epoch draws from its own seed, so a resumed run repeats the uninterrupted one."""
    return (seed * 1_000_003 + epoch) % 2**63


def epoch_order(labels: np.ndarray, class_balance: str, generator: torch.Generator) -> torch.Tensor:
    """Image indices for one epoch; "sampler" draws both classes equally often (with replacement)."""
    if class_balance == "sampler":
        counts = np.bincount(labels, minlength=2)
        weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.float64)
        return torch.multinomial(weights, len(labels), replacement=True, generator=generator)
    return torch.randperm(len(labels), generator=generator)


def sample_weights(labels: np.ndarray, class_balance: str) -> torch.Tensor:
    """Per-image loss weights; "weights" makes both classes count equally in the loss."""
    if class_balance != "weights":
        return torch.ones(len(labels))
    counts = np.bincount(labels, minlength=2)
    return torch.as_tensor(len(labels) / (2.0 * counts[labels]), dtype=torch.float32)


def batch_loss(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, label_smoothing: float
) -> torch.Tensor:
    """Binary cross-entropy against smoothed targets (0 -> e/2, 1 -> 1 - e/2), in fp32.

    Logits (N, M) of an ensemble's M members: the mean of every member's own loss.
    """
    soft_targets = targets * (1.0 - label_smoothing) + 0.5 * label_smoothing
    if logits.ndim == 2:
        soft_targets = soft_targets.unsqueeze(1).expand_as(logits)
        weights = weights.unsqueeze(1).expand_as(logits)
    return F.binary_cross_entropy_with_logits(logits.float(), soft_targets, weight=weights)


def learning_rate(step: int, total_steps: int, warmup_steps: int, cfg: TrainSettings) -> float:
    """Linear warm-up, then constant or cosine decay to zero at the last planned step."""
    if step < warmup_steps:
        return cfg.lr * (step + 1) / warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_optimizer(model: nn.Module, cfg: TrainSettings) -> torch.optim.Optimizer:
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
def update_ema(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """Exponential moving average of weights and BN statistics; short memory early on."""
    decay = min(decay, (1.0 + step) / (10.0 + step))
    for averaged, current in zip(
        ema.state_dict().values(), model.state_dict().values(), strict=True
    ):
        if averaged.is_floating_point():
            averaged.lerp_(current, 1.0 - decay)
        else:
            averaged.copy_(current)
