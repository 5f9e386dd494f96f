"""`pneumo schedule`: the retrain flow as a Prefect deployment on a cron schedule, served here."""

from __future__ import annotations

import argparse

from pneumo.cli import Command, arg, load_settings_of, workspace_of


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from flows.retrain import DEPLOYMENT_NAME, serve

    load_settings_of(args)  # refuse a broken params.yaml before registering anything
    root = workspace_of(args).root
    print(
        f"serving deployment 'retrain/{DEPLOYMENT_NAME}' on cron '{args.cron}' for {root}; "
        "Ctrl-C stops"
    )
    serve(str(root), args.cron, Path(args.params).name)
    return 0


COMMAND = Command(
    "schedule",
    help="register the retrain flow as a Prefect deployment on a cron schedule and serve it",
    description="Uses Prefect's ephemeral API by default, a Prefect server when PREFECT_API_URL "
    "is set. Runs until stopped; each scheduled run validates, retrains, gates and packages.",
    handler=run,
    arguments=(
        arg(
            "--cron",
            default="0 3 * * 1",
            help="cron expression (default: %(default)s, Mondays 03:00)",
        ),
    ),
)
