"""The acquisition-shift battery: each shift does what it says, by the stated amount, reproducibly."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo.data.preprocess import decode_radiograph
from pneumo.evaluation import shifts, stress

SIDE = 128  # the working copies of a 64 px model


@pytest.fixture(scope="module")
def working(real_root: Path) -> np.ndarray:
    files = [
        str(p)
        for label in ("NORMAL", "PNEUMONIA")
        for p in sorted((real_root / "train" / label).iterdir())[:20]
    ]
    return shifts.working_copies(files, SIDE // 2, workers=1)


def _rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _sharpness(image: np.ndarray) -> float:
    x = image.astype(np.float64)
    return float(np.abs(4 * x[1:-1, 1:-1] - x[:-2, 1:-1] - x[2:, 1:-1] - x[1:-1, :-2]
                        - x[1:-1, 2:]).mean())  # fmt: skip


def test_working_copies_are_twice_the_model_side(working: np.ndarray) -> None:
    assert working.shape == (40, SIDE, SIDE) and working.dtype == np.uint8


def test_exposure_contrast_and_gamma_change_pixels_by_the_stated_amount(
    working: np.ndarray,
) -> None:
    image = working[0].astype(np.float64)
    darker = shifts.darker(working[0], 0.6, _rng()).astype(np.float64)
    unclipped = darker > 0
    assert np.allclose(darker[unclipped], image[unclipped] * 0.6 - 0.4 * 80, atol=0.51)
    assert (darker == 0).mean() > (image == 0).mean()  # shadows sink
    brighter = shifts.brighter(working[0], 0.6, _rng()).astype(np.float64)
    assert np.allclose(brighter, image * 0.6 + 0.4 * 255, atol=0.51)
    flat = shifts.contrast(working[0], 0.5, _rng()).astype(np.float64)
    assert flat.std() == pytest.approx(0.5 * image.std(), rel=0.02)
    assert flat.mean() == pytest.approx(image.mean(), abs=0.6)
    curved = shifts.gamma(working[0], 2.0, _rng()).astype(np.float64)
    assert np.allclose(curved, 255 * (image / 255) ** 2.0, atol=0.51)


def test_compression_resolution_and_blur_remove_detail_more_at_severity_two(
    working: np.ndarray,
) -> None:
    for shift in ("jpeg", "low_resolution", "blur"):
        spec = next(s for s in shifts.SHIFTS if s.name == shift)
        mild, strong = (
            shifts.shifted_images(working[:8], spec, severity, SIDE, seed=0) for severity in (1, 2)
        )
        clean = np.stack([decode_radiograph(Image.fromarray(w), SIDE) for w in working[:8]])
        error_mild = np.abs(mild.astype(float) - clean).mean()
        error_strong = np.abs(strong.astype(float) - clean).mean()
        assert 0 < error_mild < error_strong, shift
    data = shifts.jpeg(working[0], 10, _rng())
    assert Image.open(io.BytesIO(data)).format == "JPEG"


def test_noise_has_the_stated_spread(working: np.ndarray) -> None:
    image = working[0].astype(np.float64)
    noisy = shifts.noise(working[0], 0.06, _rng()).astype(np.float64)
    unclipped = (noisy > 0) & (noisy < 255)
    assert (noisy - image)[unclipped].std() == pytest.approx(0.06 * 255, rel=0.1)


def test_geometry_shifts_move_the_field_of_view(working: np.ndarray) -> None:
    ones = np.full((SIDE, SIDE), 200, dtype=np.uint8)
    out = shifts.zoom_out(ones, 0.8, _rng())
    assert (out == 0).mean() == pytest.approx(1 - 0.8**2, abs=0.02)
    bars = shifts.collimation(ones, 0.1, _rng())
    bar = round(SIDE * 0.1)
    assert (bars[:bar] == 0).all() and (bars[-bar:] == 0).all() and (bars[:, :bar] == 0).all()
    assert (bars[bar:-bar, bar:-bar] == 200).all()
    # zoom_in: the centre keeps its place and grows; aspect: anatomy widens by the level.
    square = np.zeros((SIDE, SIDE), dtype=np.uint8)
    square[48:80, 48:80] = 255
    zoomed = shifts.zoom_in(square, 0.8, _rng()) > 127
    assert zoomed.any(axis=0).sum() == pytest.approx(32 / 0.8, abs=2)
    wide = shifts.aspect(square, 1.3, _rng()) > 127
    assert wide.any(axis=0).sum() / wide.any(axis=1).sum() == pytest.approx(1.3, abs=0.1)


def test_markers_burn_in_white_text_reproducibly(working: np.ndarray) -> None:
    spec = next(s for s in shifts.SHIFTS if s.name == "markers")
    first = shifts.shifted_images(working[:4], spec, 2, SIDE, seed=3)
    again = shifts.shifted_images(working[:4], spec, 2, SIDE, seed=3)
    other = shifts.shifted_images(working[:4], spec, 2, SIDE, seed=4)
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    marked = shifts.markers(np.zeros((SIDE, SIDE), np.uint8), 0.1, _rng())
    assert 0.002 < (marked > 200).mean() < 0.1


def test_every_shift_changes_the_pixels_and_the_battery_is_seeded(working: np.ndarray) -> None:
    clean = np.stack([decode_radiograph(Image.fromarray(w), SIDE // 2) for w in working[:6]])
    for spec in shifts.SHIFTS:
        for severity in shifts.SEVERITIES:
            images = shifts.shifted_images(working[:6], spec, severity, SIDE // 2, seed=0)
            assert images.shape == clean.shape
            assert not np.array_equal(images, clean), f"{spec.name}@{severity} changed nothing"
            again = shifts.shifted_images(working[:6], spec, severity, SIDE // 2, seed=0)
            assert np.array_equal(images, again)


def test_report_scores_every_shift_and_names_the_worst(working: np.ndarray) -> None:
    labels = np.array([0] * 20 + [1] * 20)

    def brightness_model(images: np.ndarray) -> np.ndarray:
        # A shortcut model: brighter images are "pneumonia". Shifts that brighten break it.
        return images.reshape(len(images), -1).mean(axis=1) / 255.0

    report = stress.stress_report(brightness_model, working, labels, 0.5, SIDE // 2, seed=0)
    assert set(report["shifts"]) == {s.name for s in shifts.SHIFTS}
    for values in report["shifts"].values():
        assert {"1", "2"} <= values.keys()
    summary = report["summary"]
    worst = summary["worst_specificity_shift"]
    name, severity = worst.split("@")
    assert summary["worst_specificity"] == report["shifts"][name][severity]["specificity"]
    assert summary["worst_specificity"] <= report["clean"]["specificity"]
    # Brightening pushes every normal over 0.5: specificity collapses there.
    assert report["shifts"]["brighter"]["2"]["specificity"] == 0.0


def test_every_scored_set_is_shown_to_the_observer(working: np.ndarray) -> None:
    """The precision probe sees the very images and probabilities each figure is computed on:
    the clean set, every shift and severity, and the counterfactual swaps."""
    labels = np.array([0] * 20 + [1] * 20)
    seen: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    collected: dict[str, np.ndarray] = {}

    def mean_model(images: np.ndarray) -> np.ndarray:
        return images.reshape(len(images), -1).mean(axis=1) / 255.0

    def observe(name: str, images: np.ndarray, probabilities: np.ndarray) -> None:
        seen[name] = (images, probabilities)

    stress.stress_report(mean_model, working, labels, 0.5, SIDE // 2, 0, collected, observe)
    names = {f"{s.name}@{v}" for s in shifts.SHIFTS for v in shifts.SEVERITIES}
    assert set(seen) == {"clean", *names, "cf_swap@1", "cf_swap@2"} == set(collected)
    for name, (images, probabilities) in seen.items():
        assert images.shape == (len(labels), SIDE // 2, SIDE // 2)
        np.testing.assert_array_equal(probabilities, mean_model(images))
        np.testing.assert_array_equal(probabilities, collected[name])
