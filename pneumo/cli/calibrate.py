"""`pneumo calibrate FOLDER --site NAME`: the champion's operating point for a new site."""

from __future__ import annotations

import argparse
from pathlib import Path

from pneumo.cli import Arg, Command, OneOf, arg, load_settings_of, one_of, workspace_of


def site_arguments(folder_help: str) -> tuple[Arg | OneOf, ...]:
    """FOLDER --site NAME [--alias A | --version N]: what `adapt` and `calibrate` take."""
    return (
        arg("folder", type=Path, metavar="FOLDER", help=folder_help),
        arg("--site", required=True, help="the site's name (letters, digits, - and _)"),
        one_of(
            arg("--alias", default="champion", help="registry alias to adapt (default: champion)"),
            arg("--version", type=int, help="registry version number to adapt"),
        ),
    )


SHOWN = ("accuracy", "sensitivity", "specificity", "roc_auc")


def run(args: argparse.Namespace) -> int:
    from pneumo.site.calibrate import calibrate

    source = str(args.version) if args.version is not None else args.alias
    workspace = workspace_of(args)
    report = calibrate(load_settings_of(args), workspace, args.folder, args.site, source)
    verdict = report["verdict"]
    print(f"site {report['site']}: {report['counts']}; {report['folds']}-fold patient-grouped "
          "cross-fitting (each image graded by a threshold chosen on other patients)")  # fmt: skip
    print(f"threshold v{report['calibrated_from']} {report['reference_threshold']:.4f} -> "
          f"site {report['threshold']['threshold']:.4f} ({report['threshold']['rule']})")  # fmt: skip
    if not report["floor_held_on_interval"]:
        print(f"note: too few pneumonia cases to hold sensitivity {report['min_sensitivity']} on "
              "the lower side of its interval; it holds on the point estimate")  # fmt: skip
    print(f"{'out of fold':<22}" + "".join(f"{name:>22}" for name in SHOWN))
    for label, values in ((f"v{report['calibrated_from']} as is", report["reference"]),
                          ("site version", report["calibrated"])):  # fmt: skip
        cells = []
        for name in SHOWN:
            low, high = (values.get("ci") or {}).get(name, (float("nan"), float("nan")))
            cells.append(f"{values[name]:.3f} [{low:.3f}-{high:.3f}]")
        print(f"{label:<22}" + "".join(f"{cell:>22}" for cell in cells))
    outcome = f"alias site-{report['site']}" if verdict["passed"] else "no alias (gate failed)"
    print(f"registered as version {verdict['version']}: {outcome}")
    for reason in verdict["reasons"]:
        print(f"  - {reason}")
    print(f"report: {workspace.site_metrics(report['site'])}")
    return 0


COMMAND = Command(
    "calibrate",
    help="re-choose the champion's threshold on a labelled sample of a new site; register it",
    description="The sample (Kermany layout, or NORMAL/ and PNEUMONIA/ directly; at least "
    "calibrate.min_per_class images per class; no image shared with the dataset) chooses the most "
    "specific threshold that keeps sensitivity >= calibrate.min_sensitivity, on the lower side of "
    "its 95 % interval where the sample has enough pneumonia cases (after a prior-shift "
    "correction when calibrate.prevalence is set, and BatchNorm re-estimation when "
    "calibrate.recalibrate_batchnorm is on). Every image is used: patient-grouped cross-fitting "
    "(calibrate.folds) grades each fold with a threshold chosen on the others, and the report shows "
    "sensitivity and specificity with intervals before and after; the gate judges those. Start "
    "label-free with `pneumo adapt` on the site's unlabelled images. The result is a new "
    "registry version with the same weights, tagged site=NAME, given the alias site-NAME if it "
    "passes the gate; the champion is never replaced. Serve it with "
    "`pneumo serve --model-version site-NAME`.",
    handler=run,
    arguments=site_arguments("labelled sample of the site"),
)
