"""`pneumo ingest`: the dataset folder -> data/manifest.parquet and the quarantine report."""

from __future__ import annotations

import argparse
from pathlib import Path

from pneumo.cli import Command, arg, data_root_of, load_settings_of, workspace_of


def run(args: argparse.Namespace) -> int:
    from pneumo.data.ingest import ingest

    overrides = {"data.root": str(args.data)} if args.data else None
    settings = load_settings_of(args, overrides)
    ingest(
        data_root_of(args, settings),
        workspace_of(args),
        settings.ingest.max_quarantine_fraction,
        settings.ingest.workers,
    )
    # The library's INFO line already says it, with the manifest's path: no second copy here.
    return 0


COMMAND = Command(
    "ingest",
    help="walk a Kermany-layout folder and write the manifest (parquet) and quarantine report",
    description="Reads <root>/{train,val,test}/{NORMAL,PNEUMONIA}/*.{jpeg,jpg,png} on every core. "
    "Unusable files are quarantined with a reason; the run fails above "
    "ingest.max_quarantine_fraction.",
    handler=run,
    arguments=(
        arg("--data", type=Path, help="dataset folder (default: data.root in params.yaml)"),
    ),
)
