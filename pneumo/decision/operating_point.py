"""Which threshold rule survives a new site: every candidate rule on simulated sites.

The validation split is nearly separable, so many thresholds look equally good there; which one
holds at a new hospital is a question for shifted data. A simulated site is the validation split
under one of the stress battery's acquisition shifts or counterfactual swaps (pneumo/evaluation/stress.py),
at a pneumonia prevalence between 0.3 and 0.85. Each candidate rule chooses its threshold on the
clean validation split, as `pneumo evaluate` would, and is then scored on every simulated site:
sensitivity and specificity per shift, accuracy per shift and prevalence. The recommended rule
keeps sensitivity >= ``min_sensitivity`` on every plausible site (severity 1) and, among those,
loses the least specificity. The carved test split is never read.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pneumo.decision import choose_threshold

PREVALENCES = (0.3, 0.5, 0.625, 0.75, 0.85)
# The candidates: evaluate.* overrides (threshold_rule and its own keys).
CANDIDATE_RULES: dict[str, dict[str, Any]] = {
    "youden, most specific": {"threshold_rule": "youden", "youden_tiebreak": "most_specific"},
    "youden, centre": {"threshold_rule": "youden", "youden_tiebreak": "centre"},
    "target sensitivity 0.95": {"threshold_rule": "target_sensitivity", "target_sensitivity": 0.95},
    "target sensitivity 0.96": {"threshold_rule": "target_sensitivity", "target_sensitivity": 0.96},
    "target sensitivity 0.965": {"threshold_rule": "target_sensitivity",
                                 "target_sensitivity": 0.965},
    "target sensitivity 0.97": {"threshold_rule": "target_sensitivity", "target_sensitivity": 0.97},
    "target sensitivity 0.98": {"threshold_rule": "target_sensitivity", "target_sensitivity": 0.98},
    "target sensitivity 0.99": {"threshold_rule": "target_sensitivity", "target_sensitivity": 0.99},
}


def plausible_sites(sets: dict[str, np.ndarray]) -> list[str]:
    """The simulated sites a rule must hold on: the clean split and every shift at severity 1
    (severity 2 is reported, not chosen by)."""
    return [name for name in sets if name == "clean" or name.endswith("@1")]


def _rates(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> tuple[float, float]:
    positive = probabilities >= threshold
    return float(positive[labels == 1].mean()), float((~positive[labels == 0]).mean())


def rule_table(
    labels: np.ndarray,
    sets: dict[str, np.ndarray],
    evaluate_settings: Any,
    min_sensitivity: float = 0.95,
) -> dict[str, Any]:
    """Every candidate rule on every simulated site; ``sets`` maps ``clean`` and
    ``NAME@SEVERITY`` to the validation split's probabilities under that shift."""
    labels = np.asarray(labels).astype(int)
    plausible = plausible_sites(sets)
    rows = []
    for rule, overrides in CANDIDATE_RULES.items():
        settings = evaluate_settings.model_copy(update=overrides)
        threshold = choose_threshold(labels, sets["clean"], settings).threshold
        per_set = {name: _rates(labels, p, threshold) for name, p in sets.items()}
        sens = {name: r[0] for name, r in per_set.items()}
        spec = {name: r[1] for name, r in per_set.items()}
        accuracy = [q * sens[n] + (1 - q) * spec[n] for n in plausible for q in PREVALENCES]
        worst_sens = min(plausible, key=sens.get)
        worst_spec = min(plausible, key=spec.get)
        rows.append({
            "rule": rule, "threshold": threshold,
            "clean_sensitivity": sens["clean"], "clean_specificity": spec["clean"],
            "mean_sensitivity": float(np.mean([sens[n] for n in plausible])),
            "worst_sensitivity": sens[worst_sens], "worst_sensitivity_site": worst_sens,
            "mean_specificity": float(np.mean([spec[n] for n in plausible])),
            "worst_specificity": spec[worst_spec], "worst_specificity_site": worst_spec,
            "mean_accuracy": float(np.mean(accuracy)), "worst_accuracy": float(np.min(accuracy)),
            "severe_mean_sensitivity": float(np.mean([sens[n] for n in sets if n.endswith("@2")]
                                                     or [np.nan])),
            "severe_mean_specificity": float(np.mean([spec[n] for n in sets if n.endswith("@2")]
                                                     or [np.nan])),
            "keeps_sensitivity": sens[worst_sens] >= min_sensitivity,
        })  # fmt: skip
    keeping = [r for r in rows if r["keeps_sensitivity"]]
    pool = keeping or rows  # none keeps it: the most sensitive, said so
    key = (lambda r: r["mean_specificity"]) if keeping else (lambda r: r["worst_sensitivity"])
    best = max(pool, key=key)
    return {
        "min_sensitivity": min_sensitivity,
        "prevalences": list(PREVALENCES),
        "sites": len(plausible) * len(PREVALENCES),
        "rules": rows,
        "recommended": best["rule"],
        "recommended_keeps_sensitivity": bool(keeping),
    }


def referral_table(
    labels: np.ndarray, sets: dict[str, np.ndarray], threshold: float, evaluate_settings: Any
) -> dict[str, Any]:
    """Each referral rule (the fixed margin; the conformal band from the clean validation split)
    at ``threshold`` on every simulated site: how many calls it refers, and how many of the calls
    it does not refer are wrong. A useful band refers few and leaves few errors unreferred."""
    from pneumo.decision import Decision, conformal_band

    labels = np.asarray(labels).astype(int)
    low, high = conformal_band(labels, sets["clean"], threshold, evaluate_settings.referral_alpha)
    rules = {
        "margin": Decision(threshold, "table", referral_margin=evaluate_settings.referral_margin),
        "conformal": Decision(threshold, "table", referral_low=low, referral_high=high),
    }
    plausible = plausible_sites(sets)
    table: dict[str, Any] = {"threshold": threshold, "conformal_band": [low, high],
                             "alpha": evaluate_settings.referral_alpha, "rules": {}}  # fmt: skip
    for name, decision in rules.items():
        rates, errors = {}, {}
        for site in plausible:
            p = sets[site]
            referred = decision.refers(p)
            wrong = decision.positive(p) != labels.astype(bool)
            rates[site] = float(referred.mean())
            kept = ~referred
            errors[site] = float(wrong[kept].mean()) if kept.any() else 0.0
        table["rules"][name] = {
            "band": list(decision.referral_band),
            "clean_referral_rate": rates["clean"], "clean_error_unreferred": errors["clean"],
            "mean_referral_rate": float(np.mean(list(rates.values()))),
            "mean_error_unreferred": float(np.mean(list(errors.values()))),
            "worst_error_unreferred": float(max(errors.values())),
            "worst_error_site": max(errors, key=errors.get),
        }  # fmt: skip
    return table
