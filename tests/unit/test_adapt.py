"""Label-free prevalence estimation and the rule for moving the operating point, on simulated
sites with a known prevalence."""

from __future__ import annotations

import numpy as np
import pytest

from pneumo.decision import Decision
from pneumo.decision.prevalence import (
    Calibration,
    bbse_prevalence,
    em_prevalence,
    em_prevalences,
    estimate_prevalence,
    fit_calibration,
    judge_move,
    moved_decision,
)


def _scores(labels: np.ndarray, seed: int) -> np.ndarray:
    """A network's probabilities: logits N(+2, 1.2) for pneumonia, N(-2, 1.2) for normal, with a
    miscalibration (x 2.5) that Platt scaling on validation must undo."""
    rng = np.random.default_rng(seed)
    logits = np.where(labels == 1, 2.0, -2.0) + rng.normal(0, 1.2, len(labels))
    return 1 / (1 + np.exp(-2.5 * logits))


@pytest.fixture(scope="module")
def validation() -> tuple[np.ndarray, np.ndarray]:
    labels = (np.arange(800) % 4 != 0).astype(int)  # prevalence 0.75, like Kermany's
    return labels, _scores(labels, 0)


@pytest.mark.parametrize("prevalence", [0.3, 0.55, 0.85])
def test_the_estimate_covers_the_simulated_site_prevalence(validation, prevalence) -> None:  # noqa: ANN001
    val_labels, val_p = validation
    calibration = fit_calibration(val_labels, val_p)
    site_labels = (np.random.default_rng(1).random(400) < prevalence).astype(int)
    truth = site_labels.mean()
    estimate = estimate_prevalence(_scores(site_labels, 2), calibration, val_labels, val_p, 0.5)
    low, high = estimate.em_interval
    assert low <= truth <= high and abs(estimate.em - truth) < 0.05
    assert abs(estimate.bbse - truth) < 0.07  # the cross-check agrees
    assert estimate.width < 0.15


def test_em_without_calibration_is_off_which_is_why_it_is_calibrated(validation) -> None:  # noqa: ANN001
    val_labels, val_p = validation
    site_labels = (np.arange(400) % 10 < 3).astype(int)  # 0.3
    raw = em_prevalence(_scores(site_labels, 3), val_labels.mean())
    calibrated = em_prevalence(fit_calibration(val_labels, val_p)(_scores(site_labels, 3)),
                               val_labels.mean())  # fmt: skip
    assert abs(calibrated - 0.3) < abs(raw - 0.3) + 1e-9 and abs(calibrated - 0.3) < 0.05


def _em_one_row(p: np.ndarray, source: float) -> float:
    """Saerens et al.'s EM on one site, written out as the paper gives it."""
    prior = source
    for _ in range(500):
        positive = prior / source * p
        updated = float(np.mean(positive / (positive + (1 - prior) / (1 - source) * (1 - p))))
        if abs(updated - prior) < 1e-7:
            return updated
        prior = updated
    return prior


def test_em_on_many_draws_at_once_equals_em_on_each(validation) -> None:  # noqa: ANN001
    """The bootstrap runs EM on every draw together; each draw stops at its own convergence."""
    val_labels, val_p = validation
    calibration = fit_calibration(val_labels, val_p)
    rng = np.random.default_rng(4)
    site = calibration(_scores((rng.random(300) < 0.4).astype(int), 5))
    # clipped as EM clips them (1e-6), so the written-out reference sees the same numbers
    draws = np.clip(site[rng.integers(0, len(site), (40, len(site)))], 1e-6, 1 - 1e-6)
    draws[0] = 0.5  # converges at once: the other rows must go on without it
    together = em_prevalences(draws, calibration.source_prior)
    alone = [_em_one_row(row, calibration.source_prior) for row in draws]
    assert together == pytest.approx(alone, abs=1e-12)
    assert em_prevalence(draws[1], calibration.source_prior) == pytest.approx(alone[1], abs=1e-12)
    assert len(set(np.round(together, 6))) > 10  # the draws differ: not one value broadcast


def test_bbse_is_undefined_for_a_useless_classifier() -> None:
    assert np.isnan(bbse_prevalence(0.5, 0.5, 0.5))
    assert bbse_prevalence(0.55, 0.9, 0.1) == pytest.approx(0.5625)


def test_the_move_is_a_prior_shift_with_the_threshold_kept() -> None:
    base = Decision(0.4, "youden")
    calibration = Calibration(slope=2.0, intercept=0.0, source_prior=0.75)
    moved = moved_decision(base, calibration, 0.3)
    assert moved.threshold == base.threshold and moved.rule == "youden+adapt"
    expected = (np.log(0.3 / 0.7) - np.log(0.75 / 0.25)) / 2.0
    assert moved.prior_log_odds == pytest.approx(expected)
    # Fewer pneumonias expected: the same probability is read lower.
    assert moved.adjust(np.array([0.5]))[0] < 0.5


def test_no_move_at_the_reference_prevalence_and_a_move_far_from_it(validation) -> None:  # noqa: ANN001
    val_labels, val_p = validation
    calibration = fit_calibration(val_labels, val_p)
    base = Decision(0.5, "youden")
    for prevalence, expected in ((0.75, False), (0.2, True)):
        site = (np.random.default_rng(5).random(600) < prevalence).astype(int)
        estimate = estimate_prevalence(_scores(site, 6), calibration, val_labels, val_p, 0.5)
        moved = moved_decision(base, calibration, estimate.em)
        move, reasons, simulated = judge_move(estimate, base, moved, val_labels, val_p, 0.7,
                                              calibration.source_prior)  # fmt: skip
        assert move is expected, reasons
        if move:
            assert simulated["adapted"]["accuracy"] >= simulated["validation"]["accuracy"]
    # A sensitivity floor the move cannot keep forbids it, with the reason.
    site = (np.random.default_rng(7).random(600) < 0.2).astype(int)
    estimate = estimate_prevalence(_scores(site, 8), calibration, val_labels, val_p, 0.5)
    moved = moved_decision(base, calibration, estimate.em)
    move, reasons, _ = judge_move(estimate, base, moved, val_labels, val_p, 0.999,
                                  calibration.source_prior)  # fmt: skip
    assert not move and any("sensitivity" in r for r in reasons)
