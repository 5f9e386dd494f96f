"""The one place that turns decoded pixels into pneumonia probabilities.

Validation during training, evaluation, stress tests, batch prediction and the HTTP service all
call :func:`predict_proba`, so standardisation and test-time augmentation cannot drift apart.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pneumo.accel import Accelerator
from pneumo.data.transforms import standardize

CPU_FP32 = Accelerator("cpu", "fp32")
# Every probability leaves :func:`forward_pass` rounded to this many decimals (1e-6). The same image
# scored in another batch, by another route or with another thread count can differ in the last
# float bits (kernels pick other blockings; bf16 and fp32 differ more); rounding here, before any
# threshold or metric, is what makes "one image, one probability" hold at a documented precision,
# and what every equality test compares (tests/model/test_one_probability.py).
PROBABILITY_DECIMALS = 6
PROBABILITY_PRECISION = 10.0**-PROBABILITY_DECIMALS
# Test-time views (rotation degrees, horizontal shift as a fraction of the side, scale): small
# changes of positioning that the network saw during training; their probabilities are averaged.
TTA_VIEWS: tuple[tuple[float, float, float], ...] = (
    (0.0, 0.0, 1.0),
    (0.0, 0.0, 1.08),
    (5.0, 0.0, 1.0),
    (-5.0, 0.0, 1.0),
    (0.0, 0.04, 1.0),
    (0.0, -0.04, 1.0),
)


@functools.cache
def _tta_grids(side: int) -> torch.Tensor:
    """Sampling grids of every view, (views, S, S, 2): built once per image size."""
    thetas = []
    for degrees, shift, scale in TTA_VIEWS:
        angle = math.radians(degrees)
        cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
        inverse = torch.tensor([[cos, sin], [-sin, cos]], dtype=torch.float32)
        offset = torch.tensor([[2.0 * shift], [0.0]])
        thetas.append(torch.cat([inverse, -(inverse @ offset)], 1))
    return F.affine_grid(torch.stack(thetas), [len(TTA_VIEWS), 1, side, side], align_corners=False)


def tta_views(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, S, S) float -> (views * N, 1, S, S): each view of the whole batch, view-major.

    One grid_sample with the views as its batch and the images as its channels: every image is
    warped by each view's grid without copying the images or the grids per image (4x faster at
    32 images than repeating both, and bit-identical).
    """
    n, _, side, _ = images.shape
    grids = _tta_grids(side).to(images.device)
    stacked = images.reshape(1, n, side, side).expand(len(TTA_VIEWS), n, side, side)
    views = F.grid_sample(
        stacked, grids, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return views.reshape(len(TTA_VIEWS) * n, 1, side, side)


def check_images(model: nn.Module, images: np.ndarray) -> np.ndarray:
    """Reject pixels not prepared by ``decode_radiograph`` at the model's size, with a hint."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(
            f"expected square uint8 images of shape (N, S, S), got {images.dtype} {images.shape}: "
            "decode files with pneumo.data.preprocess.decode_radiograph first"
        )
    expected = getattr(model, "image_size", None)
    if expected is not None and images.shape[1] != expected:
        raise ValueError(
            f"the model takes {expected}x{expected} images, got {images.shape[1]}x"
            f"{images.shape[2]}: decode at the model's image_size"
        )
    return images


def prepare(model: nn.Module, accel: Accelerator) -> nn.Module:
    """Put the model on the accelerator's device and memory format (idempotent)."""
    fmt = torch.channels_last if accel.channels_last else torch.contiguous_format
    return model.to(device=accel.device, memory_format=fmt)


@dataclass(frozen=True)
class Prediction:
    """Probabilities, and on request the network's pooled features (for the input guard)."""

    probabilities: np.ndarray  # (N,) float64
    features: np.ndarray | None = None  # (N, D): each conv block's mean activation, in order


def forward_pass(
    model: nn.Module,
    images: np.ndarray,
    batch_size: int = 64,
    tta: bool = False,
    accel: Accelerator = CPU_FP32,
    features: bool = False,
) -> Prediction:
    """Probability of pneumonia for each uint8 image of ``images`` (N, S, S).

    With ``features``, the same forward pass also returns every convolution block's spatially
    averaged output for the unaugmented view: what :mod:`pneumo.inference.guard` measures distances on.
    """
    images = check_images(model, images)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    was_training = model.training
    model.eval()
    prepare(model, accel)
    views = len(TTA_VIEWS) if tta else 1
    out = np.empty(len(images), dtype=np.float64)
    pooled: list[np.ndarray] = []
    runner = None
    if features:  # an exported network computes them itself; a torch one through hooks
        from pneumo.models import with_features

        runner = getattr(model, "with_features", None) or with_features(model)
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = torch.from_numpy(images[start : start + batch_size]).unsqueeze(1)
                pixels = batch.to(accel.device).float() / 255.0
                if tta:
                    pixels = tta_views(pixels)
                with accel.autocast():
                    if runner is None:
                        logits = model(standardize(pixels))
                    else:
                        logits, block_means = runner(standardize(pixels))
                probs = torch.sigmoid(logits.float()).view(views, len(batch)).mean(0)
                out[start : start + len(batch)] = probs.double().cpu().numpy()
                if runner is not None:  # the first len(batch) rows are the unaugmented view
                    pooled.append(block_means[: len(batch)].float().cpu().numpy())
    finally:
        model.train(was_training)
    out = np.round(out, PROBABILITY_DECIMALS)
    if not features:
        return Prediction(out)
    return Prediction(out, np.concatenate(pooled) if pooled else np.empty((0, 0), np.float32))


def predict_proba(
    model: nn.Module,
    images: np.ndarray,
    batch_size: int = 64,
    tta: bool = False,
    accel: Accelerator = CPU_FP32,
) -> np.ndarray:
    """Probability of pneumonia for each uint8 image of ``images`` (N, S, S) -> (N,) float64."""
    return forward_pass(model, images, batch_size, tta, accel).probabilities
