"""One pipeline run per workspace: DVC's own lock must never be fought over by two retrains."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pneumo.errors import PneumoError


class RunInProgressError(PneumoError):
    """Another retrain holds this workspace."""


@contextmanager
def workspace_lock(root: Path, holder: str) -> Iterator[None]:
    """Hold an exclusive, non-blocking lock on ``root``; refuse, naming the holder, if taken.

    The kernel drops the lock when the holder dies, so a crashed run never blocks the next one.
    """
    path = Path(root) / ".pneumo" / "retrain.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            try:
                info = json.loads(handle.read() or "{}")
            except json.JSONDecodeError:
                info = {}
            raise RunInProgressError(
                f"a retrain is already running on {Path(root).resolve()}: {info.get('holder', 'unknown')} "
                f"(pid {info.get('pid', '?')}, since {info.get('since', '?')}); wait for it or stop it"
            ) from None
        handle.seek(0)
        handle.truncate()
        since = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        handle.write(json.dumps({"holder": holder, "pid": os.getpid(), "since": since}))
        handle.flush()
        yield
    finally:
        handle.close()
