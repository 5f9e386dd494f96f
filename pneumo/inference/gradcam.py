"""Visual evidence for a network's decision: Grad-CAM heatmaps and activation maps.

A reviewer (or a radiologist using the service) should be able to see *where* the model looked: a
pneumonia call driven by the lungs is credible, one driven by a text marker or the image border is
a shortcut. Images enter through :func:`pneumo.data.transforms.standardize`, the same path as
training and inference, so the explanation is of the decision the model actually makes.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image
from torch import nn
from tqdm import tqdm

from pneumo.data.transforms import standardize
from pneumo.inference import check_images
from pneumo.models import conv_blocks

log = logging.getLogger(__name__)

TARGETS: dict[str, float] = {"pneumonia": 1.0, "normal": -1.0}  # sign applied to the logit
HEATMAP_CMAP = "jet"
# Outcome groups of the sampled examples, in display order.
GROUPS: dict[str, str] = {
    "TP": "true positive",
    "TN": "true negative",
    "FP": "false positive",
    "FN": "false negative",
}
ACTIVATION_CHANNELS = 8


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration; restores each submodule's own flag (some may be frozen)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def checked_images(model: nn.Module, images: np.ndarray) -> np.ndarray:
    images = check_images(model, images)
    if len(images) == 0:
        raise ValueError("no images given: pass at least one (N, S, S) image")
    return images


def _is_spatial_map(output: Any) -> bool:
    # A 1x1 map is the output of global pooling: it no longer says anything about *where*.
    return isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[-2:].numel() > 1


def find_target_layer(model: nn.Module, image_size: int) -> tuple[str, nn.Module]:
    """The module whose output is the last spatial feature map before pooling or flatten.

    Found by running one blank image and watching which module finishes a 4-D map last; forward
    hooks fire inner modules first, so this is the outermost module returning that map (e.g.
    ``features`` or ``stages``), which is called once per forward pass.
    """
    names = {module: name for name, module in model.named_modules()}
    finished: list[nn.Module] = []

    def record(module: nn.Module, _inputs: Any, output: Any) -> None:
        if _is_spatial_map(output):
            finished.append(module)

    handles = [m.register_forward_hook(record) for m in model.modules() if m is not model]
    blank = torch.zeros(1, image_size, image_size, dtype=torch.uint8)
    try:
        with _eval_mode(model), torch.no_grad():
            model(standardize(blank))
    finally:
        for handle in handles:
            handle.remove()
    if not finished:
        raise ValueError(
            f"{type(model).__name__} produced no 4-D feature map larger than 1x1: pass the "
            "convolutional layer to explain as layer="
        )
    return names[finished[-1]], finished[-1]


def gradcam(
    model: nn.Module,
    images: np.ndarray,
    target: str = "pneumonia",
    layer: nn.Module | None = None,
    batch_size: int = 16,
) -> np.ndarray:
    """Grad-CAM heatmaps (N, S, S) float32 in [0, 1] for uint8 images (N, S, S).

    Each map is stretched to [0, 1] on its own, so it shows where the evidence for ``target`` lies
    within one image, not how strong it is; all zeros means no region argues for ``target`` (an
    untrained or confident-negative network). ``layer`` defaults to :func:`find_target_layer`.
    An ensemble's map is the mean of its members' maps.
    """
    members = getattr(model, "members", None)
    if members is not None and layer is None:
        images = checked_images(model, images)
        maps = [gradcam(member, images, target, None, batch_size) for member in members]
        return np.mean(maps, axis=0).astype(np.float32)
    if target not in TARGETS:
        raise ValueError(f"unknown target '{target}': choose one of {', '.join(TARGETS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    images = checked_images(model, images)
    side = images.shape[1]
    if layer is None:
        name, layer = find_target_layer(model, side)
        log.debug("grad-cam layer: %s", name)
    elif not any(module is layer for module in model.modules()):
        raise ValueError("layer is not a submodule of model: pass one of model.modules()")

    captured: dict[str, torch.Tensor] = {}

    def capture(_module: nn.Module, _inputs: Any, output: Any) -> None:
        captured["map"] = output

    sign = TARGETS[target]
    out = np.empty(images.shape, dtype=np.float32)
    starts = range(0, len(images), batch_size)
    handle = layer.register_forward_hook(capture)
    try:
        # Gradients are taken with autograd.grad for the feature map only: parameters' .grad stay
        # untouched, and no module backward hook clashes with the in-place ReLUs.
        with _eval_mode(model), torch.inference_mode(False), torch.enable_grad():
            for start in tqdm(starts, desc="grad-cam", unit="batch", disable=len(starts) < 4):
                batch = standardize(images[start : start + batch_size]).requires_grad_(True)
                captured.clear()
                score = sign * model(batch)
                feature_map = captured.get("map")
                if not _is_spatial_map(feature_map):
                    raise ValueError(
                        f"the Grad-CAM layer returned {type(feature_map).__name__} of shape "
                        f"{getattr(feature_map, 'shape', None)}, not a 4-D feature map: pass a "
                        "convolutional block as layer="
                    )
                out[start : start + len(batch)] = _stretched_cam(score, feature_map, side)
    finally:
        handle.remove()
    return out


def _stretched_cam(score: torch.Tensor, feature_map: torch.Tensor, side: int) -> np.ndarray:
    """One batch's Grad-CAM maps at ``side`` pixels, each stretched to [0, 1] on its own."""
    (grads,) = torch.autograd.grad(score.sum(), feature_map)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * feature_map).sum(dim=1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=(side, side), mode="bilinear", align_corners=False)
    low, high = cam.amin(dim=(2, 3), keepdim=True), cam.amax(dim=(2, 3), keepdim=True)
    spread = high - low
    # A map flat up to rounding error would otherwise be stretched into pure noise.
    cam = torch.where(spread > 1e-6 * high, (cam - low) / spread.clamp_min(1e-12), 0.0)
    return cam[:, 0].clamp(0.0, 1.0).numpy()


def activation_maps(model: nn.Module, image: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Output (C, h, w) of every convolution block for one uint8 image (S, S), in forward order."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"expected one image of shape (S, S), got {image.shape}")
    images = checked_images(model, image[None])
    model = getattr(model, "members", [model])[0]  # an ensemble: its first member's maps
    blocks = conv_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no convolution blocks to show")
    names = {module: name for name, module in blocks}
    maps: dict[str, np.ndarray] = {}  # insertion order = the order blocks ran in

    def record(module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.ndim == 4 and names[module] not in maps:
            maps[names[module]] = output[0].detach().float().contiguous().numpy().copy()

    handles = [module.register_forward_hook(record) for _, module in blocks]
    try:
        with _eval_mode(model), torch.no_grad():
            model(standardize(images))
    finally:
        for handle in handles:
            handle.remove()
    return list(maps.items())


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Blend a colour-mapped heatmap in [0, 1] onto a grayscale uint8 image -> (S, S, 3) uint8."""
    image, heatmap = np.asarray(image), np.asarray(heatmap, dtype=np.float64)
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"expected a uint8 image of shape (S, S), got {image.dtype} {image.shape}")
    if heatmap.shape != image.shape:
        raise ValueError(
            f"heatmap shape {heatmap.shape} differs from image shape {image.shape}: compute the "
            "heatmap with gradcam() on the same image"
        )
    if not np.isfinite(heatmap).all():
        raise ValueError("heatmap holds NaN or infinite values: recompute it with gradcam()")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    colours = colormaps[HEATMAP_CMAP](np.clip(heatmap, 0.0, 1.0))[..., :3]
    gray = np.repeat(image[..., None] / 255.0, 3, axis=-1)
    blended = (1.0 - alpha) * gray + alpha * colours
    return np.clip(np.rint(blended * 255.0), 0, 255).astype(np.uint8)


def overlay_png(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> bytes:
    """:func:`overlay` encoded as PNG bytes, ready to return from an HTTP endpoint."""
    buffer = io.BytesIO()
    Image.fromarray(overlay(image, heatmap, alpha), mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()
