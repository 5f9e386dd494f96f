"""Walk a Kermany-layout folder and write the manifest: one row per image, nothing dropped silently.

Files that cannot be used (corrupt, truncated, not an image, in an unknown class folder) go to a
quarantine report with the reason; the run fails when they exceed a configurable fraction.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image
from tqdm import tqdm

from pneumo.data.kermany import (
    CLASSES,
    IMAGE_SUFFIXES,
    SPLITS,
    parse_patient_id,
    parse_source,
    parse_subtype,
)
from pneumo.data.preprocess import ImageDecodeError, decode_radiograph
from pneumo.errors import DatasetError
from pneumo.workspace import Workspace, atomic_path

log = logging.getLogger(__name__)

MANIFEST_COLUMNS: tuple[str, ...] = (
    "path", "label", "source_split", "patient_id", "subtype",
    "width", "height", "mode", "bytes", "sha256", "source",
)  # fmt: skip
QUARANTINE_COLUMNS: tuple[str, ...] = ("path", "reason")
# Side of the check decode: small enough to be cheap, every byte of the scan still decoded.
INSPECT_SIZE = 16


@dataclass(frozen=True)
class Candidate:
    path: str  # relative to the dataset root, POSIX separators
    label: str
    source_split: str


@dataclass(frozen=True)
class IngestResult:
    images: int
    quarantined: int
    unparsed_patient_ids: int


def _check_root(root: Path) -> None:
    if not root.exists():
        raise DatasetError(
            f"dataset folder {root} does not exist: pass DATA=<folder> or set data.root"
        )
    if not root.is_dir():
        raise DatasetError(
            f"dataset path {root} is a file: point data.root at the folder above train/"
        )
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise DatasetError(
            f"dataset folder {root} is empty: download the Kermany chest_xray set into it"
        )
    if not (root / "train").is_dir():
        nested = [p.name for p in entries if p.is_dir() and (p / "train").is_dir()]
        hint = f" (did you mean {root / nested[0]}?)" if nested else ""
        raise DatasetError(
            f"{root} is not a Kermany-layout folder: expected {root}/train/{{NORMAL,PNEUMONIA}}{hint}"
        )


def scan_dataset(root: Path) -> tuple[list[Candidate], list[dict[str, str]]]:
    """List image candidates and quarantine every file that sits where no image should be."""
    root = Path(root)
    _check_root(root)
    candidates: list[Candidate] = []
    quarantine: list[dict[str, str]] = []

    def reject(path: Path, reason: str) -> None:
        quarantine.append({"path": path.relative_to(root).as_posix(), "reason": reason})

    for top in sorted(root.iterdir()):
        if top.name.startswith("."):
            continue
        if not top.is_dir():
            reject(top, "file outside the split folders (expected train/, val/ or test/)")
            continue
        if top.name not in SPLITS:
            for f in sorted(
                p for p in top.rglob("*") if p.is_file() and not p.name.startswith(".")
            ):
                reject(
                    f, f"unknown split folder '{top.name}' (expected one of {', '.join(SPLITS)})"
                )
            continue
        for class_dir in sorted(top.iterdir()):
            if class_dir.name.startswith("."):
                continue
            if not class_dir.is_dir():
                reject(class_dir, "file outside the class folders (expected NORMAL/ or PNEUMONIA/)")
                continue
            files = sorted(
                p for p in class_dir.rglob("*") if p.is_file() and not p.name.startswith(".")
            )
            if class_dir.name not in CLASSES:
                for f in files:
                    reject(
                        f, f"unknown class folder '{class_dir.name}' (expected NORMAL or PNEUMONIA)"
                    )
                continue
            for f in files:
                if f.parent != class_dir:
                    reject(f, "nested folder inside a class folder")
                elif f.suffix.lower() not in IMAGE_SUFFIXES:
                    reject(
                        f, f"not an image file type ('{f.suffix}'; expected .jpeg, .jpg or .png)"
                    )
                else:
                    rel = f.relative_to(root).as_posix()
                    candidates.append(Candidate(rel, class_dir.name, top.name))
    return candidates, quarantine


def inspect_image(path: Path) -> dict[str, object]:
    """Hash and fully decode one file; raises ImageDecodeError/OSError when it is not usable.

    The decode is :func:`decode_radiograph` itself, at a small size: ingest quarantines exactly
    the files that preprocessing and serving would refuse (truncated, corrupt scan, bad CRC).
    """
    data = path.read_bytes()
    if not data:
        raise ImageDecodeError("empty file")
    with Image.open(io.BytesIO(data)) as img:
        width, height, mode, fmt = img.width, img.height, img.mode, img.format
    if fmt not in ("JPEG", "PNG"):
        raise ImageDecodeError(f"unsupported image format {fmt}")
    decode_radiograph(data, INSPECT_SIZE)
    return {
        "width": width,
        "height": height,
        "mode": mode,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def _inspect_job(args: tuple[str, str]) -> tuple[str, dict[str, object] | None, str | None]:
    root, rel = args
    try:
        return rel, inspect_image(Path(root) / rel), None
    except (ImageDecodeError, OSError, ValueError, SyntaxError) as exc:
        reason = str(exc) or type(exc).__name__
        return rel, None, f"unreadable image: {reason}"


DUPLICATE_REASON = "exact duplicate of "


def drop_exact_duplicates(manifest: pd.DataFrame) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Keep the first path of each byte-identical image; quarantine the copies, naming the kept one.

    A copy under another patient would leak across the patient-disjoint split, and a copy under
    the same patient silently double-weights it in training.
    """
    first_path = manifest.groupby("sha256")["path"].transform("first")
    copies = manifest["path"] != first_path
    reasons = [
        {"path": path, "reason": f"{DUPLICATE_REASON}{kept}"}
        for path, kept in zip(manifest.loc[copies, "path"], first_path[copies], strict=True)
    ]
    return manifest[~copies].reset_index(drop=True), reasons


def build_manifest(root: Path, workers: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Return (manifest, quarantine, number of file names whose patient id could not be parsed)."""
    candidates, quarantine = scan_dataset(root)
    by_path = {c.path: c for c in candidates}
    workers = workers or os.cpu_count() or 1
    jobs = [(str(root), c.path) for c in candidates]
    rows: list[dict[str, object]] = []
    unparsed = 0
    bar = tqdm(total=len(jobs), desc="ingest", unit="img", disable=None)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        chunksize = max(1, min(64, len(jobs) // (workers * 8) or 1))
        for rel, info, error in pool.map(_inspect_job, jobs, chunksize=chunksize):
            bar.update()
            if error is not None:
                quarantine.append({"path": rel, "reason": error})
                continue
            cand = by_path[rel]
            stem = Path(rel).stem
            patient_id, parsed = parse_patient_id(stem)
            unparsed += not parsed
            rows.append(
                {
                    "path": rel,
                    "label": cand.label,
                    "source_split": cand.source_split,
                    "patient_id": patient_id,
                    "subtype": parse_subtype(stem, cand.label),
                    **(info or {}),
                    "source": parse_source(stem),
                }
            )
    bar.close()
    manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    manifest = manifest.sort_values("path").reset_index(drop=True)
    manifest, duplicates = drop_exact_duplicates(manifest)
    quarantine.extend(duplicates)
    manifest = manifest.astype({"width": "int64", "height": "int64", "bytes": "int64"})
    quarantine_frame = pd.DataFrame(quarantine, columns=list(QUARANTINE_COLUMNS))
    return manifest, quarantine_frame.sort_values("path").reset_index(drop=True), unparsed


def ingest(
    root: Path,
    workspace: Workspace = Workspace(),
    max_quarantine_fraction: float = 0.01,
    workers: int = 0,
) -> IngestResult:
    """Write the manifest and the quarantine report; fail if too much of the folder is unusable."""
    root = Path(root)
    manifest, quarantine, unparsed = build_manifest(root, workers)
    total = len(manifest) + len(quarantine)
    if manifest.empty:
        quarantine.to_csv(workspace.rejected_quarantine, index=False)
        raise DatasetError(
            f"no usable image in {root} ({len(quarantine)} files quarantined, see "
            f"{workspace.rejected_quarantine}): expected train/{{NORMAL,PNEUMONIA}}/*.jpeg"
        )
    # Duplicates are reported but are not damage: only unusable files count towards the limit.
    unusable = quarantine[~quarantine["reason"].str.startswith(DUPLICATE_REASON)]
    fraction = len(unusable) / total
    if fraction > max_quarantine_fraction:
        workspace.rejected_quarantine.parent.mkdir(parents=True, exist_ok=True)
        quarantine.to_csv(workspace.rejected_quarantine, index=False)
        first = unusable.iloc[0]
        raise DatasetError(
            f"{len(unusable)} of {total} files ({fraction:.1%}) are unusable, above "
            f"ingest.max_quarantine_fraction={max_quarantine_fraction}: e.g. {first.path}: "
            f"{first.reason}; fix the folder or see {workspace.rejected_quarantine}"
        )
    if unparsed:
        log.warning(
            "%d file names follow no known patient pattern; each counts as its own patient",
            unparsed,
        )
    for row in unusable.itertuples():
        log.warning("quarantined %s: %s", row.path, row.reason)
    if len(quarantine) > len(unusable):
        log.info(
            "%d exact duplicate copies set aside, see %s",
            len(quarantine) - len(unusable),
            workspace.quarantine,
        )
    with atomic_path(workspace.manifest) as tmp:
        manifest.to_parquet(tmp, index=False)
    with atomic_path(workspace.quarantine) as tmp:
        quarantine.to_csv(tmp, index=False)
    log.info(
        "manifest: %d images, %d quarantined -> %s",
        len(manifest),
        len(quarantine),
        workspace.manifest,
    )
    return IngestResult(
        images=len(manifest), quarantined=len(quarantine), unparsed_patient_ids=unparsed
    )
