"""`pneumo params`: show params.yaml as validated settings, or set keys in it (comments kept)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pneumo.cli import Command, arg, load_settings_of
from pneumo.errors import PneumoError


def run(args: argparse.Namespace) -> int:
    from pneumo.config.params_file import set_param

    if args.action == "show":
        print(load_settings_of(args).model_dump_json(indent=2, by_alias=True))
        return 0
    for assignment in args.assignments:
        if "=" not in assignment:
            raise PneumoError(f"'{assignment}' is not KEY=VALUE, e.g. data.root=/data/chest_xray")
        key, value = assignment.split("=", 1)
        changed = set_param(Path(args.params), key, value)
        print(f"{key} = {value}" + ("" if changed else " (unchanged)"))
    return 0


COMMAND = Command(
    "params",
    help="show params.yaml as validated settings, or set keys in it",
    handler=run,
    arguments=(
        arg("action", choices=["show", "set"]),
        arg("assignments", nargs="*", metavar="KEY=VALUE", help="e.g. preprocess.image_size=96"),
    ),
)
