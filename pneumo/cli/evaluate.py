"""`pneumo evaluate`: the threshold chosen on val, the test split scored with bootstrap intervals."""

from __future__ import annotations

import argparse

from pneumo.cli import Command, load_settings_of, workspace_of

SHOWN = ("accuracy", "sensitivity", "specificity", "roc_auc")


def _cell(metrics: dict, intervals: dict, name: str) -> str:
    if name not in intervals:
        return f"{metrics[name]:.3f}"
    low, high = intervals[name]
    return f"{metrics[name]:.3f} [{low:.3f}-{high:.3f}]"


def run(args: argparse.Namespace) -> int:
    from pneumo.evaluate import evaluate

    report = evaluate(load_settings_of(args), workspace_of(args))
    d = report["threshold"]
    print(f"threshold {d['threshold']:.4f} ({d['rule']}, chosen on the validation split)")
    print(f"{'split':<16}{'n':>6}  " + "  ".join(f"{name:>16}" for name in SHOWN))
    for part in ("test", "test_bacterial", "test_viral"):
        if part in report:
            m = report[part]
            cells = "  ".join(f"{_cell(m, m.get('ci', {}), name):>16}" for name in SHOWN)
            print(f"{part:<16}{m['n']:>6}  {cells}")
    return 0


COMMAND = Command(
    "evaluate",
    help="choose the threshold on val, score the test split with bootstrap intervals, plot",
    description="The decision threshold follows evaluate.threshold_rule on the validation split "
    "only; test metrics (overall, bacterial, viral) go to metrics/metrics.json and plots/evaluate.",
    handler=run,
)
