"""The `pneumo` command: one thin sub-command per pipeline step (what dvc.yaml runs).

Each sub-command reads params.yaml, calls one plain function from the library and reports
failures as a single line that says what to do, with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from pneumo.config import Settings, load_settings
from pneumo.errors import PneumoError
from pneumo.workspace import Workspace

log = logging.getLogger("pneumo")

Handler = Callable[[argparse.Namespace], int]


def _settings(args: argparse.Namespace, overrides: dict[str, object] | None = None) -> Settings:
    return load_settings(args.params, overrides)


def _workspace(args: argparse.Namespace) -> Workspace:
    return Workspace(Path(args.params).resolve().parent)


def _data_root(args: argparse.Namespace, settings: Settings) -> Path:
    """Relative dataset paths are relative to the folder holding params.yaml, as in dvc.yaml."""
    root = Path(settings.data.root)
    return root if root.is_absolute() else Path(args.params).resolve().parent / root


def cmd_ingest(args: argparse.Namespace) -> int:
    from pneumo.data.ingest import ingest

    overrides = {"data.root": str(args.data)} if args.data else None
    settings = _settings(args, overrides)
    result = ingest(
        _data_root(args, settings),
        _workspace(args),
        settings.ingest.max_quarantine_fraction,
        settings.ingest.workers,
    )
    print(f"manifest: {result.images} images, {result.quarantined} quarantined")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from pneumo.data.validate import validate

    settings = _settings(args)
    workspace = _workspace(args)
    validate(workspace.manifest, settings.validate_, workspace)
    print(f"data contract passed; Data Docs: {workspace.data_docs / 'index.html'}")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from pneumo.data.split import SPLIT_NAMES, split

    settings = _settings(args)
    workspace = _workspace(args)
    s = settings.split
    metrics = split(
        workspace.manifest, s.val_fraction, s.test_fraction, s.seed, s.stratify_tolerance, workspace
    )
    counts = ", ".join(f"{n} {metrics[n]['images']}" for n in SPLIT_NAMES)  # type: ignore[index]
    print(f"split ({metrics['test_source']}): {counts}; patients in two splits: 0")
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    from pneumo.data.preprocess import preprocess

    settings = _settings(args)
    workspace = _workspace(args)
    counts = preprocess(
        workspace.split,
        _data_root(args, settings),
        settings.preprocess.image_size,
        workspace,
        settings.preprocess.workers,
    )
    print(f"arrays at {settings.preprocess.image_size} px: {counts} -> {workspace.arrays_dir}")
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    from pneumo.params_file import set_param

    if args.action == "show":
        print(_settings(args).model_dump_json(indent=2, by_alias=True))
        return 0
    for assignment in args.assignments:
        if "=" not in assignment:
            raise PneumoError(f"'{assignment}' is not KEY=VALUE, e.g. data.root=/data/chest_xray")
        key, value = assignment.split("=", 1)
        changed = set_param(Path(args.params), key, value)
        print(f"{key} = {value}" + ("" if changed else " (unchanged)"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pneumo",
        description="Pneumonia detection in chest X-rays: each sub-command is one pipeline step. "
        "`dvc repro` runs them in order and caches their outputs; `make run DATA=<folder>` runs it all.",
    )
    parser.add_argument(
        "--params", default="params.yaml", help="settings file (default: %(default)s)"
    )
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "ingest",
        help="walk a Kermany-layout folder and write the manifest (parquet) and quarantine report",
        description="Reads <root>/{train,val,test}/{NORMAL,PNEUMONIA}/*.{jpeg,jpg,png} on every core. "
        "Unusable files are quarantined with a reason; the run fails above ingest.max_quarantine_fraction.",
    )
    p.add_argument("--data", type=Path, help="dataset folder (default: data.root in params.yaml)")
    p.set_defaults(handler=cmd_ingest)

    p = sub.add_parser(
        "validate",
        help="check the manifest against the Great Expectations data contract and build Data Docs",
        description="Runs the GX checkpoint; exits non-zero with a summary of every failed expectation.",
    )
    p.set_defaults(handler=cmd_validate)

    p = sub.add_parser(
        "split",
        help="patient-disjoint, label-stratified, seeded train/val/test split",
        description="Keeps the dataset's test/ folder whole when present, else carves a test split; "
        "validation is carved from the training pool. Counts go to metrics/split.json.",
    )
    p.set_defaults(handler=cmd_split)

    p = sub.add_parser(
        "preprocess",
        help="decode every image once into uint8 arrays at preprocess.image_size",
        description="Grayscale, resized, one .npz per split plus train-only statistics.",
    )
    p.set_defaults(handler=cmd_preprocess)

    p = sub.add_parser("params", help="show params.yaml as validated settings, or set keys in it")
    p.add_argument("action", choices=["show", "set"])
    p.add_argument(
        "assignments", nargs="*", metavar="KEY=VALUE", help="e.g. preprocess.image_size=96"
    )
    p.set_defaults(handler=cmd_params)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    # Our own messages at the chosen level; the stack's chatty libraries only when they warn.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(level)
    handler: Handler = args.handler
    try:
        return handler(args)
    except PneumoError as exc:
        print(f"pneumo {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"pneumo {args.command}: interrupted; earlier outputs are untouched", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
