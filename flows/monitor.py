"""The `monitor` flow: a recent window of the prediction log against the validation reference.

Reads the window from the store (retried: the store may be restarting), compares it with
``models/reference.parquet`` (pneumo/monitor/drift.py), saves Evidently's HTML report under
``monitor.report_dir`` (self-contained: it loads nothing from the internet), logs it and the
figures to MLflow, records the verdict in the store (what `pneumo monitor status` prints) and
publishes a markdown artifact that links the report and says why. On ``alert`` with
``monitor.retrain_on_alert`` it starts the `retrain` deployment.

Run once:        pneumo monitor run [--since ISO] [--until ISO]
On a schedule:   pneumo schedule monitor --cron "0 * * * *"
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

# isort: off
import pneumo  # noqa: F401  (switches telemetry off before prefect is imported)

# isort: on
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from flows.retrain import DEPLOYMENT_NAME as RETRAIN_DEPLOYMENT
from flows.retrain import retry_only_transient
from pneumo.config import Settings, load_settings
from pneumo.monitor.store import PredictionStore, resolve_url, utcnow
from pneumo.workspace import Workspace, atomic_path

log = logging.getLogger(__name__)

DEPLOYMENT_NAME = "pneumo-monitor"
RETRAIN_TAG = "monitor-alert"


def _store(settings: Settings, root: Path) -> PredictionStore:
    return PredictionStore(
        resolve_url(settings.monitor.store_url, root), settings.monitor.store_schema
    )


@task(name="read-window", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_only_transient)
def read_window(root: Path, params: Path, start: datetime, end: datetime) -> Any:
    """The window's predictions with their feedback (a DataFrame)."""
    settings = load_settings(params)
    return _store(settings, root).predictions_between(start, end)


@task(name="assess")
def assess_window(root: Path, params: Path, window: Any, start: datetime, end: datetime) -> Any:
    from pneumo.monitor.drift import assess
    from pneumo.monitor.reference import load_reference

    settings = load_settings(params)
    reference, about = load_reference(Workspace(root))
    return assess(window, reference, about, settings, start, end)


def save_report(
    snapshot: Any, settings: Settings, root: Path, end: datetime, summary: dict[str, Any]
) -> Path:
    """The window's HTML report under monitor.report_dir: the verdict and its reasons on top,
    then Evidently's report when there was enough data for one."""
    folder = root / settings.monitor.report_dir
    path = folder / f"monitor-{end:%Y%m%dT%H%M%S}.html"
    top = summary_html(summary)
    with atomic_path(path) as tmp:
        if snapshot is None:
            tmp.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>pneumo "
                           f"monitor</title></head><body>{top}</body></html>")  # fmt: skip
        else:
            snapshot.save_html(str(tmp))
            page = tmp.read_text()
            at = page.find(">", page.find("<body")) + 1 if "<body" in page else 0
            tmp.write_text(page[:at] + top + page[at:])
    return path


def summary_html(summary: dict[str, Any]) -> str:
    """The verdict as a block of HTML: status, window, reasons, and the rates when measured."""
    from html import escape

    window = summary["window"]
    rows = "".join(f"<li>{escape(reason)}</li>" for reason in summary["reasons"])
    rates = ""
    if "ood_rate" in summary:
        cells = "".join(
            f"<tr><td>{name}</td><td>{values['window']:.1%}</td><td>{values['reference']:.1%}</td></tr>"
            for name, values in (("positive", summary["prediction_drift"]["positive_rate"]),
                                 ("out of distribution", summary["ood_rate"]),
                                 ("referred", summary["referral_rate"]))
        )  # fmt: skip
        rates = ("<table border='1' cellpadding='4'><tr><th>rate</th><th>window</th>"
                 f"<th>reference</th></tr>{cells}</table>")  # fmt: skip
    return (
        "<section id='pneumo-verdict' style='font-family:sans-serif;margin:16px'>"
        f"<h1>pneumo monitor: verdict {escape(summary['status'])}</h1>"
        f"<p>Window {escape(window['start'])} to {escape(window['end'])}: {summary['n']} images "
        f"({summary['requests']} requests).</p><p>Why:</p><ul>{rows}</ul>{rates}</section>"
    )


def log_to_mlflow(
    settings: Settings, root: Path, summary: dict[str, Any], report: Path | None
) -> str | None:
    """A `monitor` run with the figures and the report; a failure is reported, never fatal."""
    from pneumo import tracking

    figures = {"monitor/n": summary["n"]}
    if "input_drift_share" in summary:
        figures["monitor/input_drift_share"] = summary["input_drift_share"]
        for name in ("ood_rate", "referral_rate"):
            figures[f"monitor/{name}"] = summary[name]["window"]
        figures["monitor/positive_rate"] = summary["prediction_drift"]["positive_rate"]["window"]
        for metric, value in summary["live"].get("metrics", {}).items():
            figures[f"monitor/live_{metric}"] = value
    files = [report] if report else []
    try:
        return tracking.log_standalone_run(settings, Workspace(root), "monitor", files, figures,
                                           settings.tracking.monitor_experiment)  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - monitoring must not fail because MLflow is down
        log.warning("monitor: not logged to MLflow: %s", exc)
        return None


def start_retrain(reasons: list[str]) -> str:
    """Start the retrain deployment; returns what happened, in words."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    name = f"retrain/{RETRAIN_DEPLOYMENT}"
    try:
        run = run_deployment(name, timeout=0, tags=[RETRAIN_TAG])
    except ObjectNotFound:
        return (
            f"retrain not started: no deployment {name} on this Prefect API "
            "(`pneumo schedule` or `prefect deploy --all` registers it)"
        )
    log.warning(
        "monitor alert: started %s as flow run %s because %s", name, run.name, "; ".join(reasons)
    )
    return f"retrain started: flow run {run.name} ({run.id}) of {name}"


def verdict_markdown(summary: dict[str, Any], report: Path | None) -> str:
    """The verdict in one page: status, why, the figures, the report's link."""
    lines = ["# pneumo monitor", "", f"**Verdict: {summary['status']}**", ""]
    window = summary["window"]
    lines += [
        f"Window {window['start']} to {window['end']}: {summary['n']} images "
        f"({summary['requests']} requests).",
        "",
    ]
    lines += ["Why:", *[f"- {reason}" for reason in summary["reasons"]], ""]
    if "input_drift" in summary:
        lines += ["| statistic | drift score | threshold | drifted |", "|---|---|---|---|"]
        for column, values in {
            **summary["input_drift"],
            "probability": summary["prediction_drift"]["probability"],
        }.items():
            lines.append(
                f"| {column} | {values['score']:.4g} | {values['threshold']} | "
                f"{'yes' if values['drifted'] else 'no'} |"
            )
        lines += ["", "| rate | window | reference |", "|---|---|---|"]
        for name, values in (
            ("positive", summary["prediction_drift"]["positive_rate"]),
            ("out of distribution", summary["ood_rate"]),
            ("referred", summary["referral_rate"]),
        ):
            lines.append(f"| {name} | {values['window']:.1%} | {values['reference']:.1%} |")
        prevalence = summary.get("prevalence") or {}
        if "estimate" in prevalence:
            low, high = prevalence["interval"]
            lines.append(f"| pneumonia prevalence, estimated (EM; BBSE {prevalence['bbse']:.1%}) "
                         f"| {prevalence['estimate']:.1%} [{low:.1%}-{high:.1%}] "
                         f"| {prevalence['reference']:.1%} |")  # fmt: skip
        lines += ["", _live_line(summary["live"])]
    if summary.get("retrain"):
        lines += ["", f"Retrain: {summary['retrain']}"]
    if report is not None and summary.get("report_url"):
        lines += ["", f"Report (verdict, then Evidently's charts): [in the MLflow run]"
                      f"({summary['report_url']}); on disk `{report}`"]  # fmt: skip
    elif report is not None:
        lines += [
            "",
            f"Report (verdict, then Evidently's charts; works offline): on disk `{report}`",
        ]
    return "\n".join(lines) + "\n"


def _live_line(live: dict[str, Any]) -> str:
    if "metrics" not in live:
        return f"Live performance: {live.get('note', 'no feedback')}."
    parts = []
    for name, value in live["metrics"].items():
        low, high = live["intervals"].get(name) or [float("nan")] * 2
        parts.append(f"{name} {value:.1%} ({low:.1%}-{high:.1%})")
    return f"Live performance on {live['n']} reviewed images: " + ", ".join(parts) + "."


@flow(name="monitor", log_prints=True)
def monitor(
    workspace: str = ".",
    params: str = "params.yaml",
    since: str | None = None,
    until: str | None = None,
) -> dict[str, Any]:
    """Compare the last ``monitor.window_hours`` (or [since, until), naive UTC ISO times) of
    the prediction log with the reference; record and publish the verdict."""
    root = Path(workspace).resolve()
    params_path = (root / params).resolve()
    settings = load_settings(params_path)
    end = datetime.fromisoformat(until) if until else utcnow()
    start = (
        datetime.fromisoformat(since)
        if since
        else end - timedelta(hours=settings.monitor.window_hours)
    )
    window = read_window(root, params_path, start, end)
    assessment = assess_window(root, params_path, window, start, end)
    summary = assessment.summary
    report = save_report(assessment.snapshot, settings, root, end, summary)
    summary["report"] = str(report)
    summary["mlflow_run_id"] = log_to_mlflow(settings, root, summary, report)
    if summary["mlflow_run_id"]:
        from flows.retrain import artifact_url
        from pneumo import tracking

        try:  # an HTTP link the Prefect UI can open (a file:// one is refused by browsers)
            run = tracking.run_url(settings, Workspace(root), summary["mlflow_run_id"])
            summary["report_url"] = artifact_url(run, report.name)
        except Exception as exc:  # noqa: BLE001 - a missing link must not fail the monitor
            log.warning("monitor: no MLflow link for the report: %s", exc)
    if summary["status"] == "alert":
        summary["retrain"] = (
            start_retrain(summary["reasons"])
            if settings.monitor.retrain_on_alert
            else "not started: monitor.retrain_on_alert is off"
        )
    _store(settings, root).add_verdict(summary)
    create_markdown_artifact(
        key="monitor-verdict",
        markdown=verdict_markdown(summary, report),
        description="the monitor's verdict, its reasons and figures",
    )
    # Each reason names its own level ("warn: ..."): the status once, then the reasons.
    print(
        f"monitor verdict: {summary['status']}\n"
        + "\n".join(f"  - {r}" for r in summary["reasons"])
    )
    return summary
