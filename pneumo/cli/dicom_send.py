"""`pneumo dicom-send`: send radiograph files to a DICOM node by C-STORE (serving/dicom/send.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pneumo.cli import Command, arg
from pneumo.errors import PneumoError


def run(args: argparse.Namespace) -> int:
    from pydicom.uid import generate_uid

    from serving.dicom.send import Destination, read_instance, store

    destination = Destination.parse(args.to)
    study = args.study_uid or generate_uid()
    datasets = [read_instance(Path(p), study) for p in args.files]
    statuses = store(datasets, destination)
    failed = 0
    for path, ds, status in zip(args.files, datasets, statuses, strict=True):
        word = "stored" if status == 0 else f"failed (status 0x{status:04X})"
        failed += status != 0
        print(f"{path}: {word} as {ds.SOPInstanceUID} in study {ds.StudyInstanceUID}")
    if failed:
        raise PneumoError(f"{failed} of {len(statuses)} instances were refused by {destination}")
    return 0


COMMAND = Command(
    "dicom-send",
    help="send radiographs (DICOM, or JPEG/PNG wrapped as DX) to a DICOM node by C-STORE",
    description=(
        "A small storescu: DICOM files go as they are; a JPEG or PNG is wrapped as a Digital "
        "X-Ray instance (a grayscale JPEG keeps its bytes). JPEG/PNG files sent together share "
        "one new study unless --study-uid names one."
    ),
    handler=run,
    arguments=(
        arg("files", nargs="+", metavar="FILE", help="DICOM, JPEG or PNG radiographs"),
        arg("--to", required=True, metavar="AE@HOST:PORT", help="e.g. PNEUMO@127.0.0.1:11112"),
        arg("--study-uid", metavar="UID", help="the study the wrapped files belong to"),
    ),
)
