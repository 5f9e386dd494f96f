"""What training takes in: the train and val arrays as tensors, and the augmentation engine."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from pneumo.config import Settings
from pneumo.data.augment import BatchAugmentation, augment_batch, build_augmentation
from pneumo.data.preprocess import load_arrays
from pneumo.errors import PipelineOrderError
from pneumo.training.optimization import sample_weights
from pneumo.training.train_state import TrainData
from pneumo.workspace import Workspace, sha256_file

Augmenter = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def load_train_data(
    settings: Settings, workspace: Workspace
) -> tuple[TrainData, dict[str, dict[str, np.ndarray]], dict[str, str]]:
    """The train and val arrays as training takes them, their raw arrays and their sha256."""
    cfg, size = settings.train, settings.preprocess.image_size
    if not workspace.array_stats.is_file():
        raise PipelineOrderError(
            f"{workspace.array_stats} not found: run `pneumo preprocess` first"
        )
    arrays = {s: _load_split(workspace, s, size) for s in ("train", "val")}
    digests = {s: sha256_file(workspace.arrays(s)) for s in arrays}
    labels = arrays["train"]["labels"]
    if len(labels) < cfg.batch_size:
        raise PipelineOrderError(
            f"the train split has {len(labels)} images, fewer than train.batch_size "
            f"{cfg.batch_size}: lower train.batch_size"
        )
    data = TrainData(
        images=torch.from_numpy(arrays["train"]["images"]).unsqueeze(1),
        labels=labels,
        targets=torch.as_tensor(labels, dtype=torch.float32),
        weights=sample_weights(labels, cfg.class_balance),
        val_images=arrays["val"]["images"],
        val_labels=arrays["val"]["labels"],
    )
    return data, arrays, digests


def _load_split(workspace: Workspace, split: str, image_size: int) -> dict[str, np.ndarray]:
    arrays = load_arrays(workspace.arrays(split))
    if arrays["images"].shape[1:] != (image_size, image_size):
        raise PipelineOrderError(
            f"{workspace.arrays(split)} holds {arrays['images'].shape[1]} px images but "
            f"preprocess.image_size is {image_size}: run `pneumo preprocess` (or `dvc repro`)"
        )
    if len(np.unique(arrays["labels"])) < 2:
        raise PipelineOrderError(f"{workspace.arrays(split)} lacks one of the classes: resplit")
    return arrays


def make_augmenter(settings: Settings) -> Augmenter:
    """The configured engine as one call signature: (uint8 batch, generator) -> float batch."""
    cfg = settings.train.augment
    if cfg.engine == "batched":
        return BatchAugmentation(cfg)
    reference = build_augmentation(cfg)
    # torchvision v2 draws from torch's global generator (seeded per epoch by the loop).
    return lambda images, _generator: augment_batch(images, reference)
