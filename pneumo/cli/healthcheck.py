"""`pneumo healthcheck`: the healthcheck flow here (what a work pool's worker runs)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pneumo.cli import Command, workspace_of


def run(args: argparse.Namespace) -> int:
    from flows.healthcheck import healthcheck
    from flows.local_api import prefect_console

    prefect_console()

    report = healthcheck(workspace=str(workspace_of(args).root), params=Path(args.params).name)
    print(json.dumps(report, indent=2))
    return 0


COMMAND = Command(
    "healthcheck",
    help="the healthcheck flow: can this machine run pneumo (imports, params.yaml, data, MLflow)",
    description=(
        "Runs the Prefect healthcheck flow in this process and prints what it found; on a work "
        "pool: `prefect deployment run healthcheck/pneumo-healthcheck`."
    ),
    handler=run,
)
