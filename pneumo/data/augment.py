"""Train-time augmentation of whole batches as tensor ops: every image gets its own random draw.

One ``affine_grid`` + ``grid_sample`` warps the batch (rotation, scale, aspect, shift, flip);
tone changes, blur, resampling and noise are vectorised; only JPEG re-compression runs per
image (Pillow's libjpeg). All draws come from one ``torch.Generator``, so an
epoch's augmentation is reproducible and a resumed run repeats the uninterrupted one. The
per-image torchvision v2 reference (``train.augment.engine: per_image``) is at the end: only
training imports this module, so scoring processes never load torchvision.

Why these ops: radiographs from another hospital differ in positioning and field of view
(geometry, aspect), detector response (gamma, brightness, contrast), and in how the file was
made (resampling blur, JPEG compression, noise). In the Kermany release, image sharpness and
file size alone separate the classes (a logistic regression on one edge-energy number reaches
validation ROC-AUC 0.89), so resampling and compression are drawn for both classes alike.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from pneumo.config import AugmentSettings


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator) * (high - low) + low


def _chosen(n: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """Which of ``n`` images an op with probability ``p`` applies to (draws even when p is 0)."""
    return torch.rand(n, generator=generator) < p


class BatchAugmentation:
    """(N, 1, S, S) uint8 -> float in [0, 1], each image with independent random parameters."""

    def __init__(self, settings: AugmentSettings) -> None:
        self.cfg = settings

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not self.cfg.enabled:
            return images.float() / 255.0
        x = self._gamma(images, generator)
        x = self._geometry(x, generator)
        x = self._tone(x, generator)
        x = self._degrade(x, generator)
        x = self._erase(x, generator)
        return self._borders(x, generator)

    def _borders(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Collimator shadows: black bars of independent random thickness on each side.

        In the Kermany release dark borders are more common on pneumonia films; bars drawn for
        both classes alike keep the network from reading the diagnosis off the frame.
        """
        cfg, n = self.cfg, len(x)
        chosen = _chosen(n, cfg.border_p, g)
        thickness = (torch.rand(n, 4, generator=g) * cfg.border_max * x.shape[-1]).long()
        if not chosen.any():
            return x
        side = x.shape[-1]
        index = torch.arange(side)
        top, bottom, left, right = (thickness[:, k].view(n, 1, 1) for k in range(4))
        rows, cols = index.view(1, side, 1), index.view(1, 1, side)
        bars = (rows < top) | (rows >= side - bottom) | (cols < left) | (cols >= side - right)
        return x.masked_fill((bars & chosen.view(n, 1, 1)).unsqueeze(1), 0.0)

    def _gamma(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """uint8 -> float in [0, 1] through a per-image gamma curve (a 256-entry lookup table).

        Gamma is pointwise, so applying it before the warp equals applying it after, up to
        interpolation; the table makes it cheaper than a float power.
        """
        cfg, n = self.cfg, len(images)
        gamma = torch.exp(_uniform(n, math.log(cfg.gamma_min), math.log(cfg.gamma_max), g))
        table = (torch.arange(256, dtype=torch.float32) / 255.0).view(1, -1).pow(gamma.view(-1, 1))
        values = torch.gather(table, 1, images.reshape(n, -1).long())
        return values.view(images.shape)

    def _geometry(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Rotation, isotropic scale, aspect change, shift and flip in one resampling."""
        cfg, n = self.cfg, len(x)
        angle = _uniform(n, -cfg.rotation_degrees, cfg.rotation_degrees, g) * (math.pi / 180)
        scale = _uniform(n, cfg.scale_min, cfg.scale_max, g)
        log_aspect = _uniform(n, -math.log(cfg.aspect_max), math.log(cfg.aspect_max), g)
        shift = _uniform(2 * n, -cfg.translate, cfg.translate, g).view(n, 2) * 2.0  # [-1, 1] units
        flip = torch.where(_chosen(n, cfg.hflip_p, g), -1.0, 1.0)
        sx = scale * torch.exp(log_aspect / 2) * flip
        sy = scale * torch.exp(-log_aspect / 2)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # Output -> input coordinates: undo the shift, the rotation, then the (flipped) scale.
        a, b, c, d = cos / sx, sin / sx, -sin / sy, cos / sy
        tx, ty = shift[:, 0], shift[:, 1]
        coefficients = torch.stack([a, b, -(a * tx + b * ty), c, d, -(c * tx + d * ty)], 1)
        return F.grid_sample(x, _grid(coefficients, x.shape[-1]), mode="bilinear",
                             padding_mode="zeros", align_corners=False)  # fmt: skip

    def _tone(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Detector response: brightness, contrast, and an occasional equalisation."""
        cfg, n = self.cfg, len(x)
        shape = (n, 1, 1, 1)
        bright = _uniform(n, max(0.0, 1 - cfg.brightness), 1 + cfg.brightness, g).view(shape)
        contrast = _uniform(n, max(0.0, 1 - cfg.contrast), 1 + cfg.contrast, g).view(shape)
        # In place: x is this augmentation's own tensor (the warp's output).
        x = x.mul_(bright).clamp_(0, 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = x.mul_(contrast).add_((1 - contrast) * mean).clamp_(0, 1)
        equalize = _chosen(n, cfg.equalize_p, g)
        if equalize.any():
            x[equalize] = TF.equalize(x[equalize])
        return x

    def _degrade(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """How the file was made: resampling, blur or sharpening, noise, JPEG compression."""
        cfg, n = self.cfg, len(x)
        resample = _chosen(n, cfg.resample_p, g)
        factor = _uniform(n, cfg.resample_scale_min, 1.0, g)
        blur = _chosen(n, cfg.blur_p, g)
        sigma = _uniform(n, 0.1, cfg.blur_sigma_max, g)
        sharpen = _chosen(n, cfg.sharpen_p, g)
        amount = _uniform(n, 0.0, cfg.sharpen_max, g)
        noise = _chosen(n, cfg.noise_p, g)
        noise_field = torch.randn((int(noise.sum()), *x.shape[1:]), generator=g)
        jpeg = _chosen(n, cfg.jpeg_p, g)
        quality = _uniform(n, cfg.jpeg_quality_min, cfg.jpeg_quality_max + 1, g).floor()
        # Assigned in place: x is this augmentation's own tensor.
        if resample.any():
            x[resample] = _resample(x[resample], factor[resample])
        if blur.any():
            x[blur] = _gaussian_blur(x[blur], sigma[blur])
        if sharpen.any():  # unsharp mask: the sharper look of the other class, too
            chosen = x[sharpen]
            detail = chosen - _gaussian_blur(chosen, torch.full((len(chosen),), 1.0))
            x[sharpen] = (chosen + amount[sharpen].view(-1, 1, 1, 1) * detail).clamp_(0, 1)
        if noise.any():
            x[noise] = (x[noise] + noise_field * cfg.noise_sigma).clamp_(0, 1)
        if jpeg.any():
            x[jpeg] = _jpeg(x[jpeg], quality[jpeg])
        return x

    def _erase(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Random rectangles of zeros (1-6 % of the image), as torchvision's RandomErasing."""
        cfg, n = self.cfg, len(x)
        chosen = _chosen(n, cfg.erase_p, g)
        area = _uniform(n, 0.01, 0.06, g)
        log_ratio = _uniform(n, math.log(0.3), math.log(3.3), g)
        corner = torch.rand(n, 2, generator=g)
        if not chosen.any():
            return x
        side = x.shape[-1]
        h = (area * torch.exp(log_ratio)).sqrt().mul(side).round().clamp(1, side).long()
        w = (area / torch.exp(log_ratio)).sqrt().mul(side).round().clamp(1, side).long()
        top = (corner[:, 0] * (side - h + 1)).long()
        left = (corner[:, 1] * (side - w + 1)).long()
        rows = torch.arange(side).view(1, side, 1)
        cols = torch.arange(side).view(1, 1, side)
        inside = (
            (rows >= top.view(n, 1, 1)) & (rows < (top + h).view(n, 1, 1))
            & (cols >= left.view(n, 1, 1)) & (cols < (left + w).view(n, 1, 1))
        )  # fmt: skip
        mask = (inside & chosen.view(n, 1, 1)).unsqueeze(1)
        return x.masked_fill(mask, 0.0)


def _grid(coefficients: torch.Tensor, side: int) -> torch.Tensor:
    """``affine_grid`` for (N, 6) affine maps of a square image, without its slow batched matmul."""
    base = (torch.arange(side, dtype=torch.float32) * 2 + 1) / side - 1  # pixel centres in [-1, 1]
    gx, gy = base.view(1, 1, -1), base.view(1, -1, 1)
    m = coefficients.view(-1, 1, 1, 6)
    grid = torch.empty(len(coefficients), side, side, 2)
    grid[..., 0] = m[..., 0] * gx + (m[..., 1] * gy + m[..., 2])
    grid[..., 1] = m[..., 3] * gx + (m[..., 4] * gy + m[..., 5])
    return grid


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per image, as weighted sums of shifted copies."""
    n, side = len(x), x.shape[-1]
    radius = max(2, math.ceil(3 * float(sigma.max())))
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-(offsets.view(1, -1) ** 2) / (2 * sigma.view(-1, 1) ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).view(n, 1, 1, 1, -1)
    padded = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    rows = kernel[..., 0] * padded[..., :side]
    for j in range(1, 2 * radius + 1):
        rows.addcmul_(kernel[..., j], padded[..., j : j + side])
    out = kernel[..., 0] * rows[..., :side, :]
    for j in range(1, 2 * radius + 1):
        out.addcmul_(kernel[..., j], rows[..., j : j + side, :])
    return out


def _resample(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Down to ``factor`` of the side (antialiased) and back: an image made at lower resolution.

    Sides are rounded to multiples of 8 pixels so that a batch needs only a few resizes.
    """
    side = x.shape[-1]
    out = x.clone()
    small = (factor * side / 8).round().clamp_min(1).long() * 8
    for target in small.unique().tolist():
        if target >= side:
            continue
        picked = small == target
        down = F.interpolate(x[picked], size=(target, target), mode="bilinear", antialias=True)
        out[picked] = F.interpolate(down, size=(side, side), mode="bilinear").clamp(0, 1)
    return out


def _jpeg(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """JPEG re-compression at one quality per image, with Pillow's libjpeg (as decoding uses)."""
    out = torch.empty_like(x)
    pixels = (x * 255).round_().to(torch.uint8).numpy()
    for index, (image, q) in enumerate(zip(pixels, quality.tolist(), strict=True)):
        buffer = io.BytesIO()
        Image.fromarray(image[0]).save(buffer, format="JPEG", quality=int(q))
        buffer.seek(0)
        out[index, 0] = torch.from_numpy(np.asarray(Image.open(buffer), dtype=np.float32) / 255.0)
    return out


# ---- the per-image reference (torchvision v2; train.augment.engine: per_image)


class RandomGamma(v2.Transform):
    """Gamma drawn log-uniformly from [low, high]: mimics a different detector response curve."""

    def __init__(self, low: float, high: float) -> None:
        super().__init__()
        self.low, self.high = low, high

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        log_gamma = torch.empty(1).uniform_(math.log(self.low), math.log(self.high)).item()
        return {"gamma": math.exp(log_gamma)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(TF.adjust_gamma, inpt, params["gamma"])


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
