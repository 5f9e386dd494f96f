"""`pneumo validate`: the manifest against the Great Expectations data contract."""

from __future__ import annotations

import argparse
import json

from pneumo.cli import Command, arg, data_root_of, load_settings_of, workspace_of


def run(args: argparse.Namespace) -> int:
    from pneumo.data.validate import build_docs, validate

    settings = load_settings_of(args)
    workspace = workspace_of(args)
    if args.docs_only:
        print(f"Data Docs: {build_docs(workspace.manifest, settings.validate_, workspace)}")
        return 0
    outcome = validate(workspace.manifest, settings.validate_, workspace,
                       data_root_of(args, settings))  # fmt: skip
    meter = json.loads(workspace.validation.read_text()).get("shortcut") or {}
    print(f"data contract passed; Data Docs: {workspace.data_docs / 'index.html'}")
    if meter.get("warning"):
        print(f"warning: acquisition cues alone separate the classes (ROC-AUC "
              f"{meter['roc_auc']:.3f}, strongest {meter['strongest_cue']}): see "
              f"{workspace.validation}")  # fmt: skip
    return 0 if outcome.success else 1


COMMAND = Command(
    "validate",
    help="check the manifest against the Great Expectations data contract and build Data Docs",
    description="Runs the GX checkpoint; exits non-zero with a summary of every failed expectation. "
    "Also runs the shortcut meter (can acquisition cues alone, without anatomy, separate the "
    "classes?) as a warning suite: validate.shortcut_warn_auc.",
    handler=run,
    arguments=(
        arg("--docs-only", action="store_true",
            help="only (re)build the Data Docs from the manifest; write no result file "
            "(what `make run` does when they are missing)"),
    ),
)
