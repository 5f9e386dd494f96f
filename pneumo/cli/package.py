"""`pneumo package`: the champion (or this workspace's model) into the BentoML store and a Bento."""

from __future__ import annotations

import argparse
from typing import Any

from pneumo.cli import Command, arg, load_settings_of, workspace_of

SOURCE_DESCRIPTION = (
    "The model comes from the MLflow registry (alias 'champion' unless --model-version says "
    "otherwise) or, with --from-workspace, from this workspace's models/ and metrics/. Stores live "
    "in serve.bentoml_home; the Bento is tagged with the model version and rebuilt only when the "
    "service code or params change."
)
# Which model: the registry's (an alias or version) or this workspace's (also `pneumo dicom-*`).
MODEL_SOURCE_ARGS = (
    arg(
        "--from-workspace",
        action="store_true",
        help="use models/model.pt + decision.json + metrics/metrics.json of this workspace",
    ),
    arg(
        "--model-version",
        default="champion",
        metavar="ALIAS_OR_VERSION",
        help="registry alias or version number (default: %(default)s)",
    ),
)
SOURCE_ARGS = (
    *MODEL_SOURCE_ARGS,
    arg("--force", action="store_true", help="rebuild the Bento even if up to date"),
)


def package_and_report(args: argparse.Namespace) -> Any:  # -> pneumo.registry.bento.Packaged
    from pneumo.registry.bento import package

    packaged = package(
        load_settings_of(args),
        workspace_of(args),
        args.from_workspace,
        args.model_version,
        args.force,
    )
    verb = "reused" if packaged.reused_model else "imported"
    bento = " (up to date)" if packaged.reused_bento else " (built)"
    print(f"model {packaged.model_tag} ({verb}); Bento {packaged.bento_tag}{bento}")
    return packaged


def run(args: argparse.Namespace) -> int:
    package_and_report(args)
    return 0


COMMAND = Command(
    "package",
    help="import the champion into the BentoML store and build its Bento",
    description=SOURCE_DESCRIPTION,
    handler=run,
    arguments=SOURCE_ARGS,
)
