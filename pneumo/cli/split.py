"""`pneumo split`: patient-disjoint, label-stratified, seeded train/val/test split."""

from __future__ import annotations

import argparse

from pneumo.cli import Command, load_settings_of, workspace_of


def run(args: argparse.Namespace) -> int:
    from pneumo.data.split import SPLIT_NAMES, split

    settings = load_settings_of(args)
    workspace = workspace_of(args)
    s = settings.split
    metrics = split(
        workspace.manifest, s.val_fraction, s.test_fraction, s.seed, s.stratify_tolerance, workspace
    )
    counts = ", ".join(f"{n} {metrics[n]['images']}" for n in SPLIT_NAMES)  # type: ignore[index]
    print(f"split ({metrics['test_source']}): {counts}; patients in two splits: 0")
    return 0


COMMAND = Command(
    "split",
    help="patient-disjoint, label-stratified, seeded train/val/test split",
    description="Keeps the dataset's test/ folder whole when present, else carves a test split; "
    "validation is carved from the training pool. Counts go to metrics/split.json.",
    handler=run,
)
