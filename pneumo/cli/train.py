"""`pneumo train`: the network on the train split, the best epoch chosen on val, tracked in MLflow.

With ``PNEUMO_PROGRESS=FILE`` in the environment every finished epoch is also appended to FILE as
one JSON line (epoch, epochs, losses, validation metrics): the retrain flow watches it to show
training progress while `dvc repro` runs this command in a subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from pneumo.cli import Command, load_settings_of, workspace_of
from pneumo.workspace import PROGRESS_ENV


def progress_writer(path: Path, epochs: int):  # -> pneumo.training.train.EpochHook
    """An ``on_epoch_end`` hook appending each epoch's row to ``path`` (one JSON object a line)."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(epoch: int, row: dict[str, float]) -> None:
        with path.open("a") as handle:
            handle.write(json.dumps({**row, "epoch": epoch, "epochs": epochs}) + "\n")

    return write


def run(args: argparse.Namespace) -> int:
    from pneumo.training.train import train

    settings = load_settings_of(args)
    progress = os.environ.get(PROGRESS_ENV)
    hook = progress_writer(Path(progress), settings.train.epochs) if progress else None
    result = train(settings, workspace_of(args), on_epoch_end=hook)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items() if isinstance(v, float))
    print(
        f"model -> {result.model_path} (best epoch {result.best_epoch} of {result.epochs_run}); {shown}"
    )
    if result.run_id:
        print(f"MLflow run {result.run_id}")
    return 0


COMMAND = Command(
    "train",
    help="train the CNN on the train split, select the best epoch on val, track it in MLflow",
    description="Reads data/arrays; writes models/model.pt, metrics/train.json and the MLflow run "
    "id. An interrupted run (Ctrl-C, kill) resumes from models/checkpoint.pt when rerun. "
    f"{PROGRESS_ENV}=FILE appends one JSON line per finished epoch to FILE.",
    handler=run,
)
