"""`pneumo serve`: package the champion if needed, then run `bentoml serve` on its Bento."""

from __future__ import annotations

import argparse
import os

from pneumo.cli import Command, arg, load_settings_of, workspace_of
from pneumo.cli.package import SOURCE_ARGS, SOURCE_DESCRIPTION, package_and_report


def run(args: argparse.Namespace) -> int:
    from pneumo.package import bentoml_home, serve_command

    packaged = package_and_report(args)
    settings = load_settings_of(args)
    command, added = serve_command(settings, packaged.bento_tag, args.host, args.port, args.workers)
    workspace = workspace_of(args)
    env = {**os.environ, **added, "BENTOML_HOME": str(bentoml_home(settings, workspace))}
    env["PNEUMO_WORKSPACE"] = str(workspace.root)  # the prediction log's relative paths
    host, port = command[command.index("--host") + 1], command[command.index("--port") + 1]
    print(f"serving {packaged.bento_tag} at http://{host}:{port}"
          " (open it for the web page, /docs for the API); Ctrl-C stops",
          flush=True)  # fmt: skip
    os.execve(command[0], command, env)  # the server replaces this process: Ctrl-C reaches it
    return 0  # not reached


COMMAND = Command(
    "serve",
    help="package the champion if needed, then serve it over HTTP",
    description=SOURCE_DESCRIPTION,
    handler=run,
    # Without editing params.yaml (which would rebuild the Bento):
    arguments=(
        *SOURCE_ARGS,
        arg("--host", help="address to listen on (default: serve.host)"),
        arg("--port", type=int, help="port (default: serve.port)"),
        arg("--workers", type=int, help="model worker processes (default: serve.workers)"),
    ),
)
