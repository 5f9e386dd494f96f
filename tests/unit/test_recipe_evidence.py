"""The evidence behind the default recipe (reports/ablation.csv, written by `pneumo ablation
report` from the DVC experiments of ablation.yaml), held to its controls.

Positive control: the ranking must put `degrade` (the one network whose specificity held on the
official Kermany test split, 0.85 against 0.68 for ensemble3) above `ensemble3` and `v1`.
Negative control: it must not call the round-1 probes that failed there (`wide-augment`, `px224`)
better than `v1`. And the shipped params.yaml is the recipe ranked first.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pneumo.config import load_settings
from pneumo.evaluation import ablation

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return pd.read_csv(REPO / "reports" / "ablation.csv")


def _rank(table: pd.DataFrame, recipe: str) -> int:
    return int(table.loc[table["recipe"] == recipe, "rank"].iloc[0])


def test_every_recipe_ran_with_the_counterfactual_battery(table: pd.DataFrame) -> None:
    recipes = ablation.load_recipes(REPO / "ablation.yaml")
    assert set(table["recipe"]) <= set(recipes)
    # The controls and the candidates that remove the cue, at least.
    assert {"v1", "ensemble3", "degrade", "wide-augment", "px224"} <= set(table["recipe"])
    for column in ("cf_specificity", "cf_sensitivity", "cf_roc_auc", "cf_cue_effect",
                   "stress_mean_roc_auc", "val_roc_auc"):  # fmt: skip
        assert table[column].notna().all(), column


def test_the_ranking_is_the_report_rule_and_never_the_carved_test(table: pd.DataFrame) -> None:
    again = ablation.rank(table.drop(columns="rank").sample(frac=1, random_state=0))
    assert list(again["recipe"]) == list(table.sort_values("rank")["recipe"])
    assert not any(column.startswith("test_") for column, _ in ablation.RANKING)


def test_positive_control_degrade_above_ensemble3_and_v1(table: pd.DataFrame) -> None:
    assert _rank(table, "degrade") < _rank(table, "ensemble3")
    assert _rank(table, "degrade") < _rank(table, "v1")


def test_negative_control_failed_probes_not_above_v1(table: pd.DataFrame) -> None:
    assert _rank(table, "wide-augment") > _rank(table, "v1")
    assert _rank(table, "px224") > _rank(table, "v1")


def test_the_shipped_default_is_the_recipe_ranked_first(table: pd.DataFrame) -> None:
    winner = table.sort_values("rank")["recipe"].iloc[0]
    overrides = ablation.load_recipes(REPO / "ablation.yaml")[winner]["overrides"]
    shipped = load_settings(REPO / "params.yaml")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in overrides.items():
        node = raw
        for part in key.split("."):
            node = node[part]
        if isinstance(value, float):
            assert math.isclose(node, value), key
        else:
            assert node == value, key
    assert shipped.model.members == overrides["model.members"]
