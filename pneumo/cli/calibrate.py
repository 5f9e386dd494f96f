"""`pneumo calibrate FOLDER --site NAME`: the champion's operating point for a new site."""

from __future__ import annotations

import argparse
from pathlib import Path

from pneumo.cli import Command, arg, load_settings_of, one_of, workspace_of

SHOWN = ("accuracy", "sensitivity", "specificity", "roc_auc")


def run(args: argparse.Namespace) -> int:
    from pneumo.calibrate import calibrate

    source = str(args.version) if args.version is not None else args.alias
    workspace = workspace_of(args)
    report = calibrate(load_settings_of(args), workspace, args.folder, args.site, source)
    verdict = report["verdict"]
    print(f"site {report['site']}: {report['counts']}; threshold chosen on "
          f"{report['calibration_images']} images, reported on {report['report_images']} others")  # fmt: skip
    print(f"threshold v{report['calibrated_from']} {report['reference_threshold']:.4f} -> "
          f"site {report['threshold']['threshold']:.4f} ({report['threshold']['rule']})")  # fmt: skip
    print(f"{'on the report half':<22}" + "".join(f"{name:>13}" for name in SHOWN))
    for label, values in ((f"v{report['calibrated_from']} as is", report["reference"]),
                          ("site version", report["calibrated"])):  # fmt: skip
        print(f"{label:<22}" + "".join(f"{values[name]:>13.3f}" for name in SHOWN))
    site_ci = report["calibrated"].get("ci", {})
    if "accuracy" in site_ci:
        low, high = site_ci["accuracy"]
        print(
            f"site version accuracy {report['calibrated']['accuracy']:.3f} [{low:.3f}-{high:.3f}]"
        )
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
    "calibrate.min_per_class images per class; no image shared with the dataset) is split by "
    "patient: one part chooses the threshold by evaluate.threshold_rule (after a prior-shift "
    "correction when calibrate.prevalence is set, and BatchNorm re-estimation when "
    "calibrate.recalibrate_batchnorm is on), the other reports and gates it. The result is a new "
    "registry version with the same weights, tagged site=NAME, given the alias site-NAME if it "
    "passes the gate; the champion is never replaced. Serve it with "
    "`pneumo serve --model-version site-NAME`.",
    handler=run,
    arguments=(
        arg("folder", type=Path, metavar="FOLDER", help="labelled sample of the site"),
        arg("--site", required=True, help="the site's name (letters, digits, - and _)"),
        one_of(
            arg("--alias", default="champion", help="registry alias to adapt (default: champion)"),
            arg("--version", type=int, help="registry version number to adapt"),
        ),
    ),
)
