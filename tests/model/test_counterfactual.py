"""The counterfactual battery on real radiographs, with its two controls: a reader of the
acquisition look must lose specificity and sensitivity when the classes trade looks (positive
control), a reader blind to the look must keep them (negative control)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo.data.preprocess import decode_radiograph
from pneumo.data.shortcut import edge_energy
from pneumo.decision.metrics import binary_metrics
from pneumo.evaluation.stress import (
    COUNTERFACTUALS,
    counterfactual_images,
    counterfactual_report,
    counterfactual_targets,
    working_copies,
)

SIZE = 64


@pytest.fixture(scope="module")
def radiographs(real_root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(working copies at 2x SIZE, model pixels, labels) of 80 real radiographs per class."""
    paths, labels = [], []
    for label, name in enumerate(("NORMAL", "PNEUMONIA")):
        files = sorted((real_root / "train" / name).iterdir())[::7][:80]
        paths += [str(f) for f in files]
        labels += [label] * len(files)
    working = working_copies(paths, SIZE, workers=1)
    clean = np.stack([decode_radiograph(Image.fromarray(i), SIZE) for i in working])
    return working, clean, np.array(labels)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _reader(feature, clean: np.ndarray, labels: np.ndarray):  # noqa: ANN001, ANN202
    """A 'network' that calls pneumonia from one image feature, fitted on the clean images."""
    values = np.array([feature(i) for i in clean])
    low, high = values[labels == 0].mean(), values[labels == 1].mean()
    scale = (high - low) / 4
    return lambda images: _sigmoid((np.array([feature(i) for i in images]) - (low + high) / 2)
                                   / scale)  # fmt: skip


def test_the_swap_moves_each_class_to_the_other_class_look(radiographs) -> None:  # noqa: ANN001
    working, _, labels = radiographs
    before = np.array([edge_energy(i) for i in working])
    swapped = counterfactual_images(working, labels, 1, 2 * SIZE)
    after = np.array([edge_energy(i) for i in swapped])
    # Each class now has (nearly) the other class's median sharpness.
    for label in (0, 1):
        assert np.median(after[labels == label]) == pytest.approx(
            np.median(before[labels != label]), rel=0.1)  # fmt: skip
    once, twice = (counterfactual_targets(before, labels, s) for s in (1, 2))
    assert np.all((once - before) * (twice - before) >= 0)  # the same way, severity 2 further
    assert np.allclose(np.log(twice / before), 2 * np.log(once / before))


def test_positive_control_a_reader_of_the_look_is_caught(radiographs) -> None:  # noqa: ANN001
    working, clean, labels = radiographs
    predict = _reader(lambda i: -edge_energy(i), clean, labels)  # blurrier: "pneumonia"
    clean_metrics = binary_metrics(labels, predict(clean), 0.5)
    report = counterfactual_report(predict, working, clean, labels, 0.5, SIZE)
    assert set(COUNTERFACTUALS) <= set(report)
    summary = report["summary"]
    # A pure reader of sharpness: its calls and its ranking go with the look.
    assert summary["specificity"] < clean_metrics["specificity"] - 0.1
    assert summary["sensitivity"] < clean_metrics["sensitivity"] - 0.1
    assert summary["roc_auc"] < clean_metrics["roc_auc"] - 0.2  # the ranking goes with the look
    assert summary["cue_effect"] > 1.0
    # Severity 2 hurts more than severity 1.
    assert (report["normal_as_pneumonia"]["2"]["specificity"]
            <= report["normal_as_pneumonia"]["1"]["specificity"])  # fmt: skip


def test_negative_control_a_reader_blind_to_the_look_keeps_its_calls(radiographs) -> None:  # noqa: ANN001
    working, clean, labels = radiographs
    # Mean brightness of the central field: blur and unsharp masking keep it.
    predict = _reader(lambda i: i[16:48, 16:48].mean(), clean, labels)
    clean_metrics = binary_metrics(labels, predict(clean), 0.5)
    summary = counterfactual_report(predict, working, clean, labels, 0.5, SIZE)["summary"]
    assert summary["specificity"] == pytest.approx(clean_metrics["specificity"], abs=0.05)
    assert summary["sensitivity"] == pytest.approx(clean_metrics["sensitivity"], abs=0.05)
    assert abs(summary["cue_effect"]) < 0.1
