"""`pneumo feedback export DEST`: reviewed cases whose images were kept, as a Kermany folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from pneumo.cli import Command, arg, load_settings_of, workspace_of


def export(args: argparse.Namespace) -> int:
    from pneumo.monitor.export import export_confirmed
    from pneumo.monitor.images import ImageKeeper
    from pneumo.monitor.store import PredictionStore, resolve_url

    settings, root = load_settings_of(args), workspace_of(args).root
    monitor = settings.monitor
    store = PredictionStore(resolve_url(monitor.store_url, root), monitor.store_schema)
    keeper = ImageKeeper(root / monitor.image_dir, monitor.image_retention_days,
                         monitor.max_kept_images)  # fmt: skip
    result = export_confirmed(store, keeper, args.dest, args.append)
    written = ", ".join(f"{n} {label}" for label, n in sorted(result.written.items())) or "none"
    print(f"exported to {args.dest}/train: {written}; already there: {result.already_there}")
    for reason, n in result.skipped.items():
        print(f"  skipped {n}: {reason}")
    return 0


COMMAND = Command(
    "feedback",
    help="clinicians' feedback on served predictions: export the confirmed cases for training",
    actions=(
        Command(
            "export",
            help="write reviewed cases whose images were kept to DEST/train/{NORMAL,PNEUMONIA}/",
            description="Labels are the reviewers' (the latest feedback per image); file names "
            "fb-<patient>-<image> give `pneumo ingest` a patient id and mark the source "
            "'feedback'. Needs monitor.keep_images: true while serving. Refuses a non-empty DEST "
            "unless --append. To train on them: export into data.root with --append (or merge "
            "DEST into it) and rerun `make run`.",
            handler=export,
            arguments=(
                arg("dest", type=Path, metavar="DEST", help="the folder to write"),
                arg("--append", action="store_true", help="add to a folder that has files"),
            ),
        ),
    ),
)
