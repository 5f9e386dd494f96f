"""`pneumo guard`: fit the scope check on the trained network's features and measure it."""

from __future__ import annotations

import argparse
from pathlib import Path

from pneumo.cli import Command, load_settings_of, workspace_of


def run(args: argparse.Namespace) -> int:
    from pneumo.evaluation.guard_stage import guard_stage

    settings, workspace = load_settings_of(args), workspace_of(args)
    root = Path(settings.data.scope_root)
    root = root if root.is_absolute() else Path(args.params).resolve().parent / root
    report = guard_stage(settings, workspace, root)
    print(f"guard -> {workspace.guard}; flagged: validation {report['val']['flagged']:.1%}, "
          f"non-radiographs {report['non_radiographs_flagged']:.1%}")  # fmt: skip
    for kind, values in report["kinds"].items():
        print(f"  {kind:<26}{values['flagged']:>7.1%}  ({values['n']} images)")
    scope = report["scope"]
    if not scope["n"]:
        print(f"  no out-of-scope radiographs in {root}: the scope check is one-class only")
    for source, values in scope.get("sources", {}).items():
        print(
            f"  {values['kind'] + '/' + source:<26}{values['flagged_held_out']:>7.1%}  "
            f"({values['n']} images, flagged with this source held out; "
            f"{values['called_pneumonia_unflagged']:.1%} called pneumonia unflagged)"
        )
    return 0


COMMAND = Command(
    "guard",
    help="fit the scope check on the model's features; flag rates per kind and source",
    description="Fits the scope check (pneumo/inference/scope.py) on the train split's network features: a "
    "Mahalanobis detector on block means (pytorch-ood), a one-class layout Gaussian and, when "
    "data.scope_root holds real out-of-scope radiographs (adults, laterals, other body parts), a "
    "classifier that names what an image is. Its cut-off flags at most guard.max_val_flag_rate "
    "of the validation split. Measures it on photographs, documents, noise, unusable radiographs "
    "and each real source held out. Writes models/guard.pt (shipped with the model), "
    "metrics/guard.json and, with a real set, reports/scope.md.",
    handler=run,
)
