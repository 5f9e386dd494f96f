"""The decision: one rule for labels and referrals, chosen on validation by a documented rule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pneumo.config import EvaluateSettings
from pneumo.decision import Decision, choose_threshold
from pneumo.errors import PipelineOrderError


def test_label_refer_and_band_follow_the_threshold_and_margin() -> None:
    decision = Decision(threshold=0.6, rule="fixed", referral_margin=0.1)
    assert decision.label(0.6) == "PNEUMONIA" and decision.label(0.5999) == "NORMAL"
    assert list(decision.labels(np.array([0.1, 0.6, 0.9]))) == ["NORMAL", "PNEUMONIA", "PNEUMONIA"]
    assert decision.refer(0.55) and decision.refer(0.69) and not decision.refer(0.71)
    assert not decision.refer(0.2) and decision.refer(0.2, out_of_distribution=True)
    assert decision.referral_band == pytest.approx((0.5, 0.7))
    assert Decision(0.05, "fixed", referral_margin=0.1).referral_band == pytest.approx((0.0, 0.15))


def test_decision_file_round_trip_and_clear_errors(tmp_path: Path) -> None:
    decision = Decision(0.42, "youden", 0.95, 0.9, referral_margin=0.05, tta=True)
    decision.save(tmp_path / "decision.json")
    assert Decision.load(tmp_path / "decision.json") == decision
    with pytest.raises(PipelineOrderError, match="pneumo evaluate"):
        Decision.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PipelineOrderError, match="not a decision file"):
        Decision.load(tmp_path / "bad.json")
    # Files of older versions lack newer fields: they get the defaults.
    (tmp_path / "old.json").write_text(json.dumps({"threshold": 0.5, "rule": "fixed"}))
    assert Decision.load(tmp_path / "old.json").referral_margin == 0.0


def test_youden_tiebreak_takes_the_most_specific_of_the_near_best_thresholds() -> None:
    # Perfectly separable: every threshold in (0.3, 0.7] gives J = 1.
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    specific = choose_threshold(y, p, EvaluateSettings(youden_tiebreak="most_specific"))
    centre = choose_threshold(y, p, EvaluateSettings(youden_tiebreak="centre"))
    assert specific.threshold == pytest.approx(0.7)
    # centre: the middle of the tied plateau [0.7, 0.7] among the ROC's thresholds, in logit space
    assert centre.threshold <= specific.threshold
    assert specific.val_sensitivity == specific.val_specificity == 1.0


def test_youden_tolerance_widens_the_plateau_towards_specificity() -> None:
    rng = np.random.default_rng(0)
    y = (rng.uniform(size=4000) < 0.7).astype(int)
    p = 1 / (1 + np.exp(-(2.0 * (2 * y - 1) + rng.normal(0, 1.5, y.size))))
    strict = choose_threshold(y, p, EvaluateSettings(youden_tolerance=0.0))
    tolerant = choose_threshold(y, p, EvaluateSettings(youden_tolerance=0.05))
    assert tolerant.threshold > strict.threshold
    assert tolerant.val_specificity > strict.val_specificity


def test_target_sensitivity_keeps_the_target_with_the_highest_threshold() -> None:
    rng = np.random.default_rng(1)
    y = (rng.uniform(size=3000) < 0.6).astype(int)
    p = 1 / (1 + np.exp(-(2.0 * (2 * y - 1) + rng.normal(0, 1.5, y.size))))
    decision = choose_threshold(y, p, EvaluateSettings(threshold_rule="target_sensitivity",
                                                       target_sensitivity=0.97))  # fmt: skip
    assert decision.val_sensitivity >= 0.97
    # One step higher would drop below the target.
    higher = np.sort(np.unique(p[p > decision.threshold]))[0]
    assert (p[y == 1] >= higher).mean() < 0.97


def test_margin_and_tta_travel_with_the_decision() -> None:
    y, p = np.array([0, 1, 0, 1]), np.array([0.2, 0.8, 0.3, 0.9])
    decision = choose_threshold(y, p, EvaluateSettings(referral_margin=0.07), tta=True)
    assert decision.referral_margin == 0.07 and decision.tta


def test_the_conformal_band_covers_each_class_and_agrees_with_the_calls() -> None:
    from pneumo.decision import conformal_band
    from pneumo.decision.operating_point import referral_table

    rng = np.random.default_rng(0)
    y = (np.arange(2000) % 3 != 0).astype(int)
    p = 1 / (1 + np.exp(-(np.where(y == 1, 1.5, -1.5) + rng.normal(0, 1.2, len(y)))))
    calibration, check = slice(0, 1000), slice(1000, 2000)
    low, high = conformal_band(y[calibration], p[calibration], 0.5, alpha=0.1)
    assert low <= 0.5 <= high
    decision = Decision(0.5, "fixed", referral_low=low, referral_high=high)
    referred = decision.refers(p[check])
    calls = decision.positive(p[check])
    truth = y[check].astype(bool)
    # Each class is covered (its conformal set holds it) at >= 1 - alpha, up to sampling noise:
    # a covered image is referred or called right.
    for label in (0, 1):
        covered = (referred | (calls == truth))[truth == bool(label)]
        assert covered.mean() >= 0.9 - 0.03
    assert decision.referral_band == (low, high) and decision.refer(0.5)
    margin = Decision(0.5, "fixed", referral_margin=0.1)
    assert margin.referral_band == (0.4, 0.6) and not margin.refer(0.65) and margin.refer(0.55)
    table = referral_table(y, {"clean": p, "shifted@1": np.clip(p + 0.1, 0, 1)}, 0.5,
                           EvaluateSettings(referral_alpha=0.1))  # fmt: skip
    conformal = table["rules"]["conformal"]
    assert conformal["band"] == pytest.approx(list(conformal_band(y, p, 0.5, 0.1)))
    assert 0 < conformal["clean_referral_rate"] < 1
    assert conformal["clean_error_unreferred"] < 0.1 + 0.03


def test_choose_threshold_saves_the_conformal_band_with_the_decision(tmp_path: Path) -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1] * 10)
    p = np.tile([0.1, 0.2, 0.3, 0.45, 0.55, 0.7, 0.8, 0.9], 10)
    decision = choose_threshold(y, p, EvaluateSettings(referral="conformal", referral_alpha=0.2))
    assert decision.referral_low is not None and decision.referral_low <= decision.threshold
    decision.save(tmp_path / "decision.json")
    assert Decision.load(tmp_path / "decision.json").referral_band == decision.referral_band
    assert choose_threshold(y, p, EvaluateSettings()).referral_low is None  # margin by default
