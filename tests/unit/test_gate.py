"""The promotion rule as a table: floors, non-inferiority, NaN and an unmeasurable champion."""

from __future__ import annotations

import math

import pytest

from pneumo.config import RegistrySettings
from pneumo.registry.gate import floors, gate

NAN = math.nan
# Defaults: floors roc_auc 0.90, sensitivity 0.85, specificity 0.70; margin 0.01 on roc_auc, accuracy.
GOOD = {"roc_auc": 0.95, "accuracy": 0.90, "sensitivity": 0.95, "specificity": 0.80}

CASES = [
    # (case, challenger, champion, settings overrides, passed, reasons (substrings, in order))
    ("first model above the floors", GOOD, None, {}, True,
     ["roc_auc 0.9500 >= floor 0.9000", "sensitivity 0.9500 >= floor 0.8500",
      "specificity 0.8000 >= floor 0.7000", "no champion yet"]),
    ("first model below one floor", {**GOOD, "sensitivity": 0.5}, None, {}, False,
     ["sensitivity 0.5000 is below the floor 0.8500"]),
    ("every floor missed, each named", {**GOOD, "roc_auc": 0.5, "sensitivity": 0.5,
                                        "specificity": 0.5}, None, {}, False,
     ["roc_auc 0.5000 is below", "sensitivity 0.5000 is below", "specificity 0.5000 is below"]),
    ("exactly at a floor passes", {**GOOD, "specificity": 0.70}, None, {}, True,
     ["roc_auc", "sensitivity", "specificity 0.7000 >= floor 0.7000", "no champion"]),
    ("NaN never passes a floor", {**GOOD, "roc_auc": NAN}, None, {}, False,
     ["roc_auc nan is below the floor 0.9000"]),
    ("a missing metric is NaN", {"accuracy": 0.9, "sensitivity": 0.9, "specificity": 0.9}, None,
     {}, False, ["roc_auc nan is below the floor"]),
    ("within the margin of the champion", GOOD, {"roc_auc": 0.955, "accuracy": 0.905}, {}, True,
     ["roc_auc", "sensitivity", "specificity",
      "roc_auc 0.9500 vs champion v3 0.9550: within margin 0.01",
      "accuracy 0.9000 vs champion v3 0.9050: within margin 0.01"]),
    ("identical to the champion (float noise)", GOOD, dict(GOOD), {"margin": 0.0}, True,
     ["roc_auc", "sensitivity", "specificity", "within margin 0.0", "within margin 0.0"]),
    ("trails the champion by more than the margin", GOOD, {"roc_auc": 0.97, "accuracy": 0.9}, {},
     False, ["roc_auc 0.9500 trails champion v3 (0.9700) by 0.0200, more than the margin 0.01"]),
    ("trails on both primary metrics", GOOD, {"roc_auc": 0.99, "accuracy": 0.99}, {}, False,
     ["roc_auc 0.9500 trails champion v3", "accuracy 0.9000 trails champion v3"]),
    ("a wider margin tolerates it", GOOD, {"roc_auc": 0.97, "accuracy": 0.9}, {"margin": 0.05},
     True, ["roc_auc", "sensitivity", "specificity", "within margin 0.05", "within margin 0.05"]),
    ("only primary metrics are compared", GOOD, {"roc_auc": 0.95, "accuracy": 0.99},
     {"primary_metrics": ["roc_auc"]}, True,
     ["roc_auc", "sensitivity", "specificity", "roc_auc 0.9500 vs champion v3"]),
    ("a floor failure and a trail are both reported", {**GOOD, "sensitivity": 0.5},
     {"roc_auc": 0.99, "accuracy": 0.9}, {}, False,
     ["sensitivity 0.5000 is below", "roc_auc 0.9500 trails champion v3"]),
    ("better than the champion", {**GOOD, "roc_auc": 0.99}, {"roc_auc": 0.95, "accuracy": 0.9},
     {}, True, ["roc_auc", "sensitivity", "specificity", "roc_auc 0.9900 vs champion v3",
                "accuracy"]),
    ("NaN on the champion's side keeps it", GOOD, {"roc_auc": NAN, "accuracy": 0.9}, {}, False,
     ["roc_auc 0.9500 trails champion v3 (nan)"]),
    ("stricter floors from params.yaml", GOOD, None, {"min_roc_auc": 0.96}, False,
     ["roc_auc 0.9500 is below the floor 0.9600"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("challenger", "champion", "overrides", "passed", "reasons"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_gate_rule(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    overrides: dict[str, object],
    passed: bool,
    reasons: list[str],
) -> None:
    settings = RegistrySettings(**overrides)
    got_passed, got_reasons = gate(challenger, champion, settings, champion_version=3)
    assert got_passed is passed
    assert len(got_reasons) == len(reasons), got_reasons
    for got, expected in zip(got_reasons, reasons, strict=True):
        assert expected in got, (got, expected)


def test_an_unmeasurable_champion_is_kept_whatever_the_challenger() -> None:
    problem = "champion v3 could not be re-scored on this test split (no images)"
    perfect = {"roc_auc": 1.0, "accuracy": 1.0, "sensitivity": 1.0, "specificity": 1.0}
    assert gate(perfect, None, RegistrySettings(), 3, problem) == (False, [problem])
    below = {**perfect, "specificity": 0.1}
    passed, reasons = gate(below, None, RegistrySettings(), 3, problem)
    assert not passed and reasons == [problem, "specificity 0.1000 is below the floor 0.7000"]


def test_floors_come_from_the_settings() -> None:
    settings = RegistrySettings(min_roc_auc=0.8, min_sensitivity=0.7, min_specificity=0.6)
    assert floors(settings) == {"roc_auc": 0.8, "sensitivity": 0.7, "specificity": 0.6}


def test_the_name_of_an_unnumbered_champion() -> None:
    passed, reasons = gate(GOOD, {"roc_auc": 0.99, "accuracy": 0.9}, RegistrySettings())
    assert not passed and "trails the champion (0.9900)" in reasons[0]


def test_counterfactual_floors_refuse_a_network_that_reads_the_scanner() -> None:
    settings = RegistrySettings()  # floors: counterfactual sensitivity 0.80, specificity 0.70
    shortcut = {**GOOD, "counterfactual_sensitivity": 0.95, "counterfactual_specificity": 0.40}
    passed, reasons = gate(shortcut, None, settings, counterfactual=True)
    assert not passed
    assert reasons == ["counterfactual_specificity 0.4000 is below the floor 0.7000"]
    blind = {**shortcut, "counterfactual_specificity": 0.90}
    assert gate(blind, None, settings, counterfactual=True)[0]
    # Never measured (no `pneumo stress`): fails closed.
    assert not gate(GOOD, None, settings, counterfactual=True)[0]
    # A site version (same weights, judged on its sample) is not measured again.
    assert gate(GOOD, None, settings)[0]
    assert set(floors(settings, counterfactual=True)) == {
        "roc_auc", "sensitivity", "specificity",
        "counterfactual_sensitivity", "counterfactual_specificity",
    }  # fmt: skip
