"""A flow as a Prefect deployment on a cron schedule, served in this process (`pneumo
schedule`): Prefect's ephemeral API by default, a Prefect server when PREFECT_API_URL is set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The flows `pneumo schedule` serves: module name -> (flow function name, what it does).
SCHEDULED = {
    "retrain": ("retrain", "Retrain, gate and package pneumo's pneumonia model"),
    "monitor": ("monitor", "Compare the recent prediction log with the validation reference"),
}


def serve_on_schedule(name: str, workspace: Path, cron: str, params: str = "params.yaml") -> Any:
    """Register flow ``name``'s cron deployment for ``workspace`` and run its scheduled runs."""
    import importlib

    module = importlib.import_module(f"flows.{name}")
    function, description = SCHEDULED[name]
    return getattr(module, function).serve(
        name=module.DEPLOYMENT_NAME,
        cron=cron,
        parameters={"workspace": str(Path(workspace).resolve()), "params": params},
        description=description,
        tags=["pneumo"],
    )
