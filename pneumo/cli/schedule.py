"""`pneumo schedule [retrain|monitor] --cron ...`: a flow as a Prefect deployment on a cron
schedule, served here."""

from __future__ import annotations

import argparse

from pneumo.cli import Command, arg, load_settings_of, workspace_of

DEFAULT_CRONS = {"retrain": "0 3 * * 1", "monitor": "0 * * * *"}


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from flows.deploy import serve_on_schedule

    load_settings_of(args)  # refuse a broken params.yaml before registering anything
    root = workspace_of(args).root
    cron = args.cron or DEFAULT_CRONS[args.flow]
    print(f"serving the {args.flow} flow's deployment on cron '{cron}' for {root}; Ctrl-C stops")
    serve_on_schedule(args.flow, root, cron, Path(args.params).name)
    return 0


COMMAND = Command(
    "schedule",
    help="register the retrain (or monitor) flow as a Prefect deployment on a cron schedule",
    description="Uses Prefect's ephemeral API by default, a Prefect server when PREFECT_API_URL "
    "is set. Runs until stopped. retrain (the default) validates, retrains, gates and packages; "
    "monitor compares the recent prediction log with the validation reference.",
    handler=run,
    arguments=(
        arg(
            "flow",
            nargs="?",
            choices=sorted(DEFAULT_CRONS),
            default="retrain",
            help="which flow (default: %(default)s)",
        ),  # fmt: skip
        arg(
            "--cron",
            help="cron expression (default: retrain '0 3 * * 1', Mondays 03:00; monitor "
            "'0 * * * *', hourly)",
        ),
    ),
)
