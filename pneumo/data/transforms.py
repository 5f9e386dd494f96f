"""Model input: per-image standardisation (train and inference) and train-time augmentation.

Radiographs from different machines and exposure settings differ mostly in brightness, contrast
and gamma. Standardising each image by its own mean and spread removes the linear part of that
difference; strong photometric augmentation teaches the network to ignore the non-linear rest,
and small geometric jitter covers differences in positioning.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from pneumo.config import AugmentSettings

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


class RandomGamma(v2.Transform):
    """Gamma drawn log-uniformly from [low, high]: mimics a different detector response curve."""

    def __init__(self, low: float, high: float) -> None:
        super().__init__()
        self.low, self.high = low, high

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        log_gamma = torch.empty(1).uniform_(math.log(self.low), math.log(self.high)).item()
        return {"gamma": math.exp(log_gamma)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.adjust_gamma, inpt, params["gamma"])


def build_augmentation(settings: AugmentSettings) -> v2.Transform:
    """Train-time augmentation of one uint8 image (1, S, S) -> float (1, S, S) in [0, 1].

    Parameters come from params.yaml ``train.augment``. Works in float: torchvision's bilinear
    warp of uint8 tensors is ten times slower on this CPU.
    """
    steps: list[v2.Transform] = [v2.ToDtype(torch.float32, scale=True)]
    if not settings.enabled:
        return v2.Compose(steps)
    steps += [
        v2.RandomAffine(
            degrees=settings.rotation_degrees,
            translate=(settings.translate, settings.translate),
            scale=(settings.scale_min, settings.scale_max),
            interpolation=v2.InterpolationMode.BILINEAR,
        ),
    ]
    if settings.hflip_p > 0:
        steps.append(v2.RandomHorizontalFlip(settings.hflip_p))
    steps.append(RandomGamma(settings.gamma_min, settings.gamma_max))
    steps.append(v2.ColorJitter(brightness=settings.brightness, contrast=settings.contrast))
    if settings.equalize_p > 0:
        steps.append(v2.RandomEqualize(settings.equalize_p))
    if settings.blur_p > 0:
        blur = v2.GaussianBlur(kernel_size=5, sigma=(0.1, settings.blur_sigma_max))
        steps.append(v2.RandomApply([blur], p=settings.blur_p))
    if settings.noise_p > 0:
        noise = v2.GaussianNoise(sigma=settings.noise_sigma)
        steps.append(v2.RandomApply([noise], p=settings.noise_p))
    if settings.erase_p > 0:
        steps.append(v2.RandomErasing(settings.erase_p, scale=(0.01, 0.06), value=0))
    return v2.Compose(steps)


@contextmanager
def _single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def augment_batch(images: torch.Tensor, augmentation: v2.Transform) -> torch.Tensor:
    """Augment each uint8 image of (N, 1, S, S) independently -> float (N, 1, S, S) in [0, 1].

    v2 transforms draw one set of random parameters per call, so a batched call would rotate every
    image of the batch by the same angle; one call per image keeps the draws independent. Single
    images are too small to split across threads: with two threads they ran 4-6x slower.
    """
    with _single_thread():
        return torch.stack([augmentation(image) for image in images])
