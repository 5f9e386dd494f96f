"""`pneumo serve`: package the champion if needed, then run `bentoml serve` on its Bento."""

from __future__ import annotations

import argparse
import os

from pneumo.cli import Command, load_settings_of, workspace_of
from pneumo.cli.package import SOURCE_ARGS, SOURCE_DESCRIPTION, package_and_report


def run(args: argparse.Namespace) -> int:
    from pneumo.package import bentoml_home, serve_command

    packaged = package_and_report(args)
    settings = load_settings_of(args)
    command = serve_command(settings, packaged.bento_tag)
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home(settings, workspace_of(args)))}
    print(f"serving {packaged.bento_tag} at http://{settings.serve.host}:{settings.serve.port}"
          " (open it for the web page; POST /predict, /predict_batch, /explain;"
          " GET /metadata, /model_card, /readyz); Ctrl-C stops",
          flush=True)  # fmt: skip
    os.execve(command[0], command, env)  # the server replaces this process: Ctrl-C reaches it
    return 0  # not reached


COMMAND = Command(
    "serve",
    help="package the champion if needed, then serve it over HTTP",
    description=SOURCE_DESCRIPTION,
    handler=run,
    arguments=SOURCE_ARGS,
)
