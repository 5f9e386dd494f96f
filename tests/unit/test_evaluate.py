"""Metrics against scikit-learn on known inputs; the threshold never sees test labels."""

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from pneumo.config import EvaluateSettings
from pneumo.decision import choose_threshold
from pneumo.decision.metrics import (
    POINT_METRICS,
    binary_metrics,
    bootstrap_intervals,
    expected_calibration_error,
    weighted_point_metrics,
)
from pneumo.evaluation.evaluate import metrics_table, mlflow_metrics, score_split


def test_metrics_on_a_hand_checked_example() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8, 0.9, 0.7, 0.6, 0.2, 0.95, 0.55])
    m = binary_metrics(y, p, threshold=0.5)
    # predictions: 0 0 0 1 | 1 1 1 0 1 1 -> tn 3, fp 1, fn 1, tp 5
    assert m["confusion"] == {"tn": 3, "fp": 1, "fn": 1, "tp": 5}
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["sensitivity"] == pytest.approx(5 / 6)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["precision"] == pytest.approx(5 / 6)
    assert m["f1"] == pytest.approx(skm.f1_score(y, p >= 0.5))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(y, p))
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))


def test_metrics_without_ranking_keep_every_rate_and_leave_the_curves_nan() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(500) < 0.6).astype(int)
    p = np.clip(0.3 * y + rng.random(500) * 0.7, 0, 1)
    full, rates = binary_metrics(y, p, 0.5), binary_metrics(y, p, 0.5, ranking=False)
    assert np.isnan(rates["roc_auc"]) and np.isnan(rates["pr_auc"])
    assert full["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p))
    for name in ("accuracy", "sensitivity", "specificity", "f1", "brier", "ece", "log_loss"):
        assert rates[name] == full[name], name
    assert rates["confusion"] == full["confusion"]


def test_ece_zero_when_calibrated_and_large_when_not() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(size=200_000)
    y = (rng.uniform(size=p.size) < p).astype(int)
    assert expected_calibration_error(y, p) < 0.01
    assert expected_calibration_error(y, np.clip(p + 0.3, 0, 1)) > 0.2


def _scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=n) < 0.7).astype(int)
    p = 1 / (1 + np.exp(-(2.5 * (2 * y - 1) + rng.normal(0, 1.5, n))))
    return y, p


@pytest.mark.parametrize("rule", ["youden", "target_sensitivity", "fixed"])
def test_threshold_rules(rule: str) -> None:
    y, p = _scores(2000, 1)
    settings = EvaluateSettings(threshold_rule=rule, target_sensitivity=0.97, fixed_threshold=0.42)
    decision = choose_threshold(y, p, settings)
    assert 0 < decision.threshold < 1
    if rule == "fixed":
        assert decision.threshold == 0.42
    if rule == "target_sensitivity":
        assert decision.val_sensitivity >= 0.97
    if rule == "youden":
        j = decision.val_sensitivity + decision.val_specificity - 1
        fpr, tpr, _ = skm.roc_curve(y, p)
        assert j >= (tpr - fpr).max() - 0.01


def test_test_labels_cannot_reach_the_threshold() -> None:
    """Flip or shuffle every test label: the decision and its threshold must not move."""
    y_val, p_val = _scores(500, 2)
    y_test, p_test = _scores(400, 3)
    settings = EvaluateSettings(bootstrap_samples=0)
    decision = choose_threshold(y_val, p_val, settings)
    groups = np.arange(len(y_test)).astype(str)
    subtypes = np.where(y_test == 1, "bacterial", "none")
    honest = score_split(y_test, p_test, groups, decision, settings, subtypes)
    flipped = score_split(1 - y_test, p_test, groups, decision, settings, subtypes)
    assert honest["threshold"] == flipped["threshold"] == decision.to_json()
    assert honest["test"]["accuracy"] != flipped["test"]["accuracy"]


def test_bootstrap_intervals_contain_the_estimate_and_resample_patients() -> None:
    y, p = _scores(600, 4)
    patients = np.repeat(np.arange(300), 2).astype(str)
    settings = EvaluateSettings(bootstrap_samples=200, seed=1)
    ci = bootstrap_intervals(y, p, patients, 0.5, settings.bootstrap_samples, seed=settings.seed)
    point = binary_metrics(y, p, 0.5)
    for name in ("accuracy", "roc_auc", "sensitivity", "specificity"):
        low, high = ci[name]
        assert low <= point[name] <= high
        assert high - low < 0.2
    again = bootstrap_intervals(y, p, patients, 0.5, settings.bootstrap_samples, seed=settings.seed)
    assert ci == again  # seeded


def _same(expected: float, got: float) -> bool:
    return bool(np.isnan(got)) if np.isnan(expected) else abs(expected - got) < 1e-12


def test_weighted_metrics_equal_binary_metrics_on_each_resample_written_out() -> None:
    """Ties, a resample with one class only, a resample with nothing called positive."""
    y = np.array([0, 0, 1, 1, 1, 0, 1, 0])
    p = np.array([0.1, 0.5, 0.5, 0.9, 0.2, 0.5, 0.7, 0.05])
    weights = np.array([
        [1, 0, 2, 0, 1, 0, 0, 3],  # both classes, ties at 0.5
        [2, 1, 0, 0, 0, 1, 0, 0],  # normals only: AUCs and sensitivity NaN
        [0, 0, 1, 1, 1, 0, 1, 0],  # pneumonia only: specificity NaN
        [1, 0, 0, 0, 1, 0, 0, 2],  # nothing above the threshold: precision and F1 0
        [1, 1, 1, 1, 1, 1, 1, 1],
    ])  # fmt: skip
    got = weighted_point_metrics(y, p, weights, 0.5)
    for row, counts in enumerate(weights):
        index = np.repeat(np.arange(len(y)), counts)
        expected = binary_metrics(y[index], p[index], 0.5)
        for name in POINT_METRICS:
            assert _same(expected[name], got[name][row]), (row, name, expected[name], got[name][row])


def test_bootstrap_scores_the_same_resamples_as_writing_each_one_out() -> None:
    """The vectorised bootstrap draws the patients as one resample at a time would and gets the
    same intervals, to rounding, for sets with ties, rare classes and one image per patient."""
    rng = np.random.default_rng(3)
    for trial in range(12):
        n = int(rng.integers(5, 300))
        y = rng.random(n) < rng.uniform(0.05, 0.95)
        p = np.round(np.clip(rng.normal(0.3 + 0.4 * y, 0.25), 0, 1), int(rng.integers(1, 7)))
        groups = rng.integers(0, int(rng.integers(2, n + 1)), n)
        got = bootstrap_intervals(y, p, groups, 0.5, 100, seed=trial)
        draws = np.random.default_rng(trial)
        codes, uniques = pd.factorize(pd.Series(groups))
        members = [np.flatnonzero(codes == g) for g in range(len(uniques))]
        values: dict[str, list[float]] = {name: [] for name in POINT_METRICS}
        for _ in range(100):
            chosen = draws.integers(0, len(members), len(members))
            index = np.concatenate([members[g] for g in chosen])
            scored = binary_metrics(y[index], p[index], 0.5)
            for name in POINT_METRICS:
                values[name].append(scored[name])
        for name, drawn in values.items():
            expected = [np.nanquantile(drawn, 0.025), np.nanquantile(drawn, 0.975)]
            assert all(_same(e, g) for e, g in zip(expected, got[name], strict=True)), name


def test_report_has_slices_and_mlflow_names() -> None:
    y, p = _scores(300, 5)
    rng = np.random.default_rng(0)
    subtypes = np.where(y == 1, rng.choice(["bacterial", "viral"], y.size), "none")
    settings = EvaluateSettings(bootstrap_samples=20)
    decision = choose_threshold(y, p, settings)
    report = score_split(y, p, np.arange(300).astype(str), decision, settings, subtypes)
    assert {"test", "test_bacterial", "test_viral"} <= report.keys()
    assert report["test_viral"]["n"] == (y == 0).sum() + (subtypes == "viral").sum()
    flat = mlflow_metrics(report)
    assert flat["test/roc_auc"] == report["test"]["roc_auc"]
    assert flat["test/viral/sensitivity"] == report["test_viral"]["sensitivity"]
    assert flat["val/threshold"] == decision.threshold
    assert not [name for name in flat if "_ci_" in name]  # intervals go to one table instead
    table = metrics_table(report).set_index(["split", "metric"])
    assert len(table) == 3 * 10  # test and its two slices, every point metric
    low, high = report["test_bacterial"]["ci"]["roc_auc"]
    row = table.loc[("test_bacterial", "roc_auc")]
    assert (row["value"], row["ci_low"], row["ci_high"]) == (
        report["test_bacterial"]["roc_auc"],
        low,
        high,
    )


def test_saved_figures_keep_what_lies_outside_the_axes(tmp_path) -> None:  # noqa: ANN001
    """evaluation.png was clipped on the right: a legend or label outside the axes stays in."""
    from PIL import Image

    from pneumo.evaluation.plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [0, 1], label="a long legend entry placed outside the axes")
    ax.legend(loc="upper left", bbox_to_anchor=(1.05, 1.0))
    width = Image.open(_save(fig, tmp_path / "f.png", dpi=50)).size[0]
    assert width > 4 * 50 * 1.2  # wider than the nominal 4 inches: the legend is in the picture
