"""`pneumo score`: a large folder scored in chunks on Dask (the retrain-free batch job)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pneumo.cli import Command, arg, workspace_of
from pneumo.cli.predict import MODEL_ARGS


def run(args: argparse.Namespace) -> int:
    from flows.score import score_folder

    summary = score_folder(
        str(args.folder.resolve()),
        str(args.output.resolve()) if args.output else None,
        str(workspace_of(args).root),
        Path(args.params).name,
        str(args.model.resolve()) if args.model else None,
        str(args.decision.resolve()) if args.decision else None,
    )
    print(
        f"{summary['images']} images -> {summary['output']}: {summary['predicted']}; "
        f"{summary['reused_chunks']} of {summary['chunks']} chunks reused from an earlier run"
        + (f"; {summary['unreadable']} unreadable" if summary["unreadable"] else "")
    )
    return 0


COMMAND = Command(
    "score",
    help="score a large folder in chunks on a Dask cluster (resumable), into parquet or CSV",
    description="The `pneumo predict` of thousands of images: one Prefect task per "
    "score.chunk_size images on a local Dask cluster or score.dask_address; finished chunks are "
    "kept in score.work_dir, so a rerun scores only what is missing.",
    handler=run,
    arguments=(
        arg("folder", type=Path, metavar="FOLDER", help="folder of radiographs (recursive)"),
        arg(
            "--output",
            "-o",
            type=Path,
            help="table to write, .parquet or .csv (default: score.output)",
        ),
        *MODEL_ARGS,
    ),
)
