"""Cheap statistics of what the model sees: the same numbers for every logged request and for
the validation split's reference, so input drift is measured on like with like.

All come from one 256-bin histogram of the model's uint8 pixels (an (S, S) array, e.g. 128x128),
which costs microseconds: mean, standard deviation, percentiles and the share of saturated
pixels (black 0 or white 255).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pneumo.data.kermany import PNEUMONIA

PERCENTILES: tuple[int, ...] = (1, 5, 25, 50, 75, 95, 99)
STAT_COLUMNS: tuple[str, ...] = (
    "pixel_mean",
    "pixel_std",
    *(f"pixel_p{q:02d}" for q in PERCENTILES),
    "saturated_fraction",
)
_LEVELS = np.arange(256, dtype=np.float64)


def input_statistics(pixels: np.ndarray) -> dict[str, float]:
    """The statistics of one image of the model's uint8 pixels."""
    counts = np.bincount(np.asarray(pixels, dtype=np.uint8).ravel(), minlength=256)
    n = counts.sum()
    mean = float(counts @ _LEVELS / n)
    std = float(np.sqrt(counts @ (_LEVELS - mean) ** 2 / n))
    cumulative = np.cumsum(counts)
    # numpy's "inverted_cdf" percentile: the smallest level whose cumulative share reaches q.
    levels = np.searchsorted(cumulative, np.asarray(PERCENTILES) / 100 * n, side="left")
    stats = {"pixel_mean": mean, "pixel_std": std}
    stats.update({f"pixel_p{q:02d}": float(v) for q, v in zip(PERCENTILES, levels, strict=True)})
    stats["saturated_fraction"] = float((counts[0] + counts[255]) / n)
    return stats


def statistics_table(images: np.ndarray) -> dict[str, np.ndarray]:
    """Column -> values for a stack of images (N, S, S)."""
    rows = [input_statistics(image) for image in images]
    return {column: np.array([row[column] for row in rows]) for column in STAT_COLUMNS}


def log_rates(frame: Any) -> dict[str, float]:
    """The prediction log's three rates over rows of it (a pandas frame): called pneumonia,
    out of distribution, referred to a radiologist. NaN for no rows. The monitor's verdict, its
    reference and the service's live tab all count them here."""
    if not len(frame):
        return dict.fromkeys(("positive_rate", "ood_rate", "referral_rate"), float("nan"))
    return {
        "positive_rate": float((frame["label"] == PNEUMONIA).mean()),
        "ood_rate": float(frame["out_of_distribution"].astype(bool).mean()),
        "referral_rate": float(frame["refer_to_radiologist"].astype(bool).mean()),
    }
