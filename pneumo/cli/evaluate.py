"""`pneumo evaluate`: the threshold chosen on val, the test split scored with bootstrap intervals."""

from __future__ import annotations

import argparse
from pathlib import Path

from pneumo.cli import Command, arg, load_settings_of, one_of, workspace_of
from pneumo.errors import PneumoError

SHOWN = ("accuracy", "sensitivity", "specificity", "roc_auc")


def _cell(metrics: dict, intervals: dict, name: str) -> str:
    if name not in intervals:
        return f"{metrics[name]:.3f}"
    low, high = intervals[name]
    return f"{metrics[name]:.3f} [{low:.3f}-{high:.3f}]"


def run(args: argparse.Namespace) -> int:
    if args.external is not None:
        return external(args)
    if args.name or args.alias or args.version is not None:
        raise PneumoError("--name, --alias and --version go with --external FOLDER")
    from pneumo.evaluation.evaluate import evaluate

    report = evaluate(load_settings_of(args), workspace_of(args))
    _print(report, ("test", "test_bacterial", "test_viral"))
    return 0


def external(args: argparse.Namespace) -> int:
    from pneumo.evaluation.external import evaluate_external

    version = str(args.version) if args.version is not None else args.alias
    settings, workspace = load_settings_of(args), workspace_of(args)
    model = None
    if version is not None:
        from pneumo.registry import version_predictor

        model = version_predictor(settings, workspace, version)
    report = evaluate_external(settings, workspace, args.external, args.name, model)
    name = report["dataset"]["name"]
    model = report["model"]
    source = f"registry v{model['version']}" if model["source"] == "registry" else "workspace model"
    print(f"external '{name}' ({report['dataset']['counts']}) scored with the {source}")
    _print(report, ("external", "external_bacterial", "external_viral"))
    print(f"written to {workspace.external_metrics(name)} and {workspace.external_plots(name)}")
    return 0


def _print(report: dict, parts: tuple[str, ...]) -> None:
    d = report["threshold"]
    print(f"threshold {d['threshold']:.4f} ({d['rule']}, chosen on the validation split)")
    print(f"{'split':<20}{'n':>6}  " + "  ".join(f"{name:>16}" for name in SHOWN))
    for part in parts:
        if part in report:
            m = report[part]
            cells = "  ".join(f"{_cell(m, m.get('ci', {}), name):>16}" for name in SHOWN)
            print(f"{part:<20}{m['n']:>6}  {cells}")


COMMAND = Command(
    "evaluate",
    help="choose the threshold on val, score the test split with bootstrap intervals, plot",
    description="The decision threshold follows evaluate.threshold_rule on the validation split "
    "only; test metrics (overall, bacterial, viral) go to metrics/metrics.json and plots/evaluate. "
    "With --external FOLDER, a labelled folder from outside the dataset (Kermany layout, or "
    "NORMAL/ and PNEUMONIA/ directly) is scored instead, by the workspace's model or a registry "
    "version at its own threshold: metrics/external-NAME.json and plots/external-NAME/.",
    handler=run,
    arguments=(
        arg("--external", type=Path, metavar="FOLDER", help="labelled folder to validate on"),
        arg("--name", help="name of the external set (default: the folder's name)"),
        one_of(
            arg("--alias", help="registry alias to score, e.g. champion or site-NAME"),
            arg("--version", type=int, help="registry version number to score"),
        ),
    ),
)
