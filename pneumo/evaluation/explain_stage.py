"""The `explain` stage: Grad-CAM and activation figures of sampled test images, per outcome.

What the reviewer of a run looks at (reports/explain/, logged to MLflow); the heatmaps come from
:mod:`pneumo.inference.gradcam`, the same code the service's /explain runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from torch import nn

from pneumo.config import Settings
from pneumo.data.kermany import CLASSES
from pneumo.decision import Decision
from pneumo.inference.gradcam import (
    ACTIVATION_CHANNELS,
    GROUPS,
    HEATMAP_CMAP,
    activation_maps,
    checked_images,
    gradcam,
    overlay,
)
from pneumo.workspace import Workspace, atomic_path

log = logging.getLogger(__name__)


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
    images = checked_images(model, images)
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
    from pneumo.inference.predictor import Predictor

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
