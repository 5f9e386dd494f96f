"""`pneumo dicom-pull`: score CR/DX studies already in a PACS over DICOMweb (serving/dicom/)."""

from __future__ import annotations

import argparse
import json

from pneumo.cli import Command, arg, load_settings_of, workspace_of
from pneumo.cli.dicom_listen import NODE_ARGS, SOURCE_ARGS, overrides
from pneumo.errors import PneumoError


def run(args: argparse.Namespace) -> int:
    from serving.dicom.pull import pull
    from serving.dicom.start import open_node

    if not args.study and not args.since:
        raise PneumoError("say what to score: --study UID, or --since YYYY-MM-DD")
    settings = load_settings_of(args, overrides(args, ("destination", "stow_url")))
    node = open_node(settings, workspace_of(args), args.from_workspace, args.model_version)
    try:
        summary = pull(node, args.url.rstrip("/"), args.study, args.since, not args.no_write_back)
    finally:
        node.close()
    for row in summary.scored:
        referred = f" (referred: {row['ood_reason']})" if row["ood_reason"] else ""
        print(f"{row['sop_instance_uid']}: {row['label']} p={row['probability']:.3f}{referred}")
    for row in summary.refused:
        print(f"{row['sop_instance_uid']}: refused: {row['reason']}")
    print(json.dumps({"scored": len(summary.scored), "skipped_already_scored": summary.skipped,
                      "refused": len(summary.refused), "results_delivered": summary.delivered,
                      "results_pending": summary.pending}))  # fmt: skip
    return 0 if summary.pending == 0 else 3


COMMAND = Command(
    "dicom-pull",
    help="score CR/DX radiographs already in a PACS (QIDO-RS/WADO-RS) and write the results back",
    description=(
        "Finds the CR and DX series of --study (or of the studies dated --since on) with QIDO-RS, "
        "reads each instance with WADO-RS and scores it like /predict. Instances this model "
        "version already scored are skipped. The Structured Report and Grad-CAM overlay go back "
        "to the same server by STOW-RS (unless --no-write-back) and to dicom.destination. Exit "
        "code 3 when some results could not be delivered yet (they stay queued in the store)."
    ),
    handler=run,
    arguments=(
        arg(
            "--url", required=True, help="the PACS's DICOMweb root, e.g. http://pacs:8042/dicom-web"
        ),
        arg("--study", metavar="UID", help="one study's Study Instance UID"),
        arg("--since", metavar="YYYY-MM-DD", help="every study dated this day or later"),
        arg("--no-write-back", action="store_true", help="do not STOW the results to --url"),
        *SOURCE_ARGS,
        *NODE_ARGS,
    ),
)
