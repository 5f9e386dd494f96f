"""The champion measured again, on this workspace's test split, the way evaluation measures.

The gate compares like with like: the challenger's test metrics (from ``pneumo evaluate``) and the
champion's own weights and ``decision.json`` run through the same :func:`pneumo.inference.predict_proba`
and :func:`pneumo.evaluation.evaluate.score_split` on the same test images.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from pneumo.config import Settings
from pneumo.decision.metrics import point_metrics
from pneumo.registry.client import RegistryClient
from pneumo.registry.gate import REPORTED_METRICS
from pneumo.workspace import Workspace

log = logging.getLogger(__name__)


def rescore(
    registry: RegistryClient,
    version: int,
    test: dict[str, np.ndarray],
    settings: Settings,
    workspace: Workspace,
) -> dict[str, float]:
    """A version's gate metrics on ``test`` (the workspace's test arrays) at its own threshold."""
    from pneumo.accel import configure_threads
    from pneumo.evaluation.evaluate import score_split
    from pneumo.inference.predictor import Predictor

    accel = settings.model.accelerator()
    with tempfile.TemporaryDirectory(prefix="pneumo-rescore-") as tmp:
        files = registry.version_files(version, Path(tmp))
        predictor = Predictor.from_files(files["model"], files["decision"], accel,
                                         settings.model.runtime)  # fmt: skip
    images = test["images"]
    if images.shape[-1] != predictor.image_size:
        images = _decode_test_split(test["paths"], predictor.image_size, settings, workspace)
    configure_threads(settings.model.threads)
    # The version's own decision: its threshold, and its prior shift when it is a site version.
    probabilities = predictor.probabilities(images, settings.model.batch_size)
    decision = predictor.decision
    # Point estimates only: the gate compares them, so the bootstrap would be wasted work.
    point_only = settings.evaluate.model_copy(update={"bootstrap_samples": 0})
    report = score_split(test["labels"], probabilities, test["patient_ids"], decision, point_only)
    return point_metrics(report["test"], REPORTED_METRICS)


def _decode_test_split(
    paths: np.ndarray, size: int, settings: Settings, workspace: Workspace
) -> np.ndarray:
    """The test images at another model's input size, decoded by the one preprocessing function."""
    from pneumo.data.preprocess import decode_many

    root = workspace.resolve(settings.data.root)
    log.info("champion expects %d px: decoding the test split again from %s", size, root)
    return decode_many([str(root / p) for p in paths], size, settings.preprocess.workers, "rescore")
