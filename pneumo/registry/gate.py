"""The promotion rule, pure: floors first, then non-inferiority to the champion. No I/O.

A challenger is promoted when it reaches every floor of ``registry`` in params.yaml on the test
split and, on each of ``registry.primary_metrics``, trails the champion (re-scored with its own
weights and threshold on the same split) by at most ``registry.margin``. A NaN metric never
passes, and a champion that could not be measured is kept: the gate fails closed.
"""

from __future__ import annotations

import math

from pneumo.config import RegistrySettings

# The metrics the gate reports for challenger and champion (the rows of its table).
REPORTED_METRICS: tuple[str, ...] = (
    "roc_auc", "accuracy", "sensitivity", "specificity", "f1", "pr_auc",
)  # fmt: skip
FLOOR_KEYS: dict[str, str] = {
    "roc_auc": "min_roc_auc",
    "sensitivity": "min_sensitivity",
    "specificity": "min_specificity",
}
# Floors on the counterfactual battery (metrics/stress.json, validation split): the classes
# trade acquisition looks, and a network that reads the scanner loses these. A new network must
# reach them; a site version (same weights as a registered one) is not measured again.
COUNTERFACTUAL_FLOOR_KEYS: dict[str, str] = {
    "counterfactual_sensitivity": "min_counterfactual_sensitivity",
    "counterfactual_specificity": "min_counterfactual_specificity",
}
_FLOAT_NOISE = 1e-12  # identical models must not fail on rounding


def floors(settings: RegistrySettings, counterfactual: bool = False) -> dict[str, float]:
    """metric -> the minimum a challenger must reach (test split; counterfactual: validation)."""
    keys = {**FLOOR_KEYS, **(COUNTERFACTUAL_FLOOR_KEYS if counterfactual else {})}
    return {metric: getattr(settings, key) for metric, key in keys.items()}


def gate(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    settings: RegistrySettings,
    champion_version: int | None = None,
    champion_problem: str | None = None,
    counterfactual: bool = False,
) -> tuple[bool, list[str]]:
    """(passed, why): the failures when it fails, else what it passed.

    ``champion`` is None when there is no champion yet; ``champion_problem`` says why an existing
    champion could not be re-scored, which keeps it whatever the challenger's metrics. With
    ``counterfactual``, the challenger must also reach the counterfactual floors (a missing
    figure fails: run `pneumo stress`).
    """
    failures, notes = _check_floors(challenger, floors(settings, counterfactual))
    if champion_problem:
        return False, [champion_problem, *failures]
    if champion is None:
        notes.append("no champion yet: the first model that reaches the floors is promoted")
    else:
        name = f"champion v{champion_version}" if champion_version else "the champion"
        behind, within = _check_non_inferiority(challenger, champion, settings, name)
        failures += behind
        notes += within
    return (not failures), (failures or notes)


def _check_floors(
    challenger: dict[str, float], minimums: dict[str, float]
) -> tuple[list[str], list[str]]:
    failures, notes = [], []
    for metric, floor in minimums.items():
        value = challenger.get(metric, math.nan)
        if value >= floor:
            notes.append(f"{metric} {value:.4f} >= floor {floor:.4f}")
        else:
            failures.append(f"{metric} {value:.4f} is below the floor {floor:.4f}")
    return failures, notes


def _check_non_inferiority(
    challenger: dict[str, float],
    champion: dict[str, float],
    settings: RegistrySettings,
    name: str,
) -> tuple[list[str], list[str]]:
    failures, notes = [], []
    margin = settings.margin
    for metric in settings.primary_metrics:
        value = challenger.get(metric, math.nan)
        reference = champion.get(metric, math.nan)
        if value + _FLOAT_NOISE >= reference - margin:
            notes.append(f"{metric} {value:.4f} vs {name} {reference:.4f}: within margin {margin}")
        else:
            failures.append(
                f"{metric} {value:.4f} trails {name} ({reference:.4f}) by "
                f"{reference - value:.4f}, more than the margin {margin}"
            )
    return failures, notes
