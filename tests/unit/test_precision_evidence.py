"""Reduced precision by evidence (pneumo/evaluation/precision.py): each bound is measured on the
same sets as fp32, a candidate outside any bound is refused, and the service is only ever told
to run a candidate it can build from the model file."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from pneumo.config.evaluation import ReducedPrecisionSettings
from pneumo.evaluation.precision import compare, evidence

BOUNDS = ReducedPrecisionSettings()
THRESHOLD = 0.5


def _sets(seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """fp32 probabilities of a clean set, two shifts and the counterfactual swaps."""
    rng = np.random.default_rng(seed)
    labels = np.array([0] * 200 + [1] * 200)
    clean = np.clip(0.15 + 0.7 * labels + rng.normal(0, 0.1, len(labels)), 0.01, 0.99)
    sets = {"clean": clean}
    for name in ("darker@1", "blur@2", "cf_swap@1", "cf_swap@2"):
        sets[name] = np.clip(clean + rng.normal(0, 0.02, len(labels)), 0.01, 0.99)
    return sets, labels


def _probe(**candidates: dict[str, np.ndarray]) -> SimpleNamespace:
    return SimpleNamespace(sets=candidates, skipped={})


def test_a_candidate_within_every_bound_is_allowed_and_served() -> None:
    reference, labels = _sets()
    close = {k: np.clip(v + 1e-3, 0, 1) for k, v in reference.items()}
    report = evidence(_probe(bf16=close), reference, labels, THRESHOLD, BOUNDS)
    bf16 = report["candidates"]["bf16"]
    assert bf16["allowed"] and all(bf16["within"].values())
    assert bf16["max_probability_gap"] == pytest.approx(1e-3, abs=1e-9)
    assert bf16["sets"] == 5 and bf16["images"] == 5 * len(labels)
    assert report["serve"] == "bf16" and report["bounds"]["max_probability_gap"] == 0.02


def test_each_bound_refuses_on_its_own() -> None:
    reference, labels = _sets()
    # One image moved by 0.05: the gap bound alone fails (no call changes, AUC holds).
    gap = {k: v.copy() for k, v in reference.items()}
    gap["clean"][0] = 0.05 if reference["clean"][0] < 0.3 else reference["clean"][0] - 0.05
    # Calls near the threshold pushed across it: flips counted over every set.
    near = {k: v.copy() for k, v in reference.items()}
    crossing = np.flatnonzero(np.abs(reference["blur@2"] - THRESHOLD) < 0.2)[:5]
    near["blur@2"][crossing] = np.where(reference["blur@2"][crossing] >= THRESHOLD, 0.499, 0.5)
    # The swapped looks moved towards the class they imitate: the shortcut meter moves.
    cue = {k: v.copy() for k, v in reference.items()}
    cue["cf_swap@2"] = np.clip(reference["cf_swap@2"] + np.where(labels == 0, 0.004, -0.004), 0, 1)
    for candidate, failing in ((gap, "max_probability_gap"), (near, "max_flip_rate"),
                               (cue, "max_cue_effect_change")):  # fmt: skip
        figures = evidence(_probe(bf16=candidate), reference, labels, THRESHOLD, BOUNDS)
        bf16 = figures["candidates"]["bf16"]
        assert not bf16["within"][failing], failing
        assert not bf16["allowed"] and figures["serve"] == "fp32"
    assert compare(reference, near, labels, THRESHOLD)["flips"] == len(crossing)


def test_an_auc_drop_on_one_shift_is_named() -> None:
    reference, labels = _sets()
    worse = {k: v.copy() for k, v in reference.items()}
    worse["darker@1"] = np.where(labels == 1, worse["darker@1"] - 0.5, worse["darker@1"])
    figures = compare(reference, worse, labels, THRESHOLD)
    assert figures["worst_auc_drop_set"] == "darker@1" and figures["worst_auc_drop"] > 0.01
    assert figures["clean_auc_drop"] == 0.0


def test_int8_is_measured_but_never_served_and_a_skipped_candidate_says_why() -> None:
    reference, labels = _sets()
    same = {k: v.copy() for k, v in reference.items()}
    probe = _probe(int8=same)
    probe.skipped["bf16"] = "this CPU has no native bf16"
    report = evidence(probe, reference, labels, THRESHOLD, BOUNDS)
    assert report["candidates"]["int8"]["allowed"] and not report["candidates"]["int8"]["servable"]
    assert report["candidates"]["bf16"] == {"measured": False, "why": "this CPU has no native bf16",
                                            "allowed": False, "servable": True}  # fmt: skip
    assert report["serve"] == "fp32"
