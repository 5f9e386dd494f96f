"""The `retrain` flow: validate -> dvc repro -> gate and register -> package -> report.

Each step is a plain pneumo function or a `dvc repro` of its stages; this module only adds
orchestration: retries with backoff for transient failures (tracking server unreachable, I/O
errors), none for deterministic ones, a workspace lock, and a markdown artifact with the decision.

Run once:        python -m flows.retrain [--workspace .]
On a schedule:   python -m flows.retrain --serve --cron "0 3 * * 1"   (or `pneumo schedule`)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

# isort: off
import pneumo  # noqa: F401  (switches telemetry off before prefect is imported)

# isort: on
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff

from pneumo.config import load_settings
from pneumo.errors import ContractError, PneumoError
from pneumo.locking import workspace_lock
from pneumo.registry.client import is_transient
from pneumo.workspace import Workspace

DEPLOYMENT_NAME = "pneumo-retrain"
MODEL_STAGES: tuple[str, ...] = ("split", "preprocess", "train", "evaluate", "explain")


class StageFailedError(PneumoError):
    """A `dvc repro` stage failed for a reason a retry will not fix."""


def retry_only_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry_condition_fn: follow the retry policy only for transient failures."""
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - classify whatever the task raised
        return is_transient(exc)
    return False


def _dvc(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run DVC with the project's environment on PATH (its stages call `pneumo ...`)."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=root, env=env, capture_output=True, text=True
    )


def _stage_summary(output: str) -> dict[str, str]:
    """Which stages ran and which DVC skipped, from `dvc repro`'s own messages."""
    summary: dict[str, str] = {}
    for line in output.splitlines():
        if line.startswith("Running stage '"):
            summary[line.split("'")[1]] = "ran"
        elif "didn't change, skipping" in line:
            summary[line.split("'")[1]] = "skipped (unchanged)"
    return summary


@task(name="validate-data")
def validate_data(root: Path) -> dict[str, str]:
    """Ingest and run the GX checkpoint; a broken contract fails the flow with its summary."""
    logger = get_run_logger()
    run = _dvc(root, "repro", "validate")
    logger.info(run.stdout)
    if run.returncode != 0:
        report = Workspace(root).validation
        failures = []
        if report.is_file():
            failures = json.loads(report.read_text()).get("failures", [])
        message = "\n  - ".join(failures) if failures else run.stderr.strip()[-2000:]
        raise ContractError(f"data contract failed:\n  - {message}")
    return _stage_summary(run.stdout)


@task(name="reproduce-model")
def reproduce_model(root: Path) -> dict[str, str]:
    """`dvc repro` of split -> preprocess -> train -> evaluate -> explain; unchanged stages skip."""
    logger = get_run_logger()
    run = _dvc(root, "repro", *MODEL_STAGES)
    logger.info(run.stdout)
    if run.returncode != 0:
        raise StageFailedError(f"dvc repro failed:\n{run.stderr.strip()[-3000:]}")
    return _stage_summary(run.stdout)


@task(
    name="gate-and-register",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_condition_fn=retry_only_transient,
)
def gate_and_register(root: Path, params: Path) -> dict[str, Any]:
    """Register the evaluated model and let the gate decide whether it becomes champion."""
    from pneumo.registry import register_and_gate

    decision = register_and_gate(load_settings(params), Workspace(root))
    return decision.to_json()


@task(
    name="package",
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_condition_fn=retry_only_transient,
)
def package_champion(root: Path, params: Path) -> str | None:
    """Build the Bento of the current champion (after the serving layer exists)."""
    try:
        from pneumo.package import package
    except ImportError:
        get_run_logger().info("no serving package in this version; skipping the Bento build")
        return None
    return str(package(load_settings(params), Workspace(root)))


def decision_markdown(decision: dict[str, Any], stages: dict[str, str], bento: str | None) -> str:
    """The run's story in one page: what ran, champion vs challenger, and the verdict."""
    lines = ["# pneumo retrain", "", f"**Decision:** {decision.get('verdict', '?')}", ""]
    reasons = decision.get("reasons") or []
    if reasons:
        lines += ["Reasons:", *[f"- {r}" for r in reasons], ""]
    rows = decision.get("comparison") or {}
    if rows:
        lines += ["| metric | champion | challenger | floor |", "|---|---|---|---|"]
        for metric, values in rows.items():
            cells = [values.get(k) for k in ("champion", "challenger", "floor")]
            shown = [
                "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v) for v in cells
            ]
            lines.append(f"| {metric} | " + " | ".join(shown) + " |")
        lines.append("")
    lines += ["| stage | status |", "|---|---|"]
    lines += [f"| {name} | {status} |" for name, status in stages.items()]
    if bento:
        lines += ["", f"Bento: `{bento}`"]
    return "\n".join(lines) + "\n"


@flow(name="retrain", log_prints=True)
def retrain(workspace: str = ".", params: str = "params.yaml") -> dict[str, Any]:
    """Chain the whole pipeline on a workspace; only one retrain per workspace at a time."""
    root = Path(workspace).resolve()
    params_path = (root / params).resolve()
    load_settings(params_path)  # a bad params.yaml fails before anything runs
    holder = f"flow run '{flow_run.get_name() or 'retrain'}' ({flow_run.get_id() or 'local'})"
    with workspace_lock(root, holder):
        stages = validate_data(root)
        for stage, outcome in reproduce_model(root).items():
            stages.setdefault(stage, outcome)  # ingest/validate already ran in the step above
        decision = gate_and_register(root, params_path)
        bento = package_champion(root, params_path) if decision.get("champion_after") else None
        create_markdown_artifact(
            key="retrain-decision",
            markdown=decision_markdown(decision, stages, bento),
            description="champion vs challenger and the gate's decision",
        )
    return {"stages": stages, "decision": decision, "bento": bento}


def serve(workspace: str, cron: str, params: str = "params.yaml") -> None:
    """Register a cron deployment of `retrain` and run its scheduled runs in this process."""
    retrain.serve(
        name=DEPLOYMENT_NAME,
        cron=cron,
        parameters={"workspace": str(Path(workspace).resolve()), "params": params},
        description="Retrain, gate and package pneumo's pneumonia model",
        tags=["pneumo"],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workspace", default=".", help="project folder (default: %(default)s)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--serve", action="store_true", help="run on a schedule instead of once")
    parser.add_argument(
        "--cron", default="0 3 * * 1", help="schedule for --serve (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.workspace, args.cron, args.params)
        return 0
    try:
        result = retrain(workspace=args.workspace, params=args.params)
    except PneumoError as exc:
        print(f"retrain: error: {exc}", file=sys.stderr)
        return 1
    print(decision_markdown(result["decision"], result["stages"], result["bento"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
