"""The training step's rules on their own: schedule, sampling, loss weights, EMA, optimiser groups."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pneumo.config import TrainSettings
from pneumo.training.optimization import (
    batch_loss,
    build_optimizer,
    epoch_order,
    epoch_seed,
    learning_rate,
    sample_weights,
    update_ema,
)


def test_warmup_is_linear_then_cosine_reaches_zero_at_the_last_step() -> None:
    cfg = TrainSettings(lr=0.01, schedule="cosine", epochs=10, warmup_epochs=1.0)
    total, warmup = 1000, 100
    rates = [learning_rate(step, total, warmup, cfg) for step in range(total + 1)]
    assert rates[0] == pytest.approx(0.01 / 100) and rates[49] == pytest.approx(0.005)
    assert rates[99] == pytest.approx(0.01) and max(rates) == pytest.approx(0.01)
    assert rates[550] == pytest.approx(0.005, rel=1e-6)  # half-way through the decay
    assert rates[total] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(rates[100:], rates[101:], strict=False))


def test_constant_schedule_stays_at_the_peak_after_warmup() -> None:
    cfg = TrainSettings(lr=0.003, schedule="constant", epochs=5, warmup_epochs=1.0)
    assert learning_rate(10, 500, 100, cfg) == pytest.approx(0.003 * 11 / 100)
    assert {learning_rate(s, 500, 100, cfg) for s in (100, 300, 499)} == {0.003}


def test_sampler_draws_both_classes_equally_often_and_per_epoch_seeds_differ() -> None:
    labels = np.array([0] * 100 + [1] * 900)
    order = epoch_order(labels, "sampler", torch.Generator().manual_seed(0))
    assert len(order) == 1000
    share = labels[order.numpy()].mean()
    assert share == pytest.approx(0.5, abs=0.05)  # 0.9 without balancing
    plain = epoch_order(labels, "none", torch.Generator().manual_seed(0))
    assert sorted(plain.tolist()) == list(range(1000))  # a permutation: every image once
    assert epoch_seed(42, 1) != epoch_seed(42, 2) and epoch_seed(42, 1) == epoch_seed(42, 1)


def test_loss_weights_make_both_classes_count_equally() -> None:
    labels = np.array([0] * 25 + [1] * 75)
    weights = sample_weights(labels, "weights")
    assert weights[labels == 0].sum() == pytest.approx(weights[labels == 1].sum())
    assert weights.mean() == pytest.approx(1.0)
    assert torch.equal(sample_weights(labels, "sampler"), torch.ones(100))


def test_label_smoothing_moves_targets_towards_one_half() -> None:
    logits = torch.tensor([10.0, -10.0])
    targets = torch.tensor([1.0, 0.0])
    ones = torch.ones(2)
    sharp = batch_loss(logits, targets, ones, 0.0)
    smooth = batch_loss(logits, targets, ones, 0.2)
    assert sharp < 1e-3 < smooth  # confident and right costs almost nothing only without smoothing
    # Smoothed target e/2 = 0.1: the loss is minimal at sigmoid(logit) = 0.9.
    best = torch.logit(torch.tensor([0.9, 0.1]))
    assert batch_loss(best, targets, ones, 0.2) < batch_loss(best * 1.5, targets, ones, 0.2)


def test_ema_follows_the_weights_with_short_memory_early_on() -> None:
    model, ema = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
        ema.weight.fill_(0.0)
    update_ema(ema, model, decay=0.998, step=0)  # effective decay (1+0)/(10+0) = 0.1
    assert ema.weight.mean().item() == pytest.approx(0.9)
    update_ema(ema, model, decay=0.5, step=10_000)  # decay caps at the configured value
    assert ema.weight.mean().item() == pytest.approx(0.95)


def test_no_weight_decay_on_biases_and_norm_scales() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    optimizer = build_optimizer(model, TrainSettings(weight_decay=0.05))
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"])
    assert {p.ndim for p in plain["params"]} == {1}
    assert isinstance(build_optimizer(model, TrainSettings(optimizer="sgd")), torch.optim.SGD)
    assert math.isclose(optimizer.defaults["lr"], TrainSettings().lr)
