"""`pneumo preprocess`: decode every image once into uint8 arrays."""

from __future__ import annotations

import argparse

from pneumo.cli import Command, data_root_of, load_settings_of, workspace_of


def run(args: argparse.Namespace) -> int:
    from pneumo.data.preprocess import preprocess

    settings = load_settings_of(args)
    workspace = workspace_of(args)
    counts = preprocess(
        workspace.split,
        data_root_of(args, settings),
        settings.preprocess.image_size,
        workspace,
        settings.preprocess.workers,
    )
    print(f"arrays at {settings.preprocess.image_size} px: {counts} -> {workspace.arrays_dir}")
    return 0


COMMAND = Command(
    "preprocess",
    help="decode every image once into uint8 arrays at preprocess.image_size",
    description="Grayscale, resized, one .npz per split plus train-only statistics.",
    handler=run,
)
