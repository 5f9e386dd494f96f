"""`pneumo compare`: baselines trained and scored on the same split, beside published results."""

from __future__ import annotations

import argparse

from pneumo.cli import Command, load_settings_of, workspace_of


def run(args: argparse.Namespace) -> int:
    from pneumo.training.baselines import compare, to_markdown

    workspace = workspace_of(args)
    table = compare(load_settings_of(args), workspace)
    print(to_markdown(table))
    print(f"written to {workspace.comparison} and {workspace.comparison.with_suffix('.csv')}")
    return 0


COMMAND = Command(
    "compare",
    help="train and score baselines (logistic regression, the paper's CNNs) beside published "
    "results",
    description="Same split, same threshold rule as the default model; writes "
    "reports/comparison.md and .csv and logs them to MLflow. Takes minutes: it trains one CNN "
    "per compare.paper_archs.",
    handler=run,
)
