"""`pneumo predict`: radiograph files or folders -> one CSV row per image."""

from __future__ import annotations

import argparse
from pathlib import Path

from pneumo.cli import Command, arg, load_settings_of, workspace_of
from pneumo.errors import PneumoError


def run(args: argparse.Namespace) -> int:
    from pneumo.inference.predictor import Predictor, write_predictions

    settings = load_settings_of(args)
    workspace = workspace_of(args)
    if args.champion:
        if args.model or args.decision:
            raise PneumoError("--champion replaces --model and --decision: give one or the other")
        from pneumo.registry import champion_predictor

        predictor = champion_predictor(settings, workspace)
    else:
        predictor = Predictor.from_files(
            args.model or workspace.model,
            args.decision or workspace.decision,
            settings.model.accelerator(),
            settings.model.runtime,
            None if args.model else workspace.guard,  # the guard belongs to the workspace's model
        )
    frame = write_predictions(
        args.paths, args.output, predictor, settings.preprocess.workers, args.batch_size
    )
    failed = int(frame["error"].notna().sum())
    counts = frame["predicted_label"].value_counts().to_dict()
    print(
        f"{len(frame)} images -> {args.output}: {counts}"
        + (f"; {failed} unreadable (see the error column)" if failed else "")
    )
    # Scripts must see that not every file got an answer; the CSV still holds every row.
    return 3 if failed else 0


MODEL_ARGS = (
    arg("--model", type=Path, help="model file (default: this workspace's models/model.pt)"),
    arg("--decision", type=Path, help="threshold file (default: models/decision.json)"),
)

COMMAND = Command(
    "predict",
    help="predict radiograph files or folders into a CSV (one row per image)",
    description="Rows: path, probability of pneumonia, predicted label, threshold, model, the "
    "true label when the folder says it (NORMAL/ or PNEUMONIA/), and the error for unreadable "
    "files. Exit status 0 when every file was predicted, 3 when some could not be read or were "
    "missing (their rows say why), 1 on any other error.",
    handler=run,
    arguments=(
        arg("paths", nargs="+", type=Path, metavar="PATH", help="image files or folders"),
        arg("--output", "-o", type=Path, default=Path("predictions.csv"), help="CSV to write"),
        *MODEL_ARGS,
        arg(
            "--champion",
            action="store_true",
            help="use the registry's champion (weights and threshold) instead of this workspace's",
        ),
        arg("--batch-size", type=int, default=64),
    ),
)
