"""DVC stages as Prefect tasks: one task per stage, its output streamed into the task's log.

`dvc status` says which stages changed; from the first of them on, each stage is one task running
`dvc repro --single-item STAGE` (DVC still skips a stage whose inputs did not change). Training
appends one JSON line per epoch to a progress file (``PNEUMO_PROGRESS``, see pneumo/cli/train.py),
which the task turns into a Prefect progress artifact and a progress bar on the terminal.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from tqdm import tqdm

from pneumo.errors import ContractError, PneumoError
from pneumo.workspace import PROGRESS_ENV, Workspace

RAN, SKIPPED, RESTORED, FAILED = (
    "ran",
    "skipped (unchanged)",
    "restored from the run cache",
    "failed",
)
# DVC's advice after every stage that changed dvc.lock: noise in a run log, repeated per stage.
HINT_START = "To track the changes with git, run:"
HINT_END = "dvc config core.autostage true"
DROPPED = ("Use `dvc push` to send your updates to remote storage.",)


class StageFailedError(PneumoError):
    """A `dvc repro` stage failed for a reason a retry will not fix."""


def pipeline_stages(root: Path) -> list[str]:
    """The stages of dvc.yaml in the order it lists them (data flows down the file)."""
    return list(yaml.safe_load((root / "dvc.yaml").read_text())["stages"])


def dvc_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def dvc_env(**extra: str) -> dict[str, str]:
    """The project's environment on PATH (stages call `pneumo ...`), output unbuffered."""
    bin_dir = str(Path(sys.executable).parent)
    path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "PYTHONUNBUFFERED": "1", **extra}


@task(name="dvc-status", cache_policy=NO_CACHE)
def changed_stages(root: Path) -> list[str]:
    """Stages whose code, params, inputs or outputs differ from dvc.lock, in pipeline order.

    `dvc status` through DVC's Python API: the same answer without a second interpreter.
    """
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            # Keys are "STAGE", or "path/to/dvc.yaml:STAGE" from another working directory.
            changed = {key.rsplit(":", 1)[-1] for key in repo.status()}
    except DvcException as exc:
        raise StageFailedError(f"dvc status failed: {exc}") from exc
    return [stage for stage in pipeline_stages(root) if stage in changed]


def stages_to_run(root: Path, changed: list[str]) -> list[str]:
    """Every stage from the first changed one on: its outputs may change what follows."""
    stages = pipeline_stages(root)
    return stages[stages.index(changed[0]) :] if changed else []


def readable_lines(lines: Iterator[str]) -> Iterator[str]:
    """DVC's and the stage's output without DVC's git hints and blank lines."""
    in_hint = False
    for raw in lines:
        line = raw.rstrip()
        if line.strip() == HINT_START:
            in_hint = True
        elif in_hint:
            in_hint = HINT_END not in line
        elif line.strip() and line.strip() not in DROPPED:
            yield line


class TrainingProgress:
    """Follow a training's progress file: a Prefect progress artifact and a terminal bar."""

    def __init__(self, path: Path, epochs: int) -> None:
        self.path, self.offset, self.epochs, self.done = path, 0, epochs, 0
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        self.artifact = create_progress_artifact(
            progress=0.0, key="train-progress", description=f"training: 0 of {epochs} epochs"
        )
        self.bar = tqdm(total=epochs, desc="train", unit="epoch", file=sys.stderr, disable=None)

    def poll(self) -> None:
        """Report the epochs finished since the last poll."""
        with self.path.open() as handle:
            handle.seek(self.offset)
            text = handle.read()
        complete = text[: text.rfind("\n") + 1]  # a line still being written waits for later
        self.offset += len(complete.encode())
        for line in complete.splitlines():
            self.report(json.loads(line))

    def report(self, row: dict[str, Any]) -> None:
        epoch = int(row["epoch"])
        summary = (
            f"epoch {epoch}/{self.epochs}: train loss {row['train_loss']:.4f}, "
            f"val loss {row['val_log_loss']:.4f}, val ROC-AUC {row['val_roc_auc']:.4f}"
        )
        update_progress_artifact(self.artifact, 100.0 * epoch / self.epochs, summary)
        postfix = {"loss": f"{row['train_loss']:.4f}", "val_auc": f"{row['val_roc_auc']:.4f}"}
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(epoch - self.done)  # a resumed training starts past epoch 1
        self.done = epoch

    def close(self, outcome: str) -> None:
        """Last epochs, then the artifact says why when DVC did not (fully) train."""
        self.poll()
        self.bar.close()
        if outcome == FAILED:
            done = 100.0 * self.done / self.epochs
            update_progress_artifact(
                self.artifact, done, f"training failed after {self.done} epochs"
            )
        elif outcome != RAN:
            update_progress_artifact(self.artifact, 100.0, f"training {outcome}")


def _stream(process: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """The process's output lines, read on a thread so the caller can also poll for progress."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _output(lines: queue.Queue[str | None], progress: TrainingProgress | None) -> Iterator[str]:
    while True:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            line = ""
        if progress is not None:
            progress.poll()
        if line is None:
            return
        if line:
            yield line


@task(name="dvc-stage", task_run_name="{stage}", cache_policy=NO_CACHE)
def run_stage(root: Path, stage: str, epochs: int = 0) -> str:
    """`dvc repro --single-item STAGE`, its output logged line by line as it comes."""
    logger = get_run_logger()
    progress_file = root / ".pneumo" / "progress" / f"{stage}.jsonl"
    progress = TrainingProgress(progress_file, epochs) if epochs else None
    extra = {PROGRESS_ENV: str(progress_file)} if progress else {}
    process = subprocess.Popen(
        dvc_command("repro", "--single-item", stage), cwd=root, env=dvc_env(**extra),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
    )  # fmt: skip
    outcome, tail = RAN, []
    try:
        for line in readable_lines(_output(_stream(process), progress)):
            with tqdm.external_write_mode(file=sys.stderr):
                logger.info(line)
            tail = [*tail[-40:], line]
            if "didn't change, skipping" in line:
                outcome = SKIPPED
            elif "is cached - skipping run" in line:
                outcome = RESTORED
    finally:
        process.wait()
        if progress is not None:
            progress.close(outcome if process.returncode == 0 else FAILED)
    if process.returncode != 0:
        if stage == "validate":
            raise ContractError(_contract_summary(root, tail))
        raise StageFailedError(f"stage {stage} failed:\n" + "\n".join(tail[-20:]))
    return outcome


def _contract_summary(root: Path, tail: list[str]) -> str:
    """The broken expectations, one a line, from the validation report (else DVC's output)."""
    report = Workspace(root).validation
    failures = json.loads(report.read_text()).get("failures", []) if report.is_file() else []
    return "data contract failed:\n  - " + "\n  - ".join(failures or tail[-20:])
