"""`pneumo ablation queue | report`: the recipes of ablation.yaml as DVC experiments, compared."""

from __future__ import annotations

import argparse

from pneumo.cli import Command, arg, load_settings_of, workspace_of


def queue(args: argparse.Namespace) -> int:
    from pneumo.evaluation.ablation import queue as queue_recipes

    workspace = workspace_of(args)
    names = queue_recipes(workspace.root, load_settings_of(args), args.recipes or None, args.until)
    print(f"queued {len(names)} experiments: {', '.join(names)}")
    print("run them one after the other with `pneumo ablation start` (progress: `dvc queue "
          "status`)")  # fmt: skip
    return 0


def start(args: argparse.Namespace) -> int:
    from pneumo.evaluation.ablation import start as start_queue

    print(start_queue(workspace_of(args).root) or "queue started")
    print("each experiment runs the code it was queued with; progress: `dvc queue status`, "
          "then `pneumo ablation report`")  # fmt: skip
    return 0


def report(args: argparse.Namespace) -> int:
    from pneumo.evaluation.ablation import report as write_report

    workspace = workspace_of(args)
    table = write_report(workspace.root, rescore=args.rescore)
    print(f"{len(table)} recipes -> {workspace.root / 'reports' / 'ablation.md'}")
    return 0


COMMAND = Command(
    "ablation",
    help="queue the recipes of ablation.yaml as DVC experiments; compare them in a report",
    description="queue: `dvc exp run --queue` per recipe (its params.yaml overrides, with "
    "absolute data.root and tracking.uri). start: runs them one after the other, each importing "
    "the pneumo code of its own snapshot (a plain `dvc queue start` would run the installed, "
    "editable package as it is now). report: "
    "reports/ablation.md and .csv from `dvc exp show`: stress battery, validation, carved test "
    "with intervals, training minutes (from each experiment's MLflow run).",
    actions=(
        Command("queue", help="queue every recipe (or those named)", handler=queue,
                arguments=(arg("recipes", nargs="*", metavar="RECIPE", help="recipe names"),
                           arg("--until", metavar="STAGE", help="run each experiment only up "
                               "to this dvc.yaml stage, e.g. stress (what the report reads)"))),
        Command("start", help="run the queued experiments one after the other, each on the code "
                "it was queued with (`dvc queue start -j 1` with PYTHONPATH=.)", handler=start),
        Command("report", help="write reports/ablation.md from the finished experiments",
                handler=report,
                arguments=(arg("--rescore", action="store_true",
                               help="the counterfactual columns from this code's battery, run "
                               "on each experiment's stored model (no retraining)"),)),
    ),
)  # fmt: skip
