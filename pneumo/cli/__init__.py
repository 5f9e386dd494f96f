"""The `pneumo` command: one thin sub-command per pipeline step (what dvc.yaml runs).

Each sub-command reads params.yaml, calls one plain function from the library and reports
failures as a single line that says what to do, with a non-zero exit code.

Adding a sub-command is one new module, ``pneumo/cli/<name>.py``, and nothing else: it holds
the handler and one declarative ``COMMAND`` entry (name, help, arguments, handler). E.g. a
``pneumo stress`` is ``pneumo/cli/stress.py``::

    from pneumo.cli import Command, arg, load_settings_of, workspace_of

    def run(args: argparse.Namespace) -> int:
        from pneumo.evaluation.stress import stress  # heavy imports inside the handler: --help stays fast

        print(stress(load_settings_of(args), workspace_of(args), args.severity))
        return 0

    COMMAND = Command(
        "stress", help="score the test split under acquisition shifts", handler=run,
        arguments=(arg("--severity", type=int, default=3, help="1..5"),),
    )

Mutually exclusive options are a ``one_of`` group, e.g. for
``evaluate --external FOLDER [--name NAME] [--alias A | --version N]``::

    arguments=(
        arg("--external", type=Path, metavar="FOLDER", help="a labelled Kermany-layout folder"),
        arg("--name", help="the report's name (default: the folder's)"),
        one_of(arg("--alias", help="registry alias"), arg("--version", type=int, help="...")),
    )

and a command with actions of its own (``pneumo registry status``) lists them as ``actions``.
``pneumo NAME ...`` imports only this package and ``pneumo/cli/NAME.py``, so a DVC stage depends
on its own command's module, and a new sub-command reruns no stage.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pneumo.config import Settings, load_settings
from pneumo.errors import PneumoError
from pneumo.workspace import Workspace

log = logging.getLogger("pneumo")

Handler = Callable[[argparse.Namespace], int]
DESCRIPTION = (
    "Pneumonia detection in chest X-rays: each sub-command is one pipeline step. `dvc repro` runs "
    "them in order and caches their outputs; `make run DATA=<folder>` runs it all."
)


@dataclass(frozen=True)
class Arg:
    """One ``add_argument`` call: its flags (or positional name) and keyword options."""

    flags: tuple[str, ...]
    options: dict[str, Any]


@dataclass(frozen=True)
class OneOf:
    """Mutually exclusive arguments: ``--alias A | --version N``."""

    args: tuple[Arg, ...]
    required: bool = False


def arg(*flags: str, **options: Any) -> Arg:
    """An argument exactly as ``ArgumentParser.add_argument`` takes it."""
    return Arg(flags, options)


def one_of(*args: Arg, required: bool = False) -> OneOf:
    return OneOf(args, required)


@dataclass(frozen=True)
class Command:
    """One sub-command: everything argparse needs, and the function that runs it."""

    name: str
    help: str
    handler: Handler | None = None
    description: str | None = None
    arguments: tuple[Arg | OneOf, ...] = ()
    actions: tuple[Command, ...] = field(default=())  # e.g. `pneumo registry status`

    def register(self, parent: Any) -> None:
        """Add this command (and its actions) to an argparse sub-parsers object."""
        parser = parent.add_parser(self.name, help=self.help, description=self.description)
        for argument in self.arguments:
            if isinstance(argument, OneOf):
                group = parser.add_mutually_exclusive_group(required=argument.required)
                for member in argument.args:
                    group.add_argument(*member.flags, **member.options)
            else:
                parser.add_argument(*argument.flags, **argument.options)
        if self.handler is not None:
            parser.set_defaults(handler=self.handler)
        if self.actions:
            actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
            for action in self.actions:
                action.register(actions)


# ------------------------------------------------------------------ helpers for the handlers


def load_settings_of(
    args: argparse.Namespace, overrides: dict[str, object] | None = None
) -> Settings:
    return load_settings(args.params, overrides)


def workspace_of(args: argparse.Namespace) -> Workspace:
    """The workspace is the folder holding params.yaml, as for dvc.yaml."""
    return Workspace(Path(args.params).resolve().parent)


def data_root_of(args: argparse.Namespace, settings: Settings) -> Path:
    """Relative dataset paths are relative to the folder holding params.yaml, as in dvc.yaml."""
    return workspace_of(args).resolve(settings.data.root)


# ------------------------------------------------------------------ the command table


def command_names() -> list[str]:
    """Every sub-command: the public modules of this package, found without importing them
    (``dicom_listen.py`` is `pneumo dicom-listen`)."""
    modules = (m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    return sorted(name.replace("_", "-") for name in modules)


def load_command(name: str) -> Command:
    module = name.replace("-", "_")
    command = importlib.import_module(f"{__name__}.{module}").COMMAND
    if command.name != name:
        raise RuntimeError(f"pneumo/cli/{module}.py declares command '{command.name}': rename one")
    return command


def build_parser(commands: list[Command] | None = None) -> argparse.ArgumentParser:
    """The parser of ``commands`` (default: every sub-command, for --help and documentation)."""
    parser = _global_parser(add_help=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in commands if commands is not None else map(load_command, command_names()):
        command.register(sub)
    return parser


def _global_parser(add_help: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pneumo", description=DESCRIPTION, add_help=add_help)
    parser.add_argument(
        "--params", default="params.yaml", help="settings file (default: %(default)s)"
    )
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return parser


def _requested(argv: list[str]) -> list[Command] | None:
    """Only the command named on the line; all of them for --help or an unknown name."""
    probe = _global_parser(add_help=False)
    probe.add_argument("command", nargs="?")
    known, _ = probe.parse_known_args(argv)
    return [load_command(known.command)] if known.command in command_names() else None


def _suggest(argv: list[str]) -> None:
    """A mistyped sub-command: say which one was probably meant, and exit 2 like argparse."""
    import difflib

    probe = _global_parser(add_help=False)
    probe.add_argument("command", nargs="?")
    known, _ = probe.parse_known_args(argv)
    names = command_names()
    if known.command and not known.command.startswith("-") and known.command not in names:
        close = difflib.get_close_matches(known.command, names, n=2, cutoff=0.7)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        print(f"pneumo: unknown command '{known.command}'{hint} (`pneumo --help` lists them)",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _suggest(argv)
    args = build_parser(_requested(argv)).parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    # Our own messages at the chosen level; the stack's chatty libraries only when they warn.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(level)
    # MLflow's per-download progress bars: noise in a terminal and in every log (set it to true
    # to see them).
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # ...and its INFO lines (creating and migrating its tables on a fresh store): warnings stay.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    handler: Handler = args.handler
    try:
        return handler(args)
    except PneumoError as exc:
        print(f"pneumo {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"pneumo {args.command}: interrupted; earlier outputs are untouched", file=sys.stderr)
        return 130
