"""`pneumo dicom-pull`: score radiographs already in the PACS, over DICOMweb.

QIDO-RS finds the CR and DX series (of one study, or of the studies since a date), WADO-RS
reads each instance, and each goes through :class:`DicomNode` like a received one; an instance
this model version already scored is skipped. The results are queued for the configured
destinations and, unless told otherwise, written back to the same DICOMweb server (STOW-RS);
the command waits until they are delivered or have failed once (they stay queued for the
listener's outbox or the next pull).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from serving.dicom.node import DicomNode, Refusal
from serving.dicom.results import part10

log = logging.getLogger("pneumo.dicom")

RADIOGRAPH_MODALITIES = ("CR", "DX")


@dataclass
class PullSummary:
    """What one pull did, per instance found."""

    scored: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    refused: list[dict[str, str]] = field(default_factory=list)
    delivered: int = 0
    pending: int = 0


def _value(item: dict[str, Any], tag: str) -> str | None:
    values = item.get(tag, {}).get("Value")
    return str(values[0]) if values else None


def find_series(client: Any, study: str | None, since: str | None) -> list[tuple[str, str]]:
    """(study, series) UIDs of CR/DX series: of ``study``, or of studies dated ``since`` on."""
    found: list[tuple[str, str]] = []
    for modality in RADIOGRAPH_MODALITIES:
        filters: dict[str, Any] = {"Modality": modality}
        if since:
            filters["StudyDate"] = f"{since.replace('-', '')}-"
        for item in client.search_for_series(study_instance_uid=study, search_filters=filters):
            study_uid, series_uid = _value(item, "0020000D"), _value(item, "0020000E")
            if study_uid and series_uid and (study_uid, series_uid) not in found:
                found.append((study_uid, series_uid))
    return found


def pull(
    node: DicomNode, url: str, study: str | None = None, since: str | None = None,
    write_back: bool = True,
) -> PullSummary:  # fmt: skip
    """Score every CR/DX instance found (see the module's docstring)."""
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url)
    if write_back and f"stow:{url}" not in node.outbox.targets:
        node.outbox.targets.append(f"stow:{url}")
    summary = PullSummary()
    version = str(node.model_info["version"])
    for study_uid, series_uid in find_series(client, study, since):
        for item in client.search_for_instances(study_uid, series_uid):
            sop_uid = _value(item, "00080018")
            if not sop_uid:
                continue
            if node.outbox.scored(sop_uid, version):
                summary.skipped += 1
                continue
            dataset = client.retrieve_instance(study_uid, series_uid, sop_uid)
            try:
                scored = node.score(part10(dataset), "dicomweb", url)
            except Refusal as refusal:
                log.warning("refused %s: %s: %s", sop_uid, refusal.code, refusal.reason)
                summary.refused.append({"sop_instance_uid": sop_uid, "reason": refusal.reason})
                continue
            summary.scored.append({"sop_instance_uid": sop_uid, "request_id": scored.request_id,
                                   **{k: scored.prediction[k] for k in
                                      ("label", "probability", "refer_to_radiologist",
                                       "ood_reason")}})  # fmt: skip
    summary.delivered, _ = node.outbox.deliver_due()
    summary.pending = node.outbox.pending()
    return summary
