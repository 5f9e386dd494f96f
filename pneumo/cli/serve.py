"""`pneumo serve`: package the champion if needed, then run `bentoml serve` on its Bento."""

from __future__ import annotations

import argparse
import json
import os
import sys

from pydantic import ValidationError

from pneumo.cli import Command, arg, load_settings_of, workspace_of
from pneumo.cli.package import SOURCE_ARGS, SOURCE_DESCRIPTION, package_and_report
from pneumo.config import ServeSettings, Settings
from pneumo.errors import ConfigError
from pneumo.stored_model import SERVE_ARGS_ENV


def run(args: argparse.Namespace) -> int:
    from pneumo.registry.bento import bentoml_home

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


def serve_command(
    settings: Settings,
    bento_tag: str,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The `bentoml serve` command line for a packaged Bento and the environment it adds;
    ``host``, ``port`` and ``workers`` (model worker processes) override params.yaml's."""
    given = {"host": host, "port": port, "workers": workers}
    overrides = {name: value for name, value in given.items() if value is not None}
    try:
        serve = ServeSettings.model_validate({**settings.serve.model_dump(), **overrides})
    except ValidationError as exc:
        problem = exc.errors()[0]
        raise ConfigError(f"--{problem['loc'][0]}: {problem['msg']}") from None
    command = [sys.executable, "-m", "bentoml", "serve", bento_tag]
    command += ["--host", serve.host, "--port", str(serve.port)]
    env = {SERVE_ARGS_ENV: json.dumps({"workers": serve.workers})} if workers else {}
    return command, env


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
