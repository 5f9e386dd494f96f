"""Small real-data workspaces for the model tests (64 px, CPU).

Images come from the preprocessed arrays when the pipeline has run (``data/arrays``), else they
are decoded from the shared Kermany folder; either way through ``decode_radiograph``, and train
and val never share a patient. The 48 ``originals`` are kept out of every training set here, so
the known-example tests judge images the model has not seen.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pneumo.config import Settings, load_settings
from pneumo.data.kermany import CLASSES, parse_patient_id, parse_subtype
from pneumo.data.preprocess import decode_many, decode_radiograph, load_arrays, save_arrays
from pneumo.workspace import Workspace

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
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


def _from_arrays(
    split: str, count: int, excluded: set[str], seed: int
) -> tuple[np.ndarray, pd.DataFrame]:
    arrays = load_arrays(REPO / "data" / "arrays" / f"{split}.npz")
    keep = np.array([Path(p).name not in excluded for p in arrays["paths"]])
    rng = np.random.default_rng(seed)
    picked = []
    for label in (0, 1):  # class-balanced so that small sets still hold both classes
        candidates = np.flatnonzero(keep & (arrays["labels"] == label))
        picked.append(rng.choice(candidates, size=min(count // 2, len(candidates)), replace=False))
    index = np.sort(np.concatenate(picked))
    images = np.stack(
        [decode_radiograph(Image.fromarray(arrays["images"][i]), SIZE) for i in index]
    )
    frame = pd.DataFrame(
        {
            "path": arrays["paths"][index],
            "label": [CLASSES[i] for i in arrays["labels"][index]],
            "patient_id": arrays["patient_ids"][index],
            "subtype": arrays["subtypes"][index],
        }
    )
    return images, frame


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
    excluded = _excluded_names(originals_root)
    if all((REPO / "data" / "arrays" / f"{s}.npz").is_file() for s in counts):
        parts = {s: _from_arrays(s, n, excluded, seed) for s, n in counts.items()}
    else:
        parts = _from_files(real_root, counts, excluded, seed)
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
