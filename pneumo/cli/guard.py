"""`pneumo guard`: fit the input guard on the trained network's features and measure it."""

from __future__ import annotations

import argparse

from pneumo.cli import Command, load_settings_of, workspace_of


def run(args: argparse.Namespace) -> int:
    from pneumo.guard import guard_stage

    workspace = workspace_of(args)
    report = guard_stage(load_settings_of(args), workspace)
    print(f"guard -> {workspace.guard}; flagged: validation {report['val']['flagged']:.1%}, "
          f"non-radiographs {report['non_radiographs_flagged']:.1%}")  # fmt: skip
    for kind, values in report["kinds"].items():
        print(f"  {kind:<22}{values['flagged']:>7.1%}  ({values['n']} images)")
    return 0


COMMAND = Command(
    "guard",
    help="fit the out-of-distribution guard on the model's features; flag rates per kind",
    description="Fits a Mahalanobis detector (pytorch-ood) on the train split's network features, "
    "sets its cut-off so that at most guard.max_val_flag_rate of the validation split is flagged, "
    "and measures it on photographs, documents, noise and unusable radiographs. Writes "
    "models/guard.pt (shipped with the model) and metrics/guard.json.",
    handler=run,
)
