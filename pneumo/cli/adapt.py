"""`pneumo adapt FOLDER --site NAME`: the champion's operating point for a new site, label-free."""

from __future__ import annotations

import argparse

from pneumo.cli import Command, load_settings_of, workspace_of
from pneumo.cli.calibrate import site_arguments


def run(args: argparse.Namespace) -> int:
    from pneumo.site.adapt import adapt

    source = str(args.version) if args.version is not None else args.alias
    workspace = workspace_of(args)
    report = adapt(load_settings_of(args), workspace, args.folder, args.site, source)
    estimate, verdict = report["estimate"], report["verdict"]
    low, high = estimate["em_interval"]
    print(f"site {report['site']}: {report['images']} images ({report['unreadable']} unreadable, "
          f"{report['flagged']:.1%} flagged by the guard)")  # fmt: skip
    print(f"pneumonia prevalence {estimate['em']:.3f} [{low:.3f}-{high:.3f}] (EM); BBSE "
          f"{estimate['bbse']:.3f}; validation {estimate['reference_prevalence']:.3f}")  # fmt: skip
    rates = report["positive_rate"]
    print(("moved" if report["moved"] else "kept") + " the operating point: "
          + "; ".join(report["reasons"]))  # fmt: skip
    print(f"share called pneumonia here: {rates['validation_decision']:.3f} with v"
          f"{report['adapted_from']}'s decision, {rates['adapted_decision']:.3f} adapted")  # fmt: skip
    outcome = f"alias site-{report['site']}" if verdict["passed"] else "no alias (gate failed)"
    print(f"registered as version {verdict['version']}: {outcome}")
    print(f"report: {workspace.site_metrics(report['site'])}")
    return 0


COMMAND = Command(
    "adapt",
    help="adapt the champion's operating point to a new site from its unlabelled images",
    description="FOLDER holds the site's images in any layout (folder names are ignored: no label "
    "is read). The site's pneumonia prevalence is estimated from the model's probabilities (EM on "
    "posteriors calibrated on validation; BBSE from validation's confusion matrix as a cross-check; "
    "bootstrap intervals). The operating point moves (a prior-shift correction; the threshold "
    "stays) only when the interval excludes validation's prevalence and, on the validation split "
    "resampled to the estimate, the move raises accuracy while keeping sensitivity >= "
    "adapt.min_sensitivity; otherwise it is kept, and the report says why. Refused: fewer than "
    "adapt.min_images images, more than adapt.max_flag_rate flagged by the guard, an interval "
    "wider than adapt.max_interval_width. The result is a registry version with the same weights, "
    "tagged site=NAME with the estimate, alias site-NAME; the champion is never touched. Then "
    "confirm on a labelled sample with `pneumo calibrate` or `pneumo evaluate --external FOLDER "
    "--alias site-NAME`, serve with `pneumo serve --model-version site-NAME`.",
    handler=run,
    arguments=site_arguments("the site's unlabelled images"),
)
