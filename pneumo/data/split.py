"""Patient-disjoint, label-stratified, seeded split into train / val / test.

The dataset's own test/ folder stays whole as the frozen test split; without one, a test split is
carved from the pool. Validation is always carved from the training pool (the tiny official val/
folder joins the pool). Images of one patient never land in two splits.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pneumo.data.kermany import NORMAL, PNEUMONIA
from pneumo.errors import PipelineOrderError, SplitError
from pneumo.workspace import Workspace, atomic_path

log = logging.getLogger(__name__)

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")


def carve_patients(pool: pd.DataFrame, fraction: float, seed: int) -> pd.Index:
    """Pick whole patients, per label, until each label holds ``fraction`` of its images.

    Patients are visited in a seeded random order and taken while that brings the label's image
    count closer to its target, so the carved share tracks ``fraction`` within one patient's images.
    """
    rng = np.random.default_rng(seed)
    chosen: list[str] = []
    per_patient = pool.groupby("patient_id").agg(label=("label", "first"), n=("path", "size"))
    for label in sorted(per_patient["label"].unique()):
        patients = per_patient[per_patient["label"] == label].sort_index()
        target = fraction * patients["n"].sum()
        taken = 0
        for patient in rng.permutation(patients.index.to_numpy()):
            n = int(patients.at[patient, "n"])
            if abs(taken + n - target) < abs(taken - target):
                chosen.append(patient)
                taken += n
    return pool.index[pool["patient_id"].isin(chosen)]


def make_split(
    manifest: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int
) -> tuple[pd.DataFrame, dict[str, object]]:
    """Return the manifest with a ``split`` column, plus facts worth recording."""
    frame = manifest.copy()
    mixed = frame.groupby("patient_id")["label"].nunique()
    if (mixed > 1).any():
        raise SplitError(
            f"patients with both labels: {', '.join(mixed[mixed > 1].index[:5])}; "
            "fix the file names or class folders so each patient has one label"
        )
    frame["split"] = ""
    official_test = frame["source_split"] == "test"
    facts: dict[str, object] = {}
    if official_test.any():
        frame.loc[official_test, "split"] = "test"
        test_patients = set(frame.loc[official_test, "patient_id"])
        overlap = (~official_test) & frame["patient_id"].isin(test_patients)
        # The frozen test split wins: training images of its patients are excluded, not moved.
        frame.loc[overlap, "split"] = "excluded"
        facts["test_source"] = "dataset test/ folder (frozen)"
        facts["excluded_for_test_patients"] = int(overlap.sum())
    else:
        pool = frame[frame["split"] == ""]
        frame.loc[carve_patients(pool, test_fraction, seed), "split"] = "test"
        facts["test_source"] = "carved (patient-disjoint)"
        facts["excluded_for_test_patients"] = 0
    pool = frame[frame["split"] == ""]
    # A different stream than the test carve, so changing test_fraction does not reshuffle val.
    frame.loc[carve_patients(pool, val_fraction, seed + 1), "split"] = "val"
    frame.loc[frame["split"] == "", "split"] = "train"
    frame = frame[frame["split"] != "excluded"].reset_index(drop=True)
    check_patient_disjoint(frame)
    return frame, facts


def check_patient_disjoint(frame: pd.DataFrame) -> None:
    """Raise if any patient appears in more than one split."""
    splits_per_patient = frame.groupby("patient_id")["split"].nunique()
    leaked = splits_per_patient[splits_per_patient > 1]
    if not leaked.empty:
        raise SplitError(f"{len(leaked)} patients appear in two splits, e.g. {leaked.index[0]}")


def check_stratification(frame: pd.DataFrame, carved: list[str], tolerance: float) -> None:
    """Raise if a carved split's pneumonia share drifts from its pool's by more than ``tolerance``."""
    pool = frame[frame["split"].isin(["train", *carved])]
    share = (pool["label"] == PNEUMONIA).mean()
    for name in carved:
        part = pool[pool["split"] == name]
        drift = abs((part["label"] == PNEUMONIA).mean() - share) if len(part) else 1.0
        if drift > tolerance:
            raise SplitError(
                f"{name} split pneumonia share is off by {drift:.3f} (> split.stratify_tolerance="
                f"{tolerance}): too few patients for this fraction; raise split.{name}_fraction"
            )


def split_metrics(frame: pd.DataFrame, facts: dict[str, object]) -> dict[str, object]:
    """Counts per split and label, patients per split, and the leak check, in metrics/split.json."""
    metrics: dict[str, object] = {}
    for name in SPLIT_NAMES:
        part = frame[frame["split"] == name]
        metrics[name] = {
            "images": len(part),
            NORMAL: int((part["label"] == NORMAL).sum()),
            PNEUMONIA: int((part["label"] == PNEUMONIA).sum()),
            "patients": int(part["patient_id"].nunique()),
            "pneumonia_share": round(float((part["label"] == PNEUMONIA).mean()), 4)
            if len(part)
            else 0.0,
        }
    per_patient = frame.groupby("patient_id")["split"].nunique()
    metrics["patients_in_two_splits"] = int((per_patient > 1).sum())
    metrics.update(facts)
    return metrics


def split(
    manifest_path: Path,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    stratify_tolerance: float,
    workspace: Workspace = Workspace(),
) -> dict[str, object]:
    """Split the validated manifest and write the split table and its metrics."""
    if not Path(manifest_path).is_file():
        raise PipelineOrderError(f"{manifest_path} not found: run `pneumo ingest` first")
    manifest = pd.read_parquet(manifest_path)
    frame, facts = make_split(manifest, val_fraction, test_fraction, seed)
    metrics = split_metrics(frame, facts)
    carved = ["val"] + (["test"] if str(facts["test_source"]).startswith("carved") else [])
    check_stratification(frame, carved, stratify_tolerance)
    with atomic_path(workspace.split) as tmp:
        frame.to_parquet(tmp, index=False)
    with atomic_path(workspace.split_metrics) as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("split: %s", {n: metrics[n]["images"] for n in SPLIT_NAMES})  # type: ignore[index]
    return metrics
