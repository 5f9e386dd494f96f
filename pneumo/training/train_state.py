"""What training carries between epochs, and the identity that decides whether it may resume.

:class:`TrainState` is the loop's state; :meth:`TrainState.to_checkpoint` and
:meth:`TrainState.from_checkpoint` are its only serialisation (tensors and plain values, so the
checkpoint loads with ``torch.load(weights_only=True)``). :func:`fingerprint` names a training:
a checkpoint is resumed only by the training it belongs to.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pneumo.config import Settings

log = logging.getLogger(__name__)

_MIN_DELTA = 1e-4  # smaller changes of the monitored metric do not count as improvement


@dataclass(frozen=True)
class TrainResult:
    model_path: Path
    run_id: str | None
    best_epoch: int
    epochs_run: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class TrainData:
    """The train split as tensors, and the validation split as the arrays inference takes."""

    images: torch.Tensor  # (N, 1, S, S) uint8
    labels: np.ndarray
    targets: torch.Tensor
    weights: torch.Tensor
    val_images: np.ndarray
    val_labels: np.ndarray


@dataclass
class TrainState:
    """Everything the loop carries between epochs; the checkpoint is built from it at save time."""

    fingerprint: str
    epoch: int = 0
    global_step: int = 0
    finished: bool = False
    run_id: str = ""
    bad_epochs: int = 0
    best_epoch: int = 0
    best_score: float = math.nan
    best_weights: dict[str, torch.Tensor] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0

    def to_checkpoint(
        self, model: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer
    ) -> dict[str, Any]:
        """Tensors and plain values only: loadable with ``torch.load(weights_only=True)``."""
        return {
            **asdict(self),
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
        }

    @classmethod
    def from_checkpoint(
        cls,
        path: Path,
        fingerprint: str,
        model: nn.Module,
        ema: nn.Module,
        optimizer: torch.optim.Optimizer,
    ) -> TrainState | None:
        """The state saved at ``path`` (weights restored into the modules), if it is this training's."""
        if not path.is_file():
            return None
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            if payload.get("fingerprint") != fingerprint:
                log.info("checkpoint %s belongs to other params or data; training anew", path)
                return None
            model.load_state_dict(payload.pop("model"))
            ema.load_state_dict(payload.pop("ema"))
            optimizer.load_state_dict(payload.pop("optimizer"))
            return cls(**payload)
        except (
            pickle.UnpicklingError,
            RuntimeError,
            OSError,
            EOFError,
            KeyError,
            TypeError,
        ) as exc:
            log.warning("checkpoint %s is unreadable (%s); training from scratch", path, exc)
            return None

    def record(
        self, row: dict[str, float], score: float, higher_is_better: bool, weights: nn.Module
    ) -> bool:
        """Add an epoch's row; keep the weights when the monitored score improved."""
        best = self.best_score
        improved = math.isnan(best) or (
            score > best + _MIN_DELTA if higher_is_better else score < best - _MIN_DELTA
        )
        if improved:
            self.best_score, self.best_epoch, self.bad_epochs = score, int(row["epoch"]), 0
            self.best_weights = {
                k: v.detach().cpu().clone() for k, v in weights.state_dict().items()
            }
        else:
            self.bad_epochs += 1
        self.history.append(row)
        return improved


def fingerprint(settings: Settings, data_digests: dict[str, str]) -> str:
    """Identity of a training: a checkpoint is resumed only by the training it belongs to."""
    blob = {
        # Only what shapes the weights: inference options would make dvc.yaml's train stage
        # depend on keys that never change the trained model.
        "model": settings.model.model_dump(
            mode="json", include={"arch", "resnet", "paper_cnn", "members"}
        ),
        "train": settings.train.model_dump(mode="json", exclude={"threads", "device"}),
        "image_size": settings.preprocess.image_size,
        "data": data_digests,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]
