"""`pneumo explain`: Grad-CAM and activation-map grids for right and wrong test predictions."""

from __future__ import annotations

import argparse

from pneumo.cli import Command, load_settings_of, workspace_of


def run(args: argparse.Namespace) -> int:
    from pneumo.evaluation.explain_stage import explain_workspace

    written = explain_workspace(load_settings_of(args), workspace_of(args))
    print("explanations: " + ", ".join(str(p) for p in written))
    return 0


COMMAND = Command(
    "explain",
    help="Grad-CAM and activation-map grids for correct and wrong test predictions",
    description="Writes PNG grids to plots/explain and logs them to the training's MLflow run.",
    handler=run,
)
