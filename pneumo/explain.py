"""Visual evidence for a network's decision: Grad-CAM heatmaps and activation maps.

A reviewer (or a radiologist using the service) should be able to see *where* the model looked: a
pneumonia call driven by the lungs is credible, one driven by a text marker or the image border is
a shortcut. Images enter through :func:`pneumo.data.transforms.standardize`, the same path as
training and inference, so the explanation is of the decision the model actually makes.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image
from torch import nn
from tqdm import tqdm

from pneumo.config import Settings
from pneumo.data.kermany import CLASSES
from pneumo.data.transforms import standardize
from pneumo.decision import Decision
from pneumo.inference import check_images
from pneumo.models import conv_blocks
from pneumo.workspace import Workspace, atomic_path

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


def _check_images(model: nn.Module, images: np.ndarray) -> np.ndarray:
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
        images = _check_images(model, images)
        maps = [gradcam(member, images, target, None, batch_size) for member in members]
        return np.mean(maps, axis=0).astype(np.float32)
    if target not in TARGETS:
        raise ValueError(f"unknown target '{target}': choose one of {', '.join(TARGETS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    images = _check_images(model, images)
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
                (grads,) = torch.autograd.grad(score.sum(), feature_map)
                weights = grads.mean(dim=(2, 3), keepdim=True)
                cam = F.relu((weights * feature_map).sum(dim=1, keepdim=True)).detach()
                cam = F.interpolate(cam, size=(side, side), mode="bilinear", align_corners=False)
                low, high = cam.amin(dim=(2, 3), keepdim=True), cam.amax(dim=(2, 3), keepdim=True)
                spread = high - low
                # A map flat up to rounding error would otherwise be stretched into pure noise.
                cam = torch.where(spread > 1e-6 * high, (cam - low) / spread.clamp_min(1e-12), 0.0)
                out[start : start + len(batch)] = cam[:, 0].clamp(0.0, 1.0).numpy()
    finally:
        handle.remove()
    return out


def activation_maps(model: nn.Module, image: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Output (C, h, w) of every convolution block for one uint8 image (S, S), in forward order."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"expected one image of shape (S, S), got {image.shape}")
    images = _check_images(model, image[None])
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


def select_examples(
    labels: np.ndarray,
    probabilities: np.ndarray,
    decision: Decision,
    n_per_group: int = 4,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Indices of up to ``n_per_group`` images per outcome (TP, TN, FP, FN), drawn with ``seed``.

    Empty groups are left out; indices are sorted so the same seed always gives the same figure.
    """
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if labels.shape != probabilities.shape or labels.ndim != 1:
        raise ValueError(
            f"labels {labels.shape} and probabilities {probabilities.shape} must be equally long "
            "1-D arrays, one entry per image"
        )
    if n_per_group < 1:
        raise ValueError(f"n_per_group must be at least 1, got {n_per_group}")
    predicted = decision.positive(probabilities)
    members = {
        "TP": (labels == 1) & predicted,
        "TN": (labels == 0) & ~predicted,
        "FP": (labels == 0) & predicted,
        "FN": (labels == 1) & ~predicted,
    }
    rng = np.random.default_rng(seed)
    chosen: dict[str, np.ndarray] = {}
    for group, mask in members.items():
        candidates = np.flatnonzero(mask)
        if len(candidates):
            picked = rng.choice(candidates, size=min(n_per_group, len(candidates)), replace=False)
            chosen[group] = np.sort(picked)
    return chosen


def _short(name: str, limit: int = 32) -> str:
    if len(name) <= limit:
        return name
    keep = (limit - 1) // 2
    return f"{name[:keep]}…{name[-keep:]}"


def _save_png(fig: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    log.info("wrote %s", path)
    return path


def _gradcam_figure(
    rows: list[tuple[str, int]],
    images: np.ndarray,
    heatmaps: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    names: list[str],
    threshold: float,
    alpha: float,
) -> Figure:
    # Figure, not pyplot: no global figure registry to leak into, safe inside a web service.
    fig = Figure(figsize=(6.2, 2.9 * len(rows) + 0.8), layout="constrained")
    axes = fig.subplots(len(rows), 2, squeeze=False)
    for row, ((group, index), heatmap) in enumerate(zip(rows, heatmaps, strict=True)):
        left, right = axes[row]
        left.imshow(images[index], cmap="gray", vmin=0, vmax=255)
        left.set_title(f"{GROUPS[group]}\n{_short(names[index])}", fontsize=9)
        right.imshow(overlay(images[index], heatmap, alpha))
        right.set_title(
            f"label {CLASSES[int(labels[index])]}\np(pneumonia) = {probabilities[index]:.2f}",
            fontsize=9,
        )
        left.set_axis_off()
        right.set_axis_off()
    colorbar = fig.colorbar(
        ScalarMappable(Normalize(0.0, 1.0), cmap=HEATMAP_CMAP),
        ax=axes[:, 1].tolist(),
        shrink=min(1.0, 6.0 / (2.9 * len(rows))),
    )
    colorbar.set_label("Grad-CAM, pneumonia logit (per-image scale)", fontsize=9)
    fig.suptitle(f"Original | Grad-CAM overlay (threshold {threshold:.2f})", fontsize=11)
    return fig


def _activation_figure(
    samples: list[tuple[str, int, list[tuple[str, np.ndarray]]]],
    images: np.ndarray,
    names: list[str],
) -> Figure:
    rows = sum(len(maps) for _, _, maps in samples)
    columns = 1 + ACTIVATION_CHANNELS
    fig = Figure(figsize=(1.35 * columns, 1.45 * rows + 0.8), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    row = 0
    for group, index, maps in samples:
        for block, (name, activation) in enumerate(maps):
            axes[row, 0].set_axis_off()
            if block == 0:
                axes[row, 0].imshow(images[index], cmap="gray", vmin=0, vmax=255)
                axes[row, 0].set_title(f"{GROUPS[group]}\n{_short(names[index], 24)}", fontsize=8)
            for channel in range(ACTIVATION_CHANNELS):
                ax = axes[row, 1 + channel]
                if channel >= len(activation):
                    ax.set_axis_off()
                    continue
                ax.imshow(activation[channel], cmap="viridis")  # each channel on its own scale
                ax.set_xticks([])
                ax.set_yticks([])
                if channel == 0:
                    shape = "×".join(str(n) for n in activation.shape)
                    ax.set_ylabel(f"{name}\n{shape}", fontsize=8)
            row += 1
    fig.suptitle(
        f"Activation maps: first {ACTIVATION_CHANNELS} channels of each convolution block",
        fontsize=11,
    )
    return fig


def explain(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    decision: Decision,
    paths: Sequence[str | Path],
    out_dir: Path,
    n_per_group: int = 4,
    seed: int = 0,
    alpha: float = 0.4,
) -> dict[str, Path]:
    """Write Grad-CAM and activation-map figures for a seeded sample of right and wrong calls.

    Seeing the false positives and negatives next to the correct calls shows whether errors come
    from the lungs or from shortcuts. Returns {"gradcam_grid": path, "activation_maps": path}.
    """
    images = _check_images(model, images)
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    names = [Path(p).name for p in paths]
    if not len(images) == len(labels) == len(probabilities) == len(names):
        raise ValueError(
            f"images ({len(images)}), labels ({len(labels)}), probabilities "
            f"({len(probabilities)}) and paths ({len(names)}) must describe the same images"
        )
    chosen = select_examples(labels, probabilities, decision, n_per_group, seed)
    rows = [(group, int(index)) for group, indices in chosen.items() for index in indices]
    log.info(
        "explaining %d images: %s",
        len(rows),
        ", ".join(f"{len(v)} {GROUPS[k]}" for k, v in chosen.items()),
    )
    heatmaps = gradcam(model, images[[index for _, index in rows]])

    # One correct call of each class if there is one, else the first sampled images.
    firsts = [(group, int(chosen[group][0])) for group in ("TP", "TN") if group in chosen]
    firsts = firsts or rows[:2]
    samples = [(group, index, activation_maps(model, images[index])) for group, index in firsts]

    out_dir = Path(out_dir)
    figures = {
        "gradcam_grid": _gradcam_figure(
            rows, images, heatmaps, labels, probabilities, names, decision.threshold, alpha
        ),
        "activation_maps": _activation_figure(samples, images, names),
    }
    return {key: _save_png(fig, out_dir / f"{key}.png") for key, fig in figures.items()}


def explain_workspace(settings: Settings, workspace: Workspace = Workspace()) -> list[Path]:
    """The `explain` stage: Grad-CAM grids for the test split at the evaluated threshold."""
    from pneumo.accel import configure_threads
    from pneumo.data.preprocess import load_arrays
    from pneumo.predict import Predictor

    configure_threads(settings.model.threads)
    predictor = Predictor.from_workspace(
        workspace, settings.model.accelerator(), settings.model.runtime
    )
    test = load_arrays(workspace.arrays("test"))
    probabilities = predictor.probabilities(test["images"], settings.model.batch_size)
    written = explain(
        predictor.model,
        test["images"],
        test["labels"],
        probabilities,
        predictor.decision,
        test["paths"],
        workspace.explain_dir,
        n_per_group=settings.explain.n_per_group,
        seed=settings.explain.seed,
        alpha=settings.explain.alpha,
    )
    files = list(written.values())
    if workspace.run_id.is_file():
        from pneumo import tracking

        run_id = workspace.run_id.read_text().strip()
        tracking.log_to_run(settings, workspace, run_id, {}, files, "explain")
    return files
