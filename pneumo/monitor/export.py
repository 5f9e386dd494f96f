"""Confirmed cases back into training: reviewed predictions whose images were kept, written as a
Kermany-layout folder that `pneumo ingest` reads like any other.

``DEST/train/{NORMAL,PNEUMONIA}/fb-<patient key>-<image key>.<ext>``: the label is the
reviewer's (the latest feedback of the image), the patient key a hash of the site's patient id
(or of the request, when none was sent) so that ingest parses a patient id and the split keeps a
patient's images together, and the name marks the manifest row's source as ``feedback``
(pneumo/data/kermany.py). DICOM uploads are written as PNG of the decoded image. To train on
them, export into the dataset folder itself with ``--append`` (or merge DEST into it) and rerun
the pipeline: one data root, re-ingested.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pneumo.data.kermany import feedback_name
from pneumo.errors import PneumoError
from pneumo.monitor.images import ImageKeeper
from pneumo.monitor.store import PredictionStore
from pneumo.workspace import atomic_path

log = logging.getLogger(__name__)


class ExportError(PneumoError):
    """The export cannot be written where it was asked to."""


@dataclass
class ExportResult:
    written: Counter[str] = field(default_factory=Counter)  # per label
    already_there: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # per reason


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def export_confirmed(
    store: PredictionStore, keeper: ImageKeeper, dest: Path, append: bool = False
) -> ExportResult:
    """Write every reviewed, kept image into ``dest``; refuse a non-empty ``dest`` unless
    ``append`` (then files already there are left as they are)."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()) and not append:
        raise ExportError(f"{dest} is not empty: choose an empty folder, or pass --append to add "
                          "the confirmed cases to it")  # fmt: skip
    rows = store.predictions_between()
    reviewed = rows[rows["reviewed_label"].notna()]
    result = ExportResult()
    for sha, group in reviewed.groupby("image_sha256", sort=True):
        labels = set(group["reviewed_label"])
        if len(labels) > 1:
            result.skipped["reviewers disagree across requests"] += 1
            continue
        if not group["image_kept"].astype(bool).any():
            result.skipped["image not kept (monitor.keep_images was off)"] += 1
            continue
        source = keeper.find(str(sha))
        if source is None:
            result.skipped["image deleted by the retention limit"] += 1
            continue
        row = group.iloc[-1]
        patient = row["patient_id"] if isinstance(row["patient_id"], str) else row["request_id"]
        label = labels.pop()
        target = _write(source, dest / "train" / label, feedback_name(_key(patient), str(sha)))
        if target is None:
            result.already_there += 1
        else:
            result.written[label] += 1
    log.info("exported %d confirmed cases to %s (%d already there, skipped: %s)",
             sum(result.written.values()), dest, result.already_there, dict(result.skipped))  # fmt: skip
    return result


def _write(source: Path, folder: Path, stem: str) -> Path | None:
    """Copy a kept JPEG or PNG as it is; a DICOM as a PNG of its decoded image."""
    suffix = ".png" if source.suffix == ".dcm" else source.suffix
    target = folder / f"{stem}{suffix}"
    if target.exists():
        return None
    with atomic_path(target) as tmp:
        if source.suffix == ".dcm":
            from pneumo.data.dicom import dicom_to_image

            dicom_to_image(source.read_bytes()).save(tmp, format="PNG")
        else:
            tmp.write_bytes(source.read_bytes())
    return target
