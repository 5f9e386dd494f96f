"""The `reference` stage: what the monitor compares the live traffic with.

The validation split, run through the served model exactly as a request would be: the input
statistics of its pixels (:mod:`pneumo.monitor.stats`), the probability, the call at the
threshold, the referral and the guard's flag, plus the true label. One row per image in
``models/reference.parquet``, beside the model it describes (its sha256 in the file's metadata).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pneumo.data.kermany import CLASSES
from pneumo.errors import PipelineOrderError
from pneumo.monitor.stats import log_rates, statistics_table
from pneumo.stored_model import model_digest
from pneumo.workspace import Workspace, atomic_path

log = logging.getLogger(__name__)

METADATA_KEY = b"pneumo"


def reference_frame(
    predictor: Any, images: np.ndarray, labels: np.ndarray, batch: int
) -> pd.DataFrame:
    """One row per image: statistics, probability, call, referral, OOD flag, true label."""
    assessed = predictor.assess(images, batch_size=batch)
    decision = predictor.decision
    flagged = assessed.out_of_distribution
    frame = pd.DataFrame(statistics_table(images))
    frame["probability"] = assessed.probabilities
    frame["label"] = decision.labels(assessed.probabilities)
    frame["refer_to_radiologist"] = [
        decision.refer(float(p), bool(o))
        for p, o in zip(assessed.probabilities, flagged, strict=True)
    ]
    frame["out_of_distribution"] = flagged
    frame["ood_score"] = assessed.ood_scores
    frame["true_label"] = np.asarray(CLASSES)[np.asarray(labels, dtype=int)]
    return frame


def reference_stage(settings: Any, workspace: Workspace) -> dict[str, Any]:
    """Write models/reference.parquet for this workspace's evaluated model."""
    from pneumo.accel import configure_threads
    from pneumo.data.preprocess import load_arrays
    from pneumo.inference.predictor import Predictor

    configure_threads(settings.model.threads)
    predictor = Predictor.from_workspace(
        workspace, settings.model.accelerator(), settings.model.runtime
    )
    val = load_arrays(workspace.arrays("val"))
    frame = reference_frame(predictor, val["images"], val["labels"], settings.model.batch_size)
    about = {
        "model_sha256": model_digest(workspace.model, workspace.decision, workspace.guard),
        "threshold": predictor.threshold,
        "split": "val",
        "n": len(frame),
        **log_rates(frame),
    }
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata(
        {**table.schema.metadata, METADATA_KEY: json.dumps(about)}
    )
    with atomic_path(workspace.monitor_reference) as tmp:
        pq.write_table(table, tmp)
    log.info(
        "reference: %d validation images, positive rate %.3f, OOD %.3f, referred %.3f",
        about["n"],
        about["positive_rate"],
        about["ood_rate"],
        about["referral_rate"],
    )
    return about


def load_reference(workspace: Workspace) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The reference rows and what they describe (model sha256, threshold, rates)."""
    path = workspace.monitor_reference
    if not path.is_file():
        raise PipelineOrderError(
            f"{path} not found: run `pneumo reference` (or `dvc repro`) after `pneumo evaluate`"
        )
    table = pq.read_table(path)
    about = json.loads((table.schema.metadata or {}).get(METADATA_KEY, b"{}"))
    return table.to_pandas(), about
