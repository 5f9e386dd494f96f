"""The threshold-rule table on simulated sites: it recommends a rule that keeps sensitivity on
every plausible site, and says so when none does."""

from __future__ import annotations

import numpy as np

from pneumo.config import EvaluateSettings
from pneumo.decision.operating_point import CANDIDATE_RULES, PREVALENCES, rule_table


def _sets(shift_down: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    labels = (np.arange(600) % 3 != 0).astype(int)
    logits = np.where(labels == 1, 2.5, -2.5) + rng.normal(0, 1.0, len(labels))
    clean = 1 / (1 + np.exp(-logits))
    # A site whose pneumonia radiographs score lower (sensitivity is at risk), and one whose
    # normal radiographs score higher (specificity is at risk); severity 2 only in the report.
    down = 1 / (1 + np.exp(-(logits - shift_down * labels)))
    up = 1 / (1 + np.exp(-(logits + 1.5 * (1 - labels))))
    severe = 1 / (1 + np.exp(-(logits + 4)))
    return labels, {"clean": clean, "down@1": down, "up@1": up, "up@2": severe}


def test_the_recommended_rule_keeps_sensitivity_on_every_plausible_site() -> None:
    labels, sets = _sets(shift_down=1.0)
    table = rule_table(labels, sets, EvaluateSettings(), min_sensitivity=0.95)
    rows = {r["rule"]: r for r in table["rules"]}
    assert set(rows) == set(CANDIDATE_RULES) and table["sites"] == 3 * len(PREVALENCES)
    best = rows[table["recommended"]]
    assert table["recommended_keeps_sensitivity"] and best["worst_sensitivity"] >= 0.95
    keeping = [r for r in rows.values() if r["keeps_sensitivity"]]
    assert best["mean_specificity"] == max(r["mean_specificity"] for r in keeping)
    # Higher target sensitivity: lower threshold, more sensitivity, less specificity.
    high, low = rows["target sensitivity 0.99"], rows["target sensitivity 0.95"]
    assert high["threshold"] <= low["threshold"]
    assert high["worst_sensitivity"] >= low["worst_sensitivity"]
    # Severity 2 is reported, not used to choose.
    assert best["worst_specificity_site"] != "up@2"


def test_when_no_rule_keeps_it_the_most_sensitive_is_named_and_flagged() -> None:
    labels, sets = _sets(shift_down=6.0)
    table = rule_table(labels, sets, EvaluateSettings(), min_sensitivity=0.95)
    assert not table["recommended_keeps_sensitivity"]
    rows = {r["rule"]: r for r in table["rules"]}
    assert rows[table["recommended"]]["worst_sensitivity"] == max(
        r["worst_sensitivity"] for r in rows.values())  # fmt: skip


def test_floor_threshold_is_the_highest_whose_clopper_pearson_bound_holds() -> None:
    """The sensitivity floor's threshold, written out: the hits-th highest pneumonia score for
    the fewest hits whose lower bound reaches the floor; the point sensitivity when none can."""
    from pneumo.decision import floor_threshold, sensitivity_lower_bound

    rng = np.random.default_rng(1)
    for _ in range(60):
        n = int(rng.integers(1, 300))
        labels = rng.random(n) < 0.6
        labels[0] = True
        scores = rng.random(n)
        floor, level = float(rng.choice([0.5, 0.9, 0.95, 0.99])), float(rng.choice([0.9, 0.95]))
        positives = np.sort(scores[labels])[::-1]
        held = [h for h in range(1, len(positives) + 1)
                if sensitivity_lower_bound(h, len(positives), level) >= floor]  # fmt: skip
        needed = max(int(np.ceil(floor * len(positives))), 1)
        expected = (positives[held[0] - 1], True) if held else (positives[needed - 1], False)
        assert floor_threshold(labels, scores, floor, level) == (float(expected[0]), expected[1])
