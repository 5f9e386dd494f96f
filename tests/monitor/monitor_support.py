"""A monitoring lab on real radiographs: a small model, a validation split of real images with
its reference, and windows of the prediction log made from real (or shifted) images.

The "validation split" is a seeded, class-balanced sample of the shared train folder; replays
are other images of the same folder (the same distribution, not the same files), and shifted
replays are those images darkened and re-compressed (pneumo/evaluation/stress.py), as a new site might
send them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from pneumo.config import Settings, load_settings
from pneumo.config.params_file import set_param
from pneumo.data.kermany import CLASSES
from pneumo.data.preprocess import decode_many, decode_radiograph, save_arrays
from pneumo.evaluation.shifts import darker, jpeg
from pneumo.monitor.reference import reference_stage
from pneumo.workspace import Workspace
from tests.serving.serving_support import IMAGE_SIZE, REPO, make_workspace

REFERENCE_PER_CLASS = 120
REPLAY_PER_CLASS = 60
MIN_PREDICTIONS = 60
MIN_FEEDBACK = 20


def sample_paths(real_root: Path, per_class: int, skip: int, seed: int = 0) -> list[Path]:
    """``per_class`` images of each class of the shared train folder, after ``skip`` of them
    (so two calls with different ``skip`` give disjoint sets)."""
    rng = np.random.default_rng(seed)
    chosen: list[Path] = []
    for label in CLASSES:
        paths = sorted((real_root / "train" / label).glob("*.jpeg"))
        order = rng.permutation(len(paths))
        chosen += [paths[i] for i in order[skip : skip + per_class]]
    return chosen


def label_of(path: Path) -> str:
    return path.parent.name


def shifted_bytes(path: Path) -> bytes:
    """The radiograph under-exposed (range x0.6, shadows sunk) and stored as a quality-10 JPEG."""
    working = decode_radiograph(path, 2 * IMAGE_SIZE)
    return jpeg(darker(working, 0.6, np.random.default_rng(0)), 10, np.random.default_rng(0))


def write_params(root: Path, **monitor: object) -> Path:
    params = root / "params.yaml"
    shutil.copyfile(REPO / "params.yaml", params)
    values = {"min_predictions": MIN_PREDICTIONS, "min_feedback": MIN_FEEDBACK, **monitor}
    for key, value in values.items():
        set_param(
            params, f"monitor.{key}", str(value).lower() if isinstance(value, bool) else str(value)
        )
    set_param(params, "evaluate.bootstrap_samples", "200")
    return params


def make_lab(root: Path, real_root: Path, **monitor: object) -> tuple[Settings, Workspace]:
    """A workspace with a small model, real validation arrays and their reference."""
    root.mkdir(parents=True, exist_ok=True)
    params = write_params(root, **monitor)
    workspace = make_workspace(root)
    paths = sample_paths(real_root, REFERENCE_PER_CLASS, skip=0)
    images = decode_many([str(p) for p in paths], IMAGE_SIZE, workers=2)
    frame = pd.DataFrame(
        {
            "label": [label_of(p) for p in paths],
            "path": [str(p) for p in paths],
            "patient_id": [p.stem for p in paths],
            "subtype": "unknown",
        }
    )
    save_arrays(workspace.arrays("val"), images, frame)
    settings = load_settings(params)
    reference_stage(settings, workspace)
    return settings, workspace


def log_images(settings: Settings, root: Path, images: list[bytes], model_info: dict) -> list[str]:
    """Answer each image as /predict does (the service's decoding, model and decision) and log
    it through the service's own Monitoring; returns the request ids."""
    import time
    from types import SimpleNamespace

    from pneumo.inference.predictor import Predictor
    from serving.api import _prediction
    from serving.inputs import read_radiograph
    from serving.monitoring import Monitoring

    workspace = Workspace(root)
    predictor = Predictor.from_workspace(workspace)
    backend = SimpleNamespace(decision=predictor.decision)
    monitoring = Monitoring(settings.monitor, root, model_info)
    serve = settings.serve
    ids = []
    try:
        for data in images:
            started = time.perf_counter()
            radiograph = read_radiograph(data, None, IMAGE_SIZE, serve.max_pixels, serve.min_side)
            assessed = predictor.assess(radiograph.pixels[None], [radiograph.screen_reason])
            result = {
                "probability": float(assessed.probabilities[0]),
                "ood_score": None,
                "ood_reason": assessed.ood_reasons[0],
            }
            prediction = _prediction(backend, result, radiograph)
            ids.append(monitoring.new_id())
            monitoring.record("predict", ids[-1], prediction, radiograph, data, started)
    finally:
        monitoring.close()
    return ids


def model_info(workspace: Workspace) -> dict:
    from pneumo.stored_model import model_digest

    digest = model_digest(workspace.model, workspace.decision, workspace.guard)
    return {"name": "pneumo-cnn", "version": "test", "sha256": digest}
