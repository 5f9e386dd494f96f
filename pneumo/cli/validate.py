"""`pneumo validate`: the manifest against the Great Expectations data contract."""

from __future__ import annotations

import argparse

from pneumo.cli import Command, load_settings_of, workspace_of


def run(args: argparse.Namespace) -> int:
    from pneumo.data.validate import validate

    settings = load_settings_of(args)
    workspace = workspace_of(args)
    validate(workspace.manifest, settings.validate_, workspace)
    print(f"data contract passed; Data Docs: {workspace.data_docs / 'index.html'}")
    return 0


COMMAND = Command(
    "validate",
    help="check the manifest against the Great Expectations data contract and build Data Docs",
    description="Runs the GX checkpoint; exits non-zero with a summary of every failed expectation.",
    handler=run,
)
