"""`pneumo reference`: the validation split as the monitor sees requests (models/reference.parquet)."""

from __future__ import annotations

import argparse

from pneumo.cli import Command, load_settings_of, workspace_of


def run(args: argparse.Namespace) -> int:
    from pneumo.monitor.reference import reference_stage

    workspace = workspace_of(args)
    about = reference_stage(load_settings_of(args), workspace)
    print(
        f"reference -> {workspace.monitor_reference}: {about['n']} validation images, "
        f"positive rate {about['positive_rate']:.1%}, out of distribution "
        f"{about['ood_rate']:.1%}, referred {about['referral_rate']:.1%}"
    )
    return 0


COMMAND = Command(
    "reference",
    help="input statistics and predictions of the validation split: the monitor's reference",
    description="Runs the evaluated model (with its guard) on the validation split as the "
    "service would and writes, per image, the pixel statistics the prediction log records, the "
    "probability, call, referral and out-of-distribution flag to models/reference.parquet. The "
    "monitor flow compares a window of the log with it.",
    handler=run,
)
