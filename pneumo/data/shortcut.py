"""The shortcut meter: how well the acquisition alone, without any anatomy, tells the classes apart.

A network learns whatever separates its training classes. When the files of one class are
sharper, larger or differently compressed than the other's (in Kermany's release normal
radiographs are sharper: file size alone separates the classes with ROC-AUC ~0.9), the network can
read the scanner instead of the lungs, and a new site's normal radiographs with the other look
are called pneumonia. This meter measures that risk before training: a handful of acquisition
cues per image, and the patient-grouped cross-validated ROC-AUC of a logistic regression on them.
It warns (validate, Data Docs, MLflow); it does not fail the data, since the cure is in training
(augmentations that remove the cue) and is measured by the counterfactual stress battery.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

log = logging.getLogger(__name__)

# Per image; none of them looks at anatomy beyond what the acquisition does to every pixel.
CUES: dict[str, str] = {
    "bytes_per_pixel": "file size per pixel: compression and detail",
    "jpeg_quantisation": "mean of the luminance quantisation table (0 when not a JPEG)",
    "edge_energy": "mean absolute Laplacian per unit of contrast: sharpness",
    "noise": "mean absolute difference from a 3x3 median filter: noise and grain",
    "native_pixels": "width x height as stored (log10)",
    "aspect": "width / height as stored",
}
# The side at which sharpness and noise are measured (the stress battery's working copies).
WORKING_SIDE = 256


def edge_energy(image: np.ndarray) -> float:
    """Mean absolute Laplacian per unit of contrast: how sharp the acquisition is."""
    a = np.asarray(image, dtype=np.float32)
    laplacian = 4 * a[1:-1, 1:-1] - a[:-2, 1:-1] - a[2:, 1:-1] - a[1:-1, :-2] - a[1:-1, 2:]
    return float(np.abs(laplacian).mean() / (a.std() + 1e-6))


def noise_level(image: np.ndarray) -> float:
    """Mean absolute difference between the image and its 3x3 median: grain more than structure."""
    median = np.asarray(Image.fromarray(image).filter(ImageFilter.MedianFilter(3)), np.float32)
    return float(np.mean(np.abs(image.astype(np.float32) - median)))


def jpeg_quantisation(path: Path) -> float:
    """The mean luminance quantisation step a JPEG was written with (header only; 0 otherwise)."""
    try:
        with Image.open(path) as img:
            tables = getattr(img, "quantization", None) or {}
            return float(np.mean(tables[0])) if 0 in tables else 0.0
    except OSError:
        return math.nan


def acquisition_cues(
    manifest: pd.DataFrame, data_root: Path, per_class: int, seed: int = 0, workers: int = 0
) -> pd.DataFrame:
    """:data:`CUES` for a seeded sample of at most ``per_class`` images of each label."""
    from pneumo.data.preprocess import decode_files

    picked = [rows.sample(min(len(rows), per_class), random_state=seed)
              for _, rows in manifest.groupby("label")]  # fmt: skip
    sample = pd.concat(picked).reset_index(drop=True)
    paths = [str(Path(data_root) / p) for p in sample["path"]]
    pixels, errors = decode_files(paths, WORKING_SIDE, workers, "shortcut meter")
    width, height = sample["width"].astype(float), sample["height"].astype(float)
    cues = pd.DataFrame(
        {
            "bytes_per_pixel": sample["bytes"].astype(float) / (width * height),
            "jpeg_quantisation": [jpeg_quantisation(Path(p)) for p in paths],
            "edge_energy": [edge_energy(p) for p in pixels],
            "noise": [noise_level(p) for p in pixels],
            "native_pixels": np.log10(width * height),
            "aspect": width / height,
        }
    )
    cues["label"], cues["patient_id"] = sample["label"].to_numpy(), sample["patient_id"].to_numpy()
    return cues[[e is None for e in errors]].dropna().reset_index(drop=True)


def shortcut_meter(cues: pd.DataFrame, warn_auc: float, folds: int = 5) -> dict[str, Any]:
    """Patient-grouped cross-validated ROC-AUC of the cues together, and of each alone.

    A single cue's AUC is folded to >= 0.5 (a cue that is lower for pneumonia separates as well).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = (cues["label"] == "PNEUMONIA").astype(int).to_numpy()
    if len(np.unique(y)) < 2 or min(np.bincount(y)) < folds:
        return {"roc_auc": math.nan, "per_cue": {}, "n": len(y), "warn_auc": warn_auc,
                "warning": False, "note": "too few images of each class to measure"}  # fmt: skip
    x = cues[list(CUES)].to_numpy(dtype=float)
    per_cue = {}
    for index, name in enumerate(CUES):
        auc = roc_auc_score(y, x[:, index]) if np.ptp(x[:, index]) > 0 else 0.5
        per_cue[name] = round(float(max(auc, 1 - auc)), 4)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=0)
    scores = cross_val_predict(model, x, y, groups=cues["patient_id"], cv=splitter,
                               method="predict_proba")[:, 1]  # fmt: skip
    combined = round(float(roc_auc_score(y, scores)), 4)
    strongest = max(per_cue, key=per_cue.get)
    return {
        "roc_auc": combined,
        "per_cue": per_cue,
        "strongest_cue": strongest,
        "n": len(y),
        "warn_auc": warn_auc,
        "warning": combined >= warn_auc,
        "method": f"logistic regression on {len(CUES)} acquisition cues, {folds}-fold "
        "patient-grouped cross-validation",
    }


def measure(
    manifest: pd.DataFrame, data_root: Path, warn_auc: float, per_class: int, workers: int = 0
) -> dict[str, Any]:
    """The meter on a manifest's images; logs a warning above ``warn_auc``."""
    result = shortcut_meter(acquisition_cues(manifest, data_root, per_class, 0, workers), warn_auc)
    if result["warning"]:
        log.warning(
            "acquisition cues alone separate the classes: ROC-AUC %.3f (strongest: %s %.3f; warn "
            "at %.2f). A network may learn the scanner instead of the lungs; the counterfactual "
            "stress battery (pneumo stress) measures whether it did",
            result["roc_auc"], result["strongest_cue"],
            result["per_cue"][result["strongest_cue"]], warn_auc,
        )  # fmt: skip
    return result
