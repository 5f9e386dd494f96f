"""The `healthcheck` flow: proof that a worker can run pneumo, in seconds instead of a retrain.

Run it on a new worker or after changing the team servers: it imports pneumo, loads params.yaml
from the workspace the worker runs in, and reports what it found as a markdown artifact.

    prefect deployment run healthcheck/pneumo-healthcheck     # on a work pool, see prefect.yaml
    pneumo healthcheck                                         # locally
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

# isort: off
import pneumo  # (switches telemetry off before prefect is imported)

# isort: on
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from pneumo.config import load_settings
from pneumo.workspace import Workspace

DEPLOYMENT_NAME = "pneumo-healthcheck"


@flow(name="healthcheck", log_prints=True)
def healthcheck(workspace: str = ".", params: str = "params.yaml") -> dict[str, Any]:
    """Load the workspace's settings; a worker that cannot do this cannot retrain either."""
    root = Path(workspace).resolve()
    settings = load_settings(root / params)  # ConfigError names the broken key
    data_root = Workspace(root).resolve(settings.data.root)
    report = {
        "pneumo": pneumo.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "workspace": str(root),
        "data_root": str(data_root),
        "data_root_exists": data_root.is_dir(),
        "tracking_uri": _tracking_uri(settings, root),
    }
    get_run_logger().info("healthcheck: %s", json.dumps(report))
    create_markdown_artifact(
        key="pneumo-healthcheck",
        markdown="# pneumo healthcheck\n\n"
        + "\n".join(f"- **{key}**: `{value}`" for key, value in report.items())
        + "\n",
        description="what a worker of this pool sees",
    )
    return report


def _tracking_uri(settings: Any, root: Path) -> str:
    from pneumo.tracking import resolve_uri  # imports mlflow: only when the flow runs

    return resolve_uri(settings.tracking.uri, Workspace(root))
