"""Model input: per-image standardisation, the one function training and inference share.

Radiographs from different machines and exposure settings differ mostly in brightness, contrast
and gamma. Standardising each image by its own mean and spread removes the linear part of that
difference; strong photometric augmentation (pneumo/data/augment.py, training only) teaches the
network to ignore the non-linear rest. This module imports no torchvision: every process that
scores images (the service, each pipeline stage) loads it, and torchvision costs seconds.
"""

from __future__ import annotations

import numpy as np
import torch

NORMALISATION = "per_image_standardize"
# Floor for an image's standard deviation (one grey level), so a blank image stays finite.
_MIN_STD = 1.0 / 255.0


def standardize(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, S, S) or (N, 1, S, S) pixels -> float32 (N, 1, S, S), each image to mean 0, std 1.

    Pixels are uint8 (0..255) or, as torchvision's augmentations return them, float in [0, 1].
    """
    x = torch.as_tensor(images)
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif not x.is_floating_point():
        raise TypeError(f"standardize expects uint8 or float pixels, got {x.dtype}")
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"expected images (N, S, S) or (N, 1, S, S), got {tuple(x.shape)}")
    x = x.float()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(_MIN_STD)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def standardize_one(image: np.ndarray) -> np.ndarray:
    """One uint8 radiograph (S, S) -> the network's input (1, 1, S, S) as a contiguous array:
    NNCF's transform of int8's calibration images (the stress stage, bench/int8.py)."""
    return np.ascontiguousarray(standardize(torch.from_numpy(image[None])).numpy())
