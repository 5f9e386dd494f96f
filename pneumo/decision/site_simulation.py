"""reports/adaptation.md: each way of deploying at a new site, on simulated sites.

A simulated site is a sample of the validation split's patients under one of the stress battery's
shifts or counterfactual swaps (severity 1, pneumo/evaluation/stress.py), drawn at a pneumonia prevalence
between 0.3 and 0.85. The patients are split in two: half A stands for what the model knew
(validation), half B is where sites are drawn from, so no site image calibrates the adaptation
that is graded on it. Three ways to deploy are compared on the same sites:

- the shipped decision as it is;
- `pneumo adapt` (label-free: EM prevalence from the site's unlabelled probabilities, moved only
  when the rule of pneumo/decision/prevalence.py allows, refused when its interval is too wide);
- `pneumo calibrate` with 50, 100 or 200 labelled images of the site (the most specific threshold
  under the sensitivity floor), graded on the site's other images.

The carved test split is never read.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pneumo.decision import Decision, floor_threshold
from pneumo.decision.operating_point import PREVALENCES, plausible_sites
from pneumo.decision.prevalence import (
    estimate_prevalence,
    fit_calibration,
    judge_move,
    moved_decision,
    simulated_site,
)

SITE_SIZE = 300
LABELLED = (50, 100, 200)


def _rates(y: np.ndarray, called: np.ndarray) -> dict[str, float]:
    y = y.astype(bool)
    return {"sensitivity": float(called[y].mean()), "specificity": float((~called[~y]).mean()),
            "accuracy": float((called == y).mean())}  # fmt: skip


def simulate(
    labels: np.ndarray,
    patients: np.ndarray,
    sets: dict[str, np.ndarray],
    decision: Decision,
    settings: Any,
    seed: int = 0,
) -> dict[str, Any]:
    """Every deployment method on every simulated site; their mean and worst figures."""
    labels = np.asarray(labels).astype(int)
    rng = np.random.default_rng(seed)
    unique = np.array(sorted(set(patients)))
    rng.shuffle(unique)
    known = np.isin(patients, unique[: len(unique) // 2])
    pool = ~known
    if any(len(np.unique(labels[part])) < 2 or np.bincount(labels[part]).min() < 5
           for part in (known, pool)):  # fmt: skip
        return {"note": "too few validation images of a class in a patient half to simulate "
                "sites", "sites": 0, "methods": {}}  # fmt: skip
    calibration = fit_calibration(labels[known], sets["clean"][known])
    reference_y, reference_p = labels[known], sets["clean"][known]
    results: dict[str, list[dict[str, float]]] = {}
    moved_count = refused = 0
    plausible = plausible_sites(sets)
    for site_number, (name, prevalence) in enumerate(
        (n, q) for n in plausible for q in PREVALENCES
    ):
        index = simulated_site(labels[pool], prevalence, SITE_SIZE, seed + site_number)
        y, p = labels[pool][index], sets[name][pool][index]
        results.setdefault("shipped decision", []).append(_rates(y, decision.positive(p)))
        estimate = estimate_prevalence(p, calibration, reference_y, reference_p,
                                       decision.threshold, samples=100, seed=site_number)  # fmt: skip
        adapted = decision
        if estimate.width > settings.adapt.max_interval_width:
            refused += 1
        else:
            moved = moved_decision(decision, calibration, estimate.em)
            move, _, _ = judge_move(estimate, decision, moved, reference_y, reference_p,
                                    settings.adapt.min_sensitivity, calibration.source_prior,
                                    seed=site_number, ranking=False)  # fmt: skip
            if move:
                adapted, moved_count = moved, moved_count + 1
        results.setdefault("adapt (no labels)", []).append(
            _rates(y, adapted.positive(adapted.adjust(p))))  # fmt: skip
        order = rng.permutation(len(y))
        for k in LABELLED:
            labelled, rest = order[:k], order[k:]
            if len(np.unique(y[labelled])) < 2:
                continue
            threshold, _ = floor_threshold(y[labelled], p[labelled],
                                           settings.calibrate.min_sensitivity,
                                           settings.evaluate.ci_level)  # fmt: skip
            results.setdefault(f"calibrate, {k} labelled", []).append(
                _rates(y[rest], p[rest] >= threshold))  # fmt: skip
    summary = _summarise(results, settings.calibrate.min_sensitivity)
    return {"site_size": SITE_SIZE, "sites": len(plausible) * len(PREVALENCES),
            "adapt_moved": moved_count, "adapt_refused": refused, "methods": summary}  # fmt: skip


def _summarise(
    results: dict[str, list[dict[str, float]]], min_sensitivity: float
) -> dict[str, dict[str, float]]:
    """Each method's mean and worst figures over the simulated sites."""
    summary: dict[str, dict[str, float]] = {}
    for method, rows in results.items():
        summary[method] = {"sites": len(rows)}
        for metric in ("accuracy", "sensitivity", "specificity"):
            values = [r[metric] for r in rows]
            summary[method][f"mean_{metric}"] = float(np.mean(values))
            summary[method][f"worst_{metric}"] = float(np.min(values))
        summary[method]["share_sensitivity_ok"] = float(np.mean(
            [r["sensitivity"] >= min_sensitivity for r in rows]))  # fmt: skip
    return summary


def markdown(stress_report: dict[str, Any], simulation: dict[str, Any]) -> str:
    """The generated reports/adaptation.md."""
    points, referral = stress_report["operating_points"], stress_report["referral"]
    lines = [
        "# Decisions at a new site",
        "",
        "Generated by `pneumo stress` (pneumo/decision/site_simulation.py and operating_point.py) "
        "for the workspace's model; every figure is on the validation split under simulated site "
        "conditions (the stress battery's shifts and counterfactual swaps at severity 1, "
        f"prevalence {', '.join(str(q) for q in PREVALENCES)}). The carved test is never read.",
        "",
        "## Threshold rules",
        "",
        f"Each rule chooses its threshold on the clean validation split; {points['sites']} "
        f"simulated sites. Recommended: **{points['recommended']}** (keeps sensitivity >= "
        f"{points['min_sensitivity']} on every site: "
        f"{'yes' if points['recommended_keeps_sensitivity'] else 'no rule does'}).",
        "",
        "| rule | threshold | mean sens. | worst sens. (site) | mean spec. | worst spec. (site) | "
        "mean acc. | worst acc. |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in points["rules"]:
        lines.append(
            f"| {r['rule']} | {r['threshold']:.4f} | {r['mean_sensitivity']:.3f} | "
            f"{r['worst_sensitivity']:.3f} ({r['worst_sensitivity_site']}) | "
            f"{r['mean_specificity']:.3f} | {r['worst_specificity']:.3f} "
            f"({r['worst_specificity_site']}) | {r['mean_accuracy']:.3f} | "
            f"{r['worst_accuracy']:.3f} |"
        )
    lines += _referral_lines(referral)
    lines += ["", "## Deploying at a new site", ""]
    if not simulation.get("methods"):
        return "\n".join([*lines, simulation.get("note", "not simulated"), ""])
    lines += [
        f"{simulation['sites']} simulated sites of {simulation['site_size']} images, drawn from "
        "half of the validation patients; the other half stands for what the model knew. "
        f"`adapt` moved the operating point at {simulation['adapt_moved']} sites and refused "
        f"{simulation['adapt_refused']} (interval too wide).",
        "",
        "| method | mean acc. | worst acc. | mean sens. | worst sens. | mean spec. | worst spec. | "
        "sites with sens. >= floor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, r in simulation["methods"].items():
        lines.append(
            f"| {method} | {r['mean_accuracy']:.3f} | {r['worst_accuracy']:.3f} | "
            f"{r['mean_sensitivity']:.3f} | {r['worst_sensitivity']:.3f} | "
            f"{r['mean_specificity']:.3f} | {r['worst_specificity']:.3f} | "
            f"{r['share_sensitivity_ok']:.0%} |"
        )
    return "\n".join(lines) + "\n"


def _referral_lines(referral: dict[str, Any]) -> list[str]:
    """The referral section: each band rule on the clean split and on the simulated sites."""
    lines = [
        "",
        "## Referral",
        "",
        f"At the shipped threshold {referral['threshold']:.4f}; conformal band from the clean "
        f"validation split (alpha {referral['alpha']} per class).",
        "",
        "| rule | band | referred (clean) | errors left unreferred (clean) | referred (mean over "
        "sites) | errors left unreferred (mean / worst) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in referral["rules"].items():
        lines.append(
            f"| {name} | {r['band'][0]:.3f}-{r['band'][1]:.3f} | {r['clean_referral_rate']:.3f} | "
            f"{r['clean_error_unreferred']:.3f} | {r['mean_referral_rate']:.3f} | "
            f"{r['mean_error_unreferred']:.3f} / {r['worst_error_unreferred']:.3f} |"
        )
    return lines
