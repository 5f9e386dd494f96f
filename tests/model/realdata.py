"""Small real-data workspaces for the model tests (64 px, CPU).

Images are always decoded from the shared Kermany folder through ``decode_radiograph``, never
taken from this checkout's ``data/arrays``: the same seed gives the same workspace on every
machine, whatever the pipeline has run here (the session fixtures in conftest.py build each
workspace once). Train and val never share a patient. The 48 ``originals`` are kept out of every
training set here, so the known-example tests judge images the model has not seen.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pneumo.config import Settings, load_settings
from pneumo.data.kermany import CLASSES, parse_patient_id, parse_subtype
from pneumo.data.preprocess import decode_many, save_arrays
from pneumo.workspace import Workspace

REPO = Path(__file__).resolve().parents[2]
SIZE = 64


def fast_settings(**overrides: object) -> Settings:
    """The project's params.yaml with a CPU-cheap training (64 px) and the given overrides."""
    base: dict[str, object] = {
        "preprocess.image_size": SIZE,
        "train.epochs": 2,
        "train.batch_size": 32,
        "train.warmup_epochs": 0.0,
        "train.early_stopping_patience": 0,
        "train.threads": 1,  # identical results whatever the machine's core count
    }
    base.update(overrides)
    return load_settings(REPO / "params.yaml", base)


def _excluded_names(originals_root: Path) -> set[str]:
    return {p.name for p in originals_root.rglob("*.jpeg")}


def _from_files(
    real_root: Path, counts: dict[str, int], excluded: set[str], seed: int
) -> dict[str, tuple[np.ndarray, pd.DataFrame]]:
    rows = []
    for label in CLASSES:
        for path in sorted((real_root / "train" / label).iterdir()):
            if path.name not in excluded:
                rows.append(
                    {
                        "path": f"train/{label}/{path.name}",
                        "label": label,
                        "patient_id": parse_patient_id(path.stem)[0],
                        "subtype": parse_subtype(path.stem, label),
                    }
                )
    frame = pd.DataFrame(rows)
    rng = np.random.default_rng(seed)
    patients = frame["patient_id"].unique()
    val_patients = set(rng.choice(patients, size=len(patients) // 4, replace=False))
    parts = {}
    for split, count in counts.items():
        pool = frame[frame["patient_id"].isin(val_patients) == (split == "val")]
        chosen = pd.concat(
            g.sample(n=count // 2, random_state=seed) for _, g in pool.groupby("label")
        )
        chosen = chosen.sort_values("path").reset_index(drop=True)
        files = [str(real_root / p) for p in chosen["path"]]
        parts[split] = (decode_many(files, SIZE, workers=1, desc=f"decode {split}"), chosen)
    return parts


def make_workspace(
    root: Path, real_root: Path, originals_root: Path, counts: dict[str, int], seed: int = 0
) -> Workspace:
    """A workspace holding train/val arrays of real radiographs at 64 px."""
    parts = _from_files(real_root, counts, _excluded_names(originals_root), seed)
    workspace = Workspace(root)
    for split, (images, frame) in parts.items():
        save_arrays(workspace.arrays(split), images, frame)
    train_images = parts["train"][0]
    stats = {"image_size": SIZE, "mean": float(train_images.mean()),
             "std": float(train_images.std()), "n_train": len(train_images)}  # fmt: skip
    workspace.array_stats.write_text(json.dumps(stats))
    return workspace


def copy_workspace(source: Workspace, target: Path) -> Workspace:
    """A fresh workspace sharing ``source``'s arrays (symlinked: they are only read)."""
    (target / "data").mkdir(parents=True)
    (target / "data" / "arrays").symlink_to(source.arrays_dir.resolve(), target_is_directory=True)
    return Workspace(target)
