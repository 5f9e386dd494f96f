"""The one place that turns decoded pixels into pneumonia probabilities.

Validation during training, evaluation, batch prediction and the HTTP service all call
:func:`predict_proba`, so standardisation and test-time augmentation cannot drift apart.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from torch import nn
from torchvision.transforms.v2 import functional as F

from pneumo.data.transforms import standardize

log = logging.getLogger(__name__)

# Test-time views (rotation degrees, horizontal shift as a fraction of the side, scale): small
# changes of positioning that the network saw during training; their average is steadier.
TTA_VIEWS: tuple[tuple[float, float, float], ...] = (
    (0.0, 0.0, 1.0),
    (0.0, 0.0, 1.08),
    (5.0, 0.0, 1.0),
    (-5.0, 0.0, 1.0),
    (0.0, 0.04, 1.0),
    (0.0, -0.04, 1.0),
)


def available_cores() -> int:
    """CPU cores this process may run on (the container's share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure_threads(threads: int = 0) -> int:
    """Use ``threads`` torch threads (0 = one per available core); more only oversubscribe."""
    wanted = threads or available_cores()
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)
    return wanted


def _views(images: torch.Tensor, tta: bool) -> list[torch.Tensor]:
    if not tta:
        return [images]
    images = images.float() / 255.0  # torchvision warps uint8 far slower than float
    side = images.shape[-1]
    return [
        F.affine(
            images,
            angle=angle,
            translate=[round(shift * side), 0],
            scale=scale,
            shear=[0.0, 0.0],
            interpolation=F.InterpolationMode.BILINEAR,
        )
        for angle, shift, scale in TTA_VIEWS
    ]


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


def predict_proba(
    model: nn.Module, images: np.ndarray, batch_size: int = 64, tta: bool = False
) -> np.ndarray:
    """Probability of pneumonia for each uint8 image of ``images`` (N, S, S) -> (N,) float64."""
    images = check_images(model, images)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if torch.get_num_threads() > available_cores():
        configure_threads()
    was_training = model.training
    model.eval()
    out = np.empty(len(images), dtype=np.float64)
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = torch.from_numpy(images[start : start + batch_size]).unsqueeze(1)
                probs = [torch.sigmoid(model(standardize(v))) for v in _views(batch, tta)]
                out[start : start + len(batch)] = torch.stack(probs).mean(0).double().numpy()
    finally:
        model.train(was_training)
    return out
