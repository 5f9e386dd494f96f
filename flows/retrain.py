"""The `retrain` flow: the DVC stages -> gate and register -> package -> report.

Each DVC stage that may change is one task (flows/stages.py) whose output streams into the run's
log; training shows its epochs as a progress artifact and a terminal bar. This module only adds
orchestration: retries with backoff for transient failures (tracking server unreachable, I/O
errors), none for deterministic ones, a workspace lock, and a markdown artifact with the decision.

Run once:        pneumo retrain                       (what `make run` does)
On a schedule:   pneumo schedule retrain --cron "0 3 * * 1"
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

# isort: off
import pneumo  # noqa: F401  (switches telemetry off before prefect is imported)

# isort: on
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff

from flows.stages import SKIPPED, changed_stages, pipeline_stages, run_stage, stages_to_run
from pneumo.config import load_settings
from pneumo.locking import workspace_lock
from pneumo.registry.client import is_transient
from pneumo.workspace import Workspace

DEPLOYMENT_NAME = "pneumo-retrain"


DATA_DOCS_ARTIFACT = "data_docs"  # where the run keeps the GX Data Docs


def retry_only_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry_condition_fn: follow the retry policy only for transient failures."""
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - classify whatever the task raised
        return is_transient(exc)
    return False


@task(
    name="gate-and-register",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_condition_fn=retry_only_transient,
)
@task(name="data-docs", cache_policy=NO_CACHE)
def ensure_data_docs(root: Path, params: Path) -> Path:
    """Data Docs whenever they are missing (git-ignored; DVC skips an unchanged validate), so the
    links of the decision artifact and the README open on a fresh clone."""
    from pneumo.data.validate import build_docs

    workspace = Workspace(root)
    index = workspace.data_docs / "index.html"
    if not index.is_file():
        build_docs(workspace.manifest, load_settings(params).validate_, workspace)
    return index


def gate_and_register(root: Path, params: Path) -> dict[str, Any]:
    """Register the evaluated model and let the gate decide whether it becomes champion."""
    from pneumo import registry, tracking

    settings, workspace = load_settings(params), Workspace(root)
    decision = registry.register_and_gate(settings, workspace).to_json()
    champion = registry.status(settings, workspace)["aliases"].get("champion", {})
    decision["champion_now"] = champion.get("version")
    decision["run_url"] = tracking.run_url(settings, workspace, decision["run_id"])
    decision["tracking_uri"] = tracking.resolve_uri(settings.tracking.uri, workspace)
    if workspace.data_docs.is_dir():
        # The Data Docs travel with the run, so the decision links them over HTTP (the MLflow UI
        # renders HTML artifacts) instead of a file:// link a browser refuses from a web page.
        client = tracking.client_for(settings.tracking, workspace)
        client.log_artifacts(decision["run_id"], str(workspace.data_docs), DATA_DOCS_ARTIFACT)
        decision["data_docs_url"] = artifact_url(decision["run_url"],
                                                 f"{DATA_DOCS_ARTIFACT}/index.html")  # fmt: skip
    return decision


def artifact_url(run_url: str, path: str) -> str:
    """The MLflow UI page showing one artifact of a run (HTML is rendered there)."""
    page, _, query = run_url.partition("?")
    return f"{page}/artifacts/{path}" + (f"?{query}" if query else "")


@task(
    name="package",
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_condition_fn=retry_only_transient,
)
def package_champion(root: Path, params: Path) -> str:
    """Build the Bento of the current champion (reused when it is already built)."""
    from pneumo.registry.bento import package

    return str(package(load_settings(params), Workspace(root)))


def run_headline(decision: dict[str, Any], stages: dict[str, str]) -> str:
    """The headline: a rerun that changed nothing keeps the champion it found."""
    unchanged = not decision.get("newly_registered", True) and all(
        outcome == SKIPPED for outcome in stages.values()
    )
    if unchanged:
        champion = decision.get("champion_now")
        return f"unchanged: v{champion} kept" if champion else "unchanged: no champion yet"
    return str(decision.get("verdict", "?"))


@contextmanager
def _timed(minutes: dict[str, float], name: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        minutes[name] = (time.monotonic() - started) / 60


def write_stage_minutes(root: Path, minutes: dict[str, float]) -> Path:
    """metrics/timing/stages.json: this machine's minutes per stage of the last run (git-ignored,
    like the training timing: another machine takes another time)."""
    path = Workspace(root).root / "metrics" / "timing" / "stages.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    total = sum(minutes.values())
    path.write_text(json.dumps({"minutes": {k: round(v, 2) for k, v in minutes.items()},
                                "total_minutes": round(total, 2)}, indent=2) + "\n")  # fmt: skip
    return path


def decision_markdown(
    decision: dict[str, Any],
    stages: dict[str, str],
    bento: str | None,
    root: Path,
    minutes: dict[str, float] | None = None,
) -> str:
    """The run's story in one page: what ran, champion vs challenger, the verdict, and links."""
    headline = run_headline(decision, stages)
    lines = ["# pneumo retrain", "", f"**Decision:** {headline}", ""]
    if headline.startswith("unchanged"):
        lines += [
            f"This workspace's model is v{decision.get('version')}, gated at "
            f"{decision.get('decided_at')}: {decision.get('verdict')}.",
            "",
        ]
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
    minutes = minutes or {}
    lines += ["| stage | status | minutes |", "|---|---|---|"]
    lines += [
        f"| {name} | {status} | {_minutes(minutes.get(name))} |" for name, status in stages.items()
    ]
    for step in ("register", "package"):
        if step in minutes:
            lines.append(f"| {step} | done | {_minutes(minutes[step])} |")
    if minutes:
        lines.append(f"| **total** | | {_minutes(sum(minutes.values()))} |")
    lines += ["", *_links(decision, root)]
    if bento:
        lines += ["", f"Bento: `{bento}`"]
    return "\n".join(lines) + "\n"


def _minutes(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _links(decision: dict[str, Any], root: Path) -> list[str]:
    """HTTP links only: a browser refuses file:// links from the Prefect UI's page."""
    docs = (Workspace(root).data_docs / "index.html").resolve()
    if decision.get("data_docs_url"):
        lines = [f"- Data Docs (the data contract): [in the MLflow run]({decision['data_docs_url']}); "
                 f"on disk `{docs}`"]  # fmt: skip
    else:
        lines = [f"- Data Docs (the data contract): on disk `{docs}` (open it in a browser)"]
    if decision.get("run_url"):
        uri = str(decision.get("tracking_uri", ""))
        local = "" if uri.startswith("http") else f" (start `mlflow ui --backend-store-uri {uri}`)"
        lines.append(f"- MLflow run: [{decision.get('run_id')}]({decision['run_url']}){local}")
    return lines


@flow(name="retrain", log_prints=True)
def retrain(workspace: str = ".", params: str = "params.yaml") -> dict[str, Any]:
    """Chain the whole pipeline on a workspace; only one retrain per workspace at a time."""
    root = Path(workspace).resolve()
    params_path = (root / params).resolve()
    settings = load_settings(params_path)  # a bad params.yaml fails before anything runs
    holder = f"flow run '{flow_run.get_name() or 'retrain'}' ({flow_run.get_id() or 'local'})"
    with workspace_lock(root, holder):
        stages = dict.fromkeys(pipeline_stages(root), SKIPPED)
        minutes: dict[str, float] = {}
        for stage in stages_to_run(root, changed_stages(root)):
            epochs = settings.train.epochs if stage == "train" else 0
            with _timed(minutes, stage):
                stages[stage] = run_stage(root, stage, epochs)
        ensure_data_docs(root, params_path)
        with _timed(minutes, "register"):
            decision = gate_and_register(root, params_path)
        with _timed(minutes, "package"):
            bento = package_champion(root, params_path) if decision.get("champion_now") else None
        write_stage_minutes(root, minutes)
        create_markdown_artifact(
            key="retrain-decision",
            markdown=decision_markdown(decision, stages, bento, root, minutes),
            description="champion vs challenger, the gate's decision, links to MLflow and GX",
        )
    return {"stages": stages, "decision": decision, "bento": bento, "minutes": minutes}


def warm_up() -> None:
    """Import what the flow needs while the Prefect server boots on another core."""
    import dvc.repo.status  # noqa: F401  (the flow's first task)
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  (the default sqlite store)
    import torch  # noqa: F401  (packaging opens the champion's weights)

    import pneumo.registry  # noqa: F401
    import pneumo.registry.bento  # noqa: F401


def exit_now(code: int) -> NoReturn:
    """Exit without the interpreter's teardown of torch, MLflow and Prefect: it is slow.

    Every file is closed, the local Prefect server stopped and its logs delivered by now.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
