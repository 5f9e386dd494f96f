"""`pneumo retrain`: the retrain flow once (flows/retrain.py), what `make run` runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pneumo.cli import Command, workspace_of
from pneumo.errors import PneumoError


def run(args: argparse.Namespace) -> int:
    from flows.local_api import prefect_api, prefect_console
    from flows.retrain import decision_markdown, exit_now, retrain, warm_up

    prefect_console()
    root = workspace_of(args).root  # params.yaml is read by the flow: a bad one fails its run
    try:
        with prefect_api(root / ".pneumo" / "prefect-server.log", warm_up=warm_up):
            result = retrain(workspace=str(root), params=Path(args.params).name)
    except PneumoError as exc:
        print(f"pneumo retrain: error: {exc}", file=sys.stderr)
        exit_now(1)
    print(decision_markdown(result["decision"], result["stages"], result["bento"], root,
                            result.get("minutes")))  # fmt: skip
    exit_now(0)  # without the interpreter's slow teardown of torch, MLflow and Prefect


COMMAND = Command(
    "retrain",
    help="the retrain flow once: validate, dvc repro, gate, register, package (`make run`)",
    description=(
        "Runs the Prefect retrain flow on this workspace: each DVC stage that may change is one "
        "task, then the promotion gate, registration and packaging, and a markdown artifact "
        "with the decision. Uses a local Prefect server of its own unless PREFECT_API_URL is "
        "set. On a schedule: `pneumo schedule retrain`."
    ),
    handler=run,
)
