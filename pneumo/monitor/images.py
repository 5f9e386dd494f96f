"""Kept uploads (``monitor.keep_images: true`` only): content-addressed files with a retention limit.

Clinical images are sensitive, so none is kept by default. When they are, each is stored once
under its sha256 (``<image_dir>/ab/abcd….jpeg``), whatever the number of requests that sent it,
and files older than ``monitor.image_retention_days`` or beyond the newest
``monitor.max_kept_images`` are deleted.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from pneumo.workspace import atomic_path

log = logging.getLogger(__name__)

SUFFIXES = {"JPEG": ".jpeg", "PNG": ".png", "DICOM": ".dcm"}


class ImageKeeper:
    """The folder of kept uploads."""

    def __init__(self, root: Path, retention_days: float, max_images: int) -> None:
        self.root = Path(root)
        self.retention_s = retention_days * 86400
        self.max_images = max_images

    def path(self, sha256: str, image_format: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}{SUFFIXES[image_format]}"

    def keep(self, data: bytes, sha256: str, image_format: str) -> Path:
        """Store the upload unless the same bytes are already there."""
        path = self.path(sha256, image_format)
        if path.is_file():
            os.utime(path)  # a new request for it restarts its retention
        else:
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
        return path

    def find(self, sha256: str) -> Path | None:
        """The kept file of these bytes, or None (never kept, or deleted by retention)."""
        for image_format in SUFFIXES:
            path = self.path(sha256, image_format)
            if path.is_file():
                return path
        return None

    def prune(self, now: float | None = None) -> int:
        """Delete files past the retention age, then the oldest beyond the count limit."""
        now = time.time() if now is None else now
        files = [p for p in self.root.glob("*/*") if p.is_file() and not p.name.startswith(".")]
        aged = sorted(((p.stat().st_mtime, p) for p in files), reverse=True)
        doomed = [p for mtime, p in aged if now - mtime > self.retention_s]
        fresh = [p for mtime, p in aged if now - mtime <= self.retention_s]
        doomed += fresh[self.max_images :]
        for path in doomed:
            path.unlink(missing_ok=True)
        if doomed:
            log.info("deleted %d kept images (retention limit)", len(doomed))
        return len(doomed)
