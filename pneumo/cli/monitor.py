"""`pneumo monitor status | run`: the last verdict of the monitor flow, or one run of it now."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pneumo.cli import Command, arg, load_settings_of, workspace_of


def status(args: argparse.Namespace) -> int:
    from pneumo.monitor.store import PredictionStore, resolve_url

    settings, root = load_settings_of(args), workspace_of(args).root
    store = PredictionStore(
        resolve_url(settings.monitor.store_url, root), settings.monitor.store_schema
    )
    verdict = store.latest_verdict()
    if verdict is None:
        print("no verdict yet: run `pneumo monitor run` or schedule `pneumo schedule monitor`")
        return 0
    if args.json:
        print(json.dumps(verdict, indent=2, default=str))
        return 0
    print("\n".join(describe(verdict)))
    return 0


def describe(verdict: dict[str, Any]) -> list[str]:
    """The verdict and its figures, for a terminal."""
    window = verdict["window"]
    lines = [
        f"{verdict['status'].upper()} (recorded {verdict['recorded_at']})",
        f"window {window['start']} .. {window['end']}: {verdict['n']} images, "
        f"{verdict['requests']} requests",
        *(f"  - {reason}" for reason in verdict["reasons"]),
    ]
    if "input_drift" in verdict:
        lines.append("input drift (score / threshold):")
        for column, values in verdict["input_drift"].items():
            mark = "DRIFT" if values["drifted"] else "ok"
            lines.append(
                f"  {column:<20}{values['score']:>9.3f} / {values['threshold']:<6g} {mark}"
            )
        positive = verdict["prediction_drift"]["positive_rate"]
        for name, rate in (("positive rate", positive), ("OOD rate", verdict["ood_rate"]),
                           ("referral rate", verdict["referral_rate"])):  # fmt: skip
            lines.append(f"{name:<22}{rate['window']:>8.1%}  (reference {rate['reference']:.1%})")
        live = verdict["live"]
        if "metrics" in live:
            for name, value in live["metrics"].items():
                low, high = live["intervals"].get(name) or (float("nan"), float("nan"))
                lines.append(f"live {name:<17}{value:>8.1%}  ({low:.1%}-{high:.1%}, n={live['n']})")
        else:
            lines.append(f"live performance: {live.get('note')}")
    for key in ("retrain", "report", "mlflow_run_id"):
        if verdict.get(key):
            lines.append(f"{key}: {verdict[key]}")
    return lines


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from flows.local_api import prefect_console
    from flows.monitor import monitor

    prefect_console()

    load_settings_of(args)
    summary = monitor(workspace=str(workspace_of(args).root), params=Path(args.params).name,
                      since=args.since, until=args.until)  # fmt: skip
    print(json.dumps({k: summary[k] for k in ("status", "reasons", "n", "report")}, indent=2))
    return 0


COMMAND = Command(
    "monitor",
    help="the monitor flow: the last verdict (status) or one run now (run)",
    actions=(
        Command(
            "status",
            help="the last verdict of the monitor flow and its figures, from the store",
            handler=status,
            arguments=(arg("--json", action="store_true", help="machine-readable output"),),
        ),
        Command(
            "run",
            help="run the monitor flow once on the recent window (monitor.window_hours)",
            handler=run,
            arguments=(
                arg("--since", help="window start, UTC ISO time"),
                arg("--until", help="window end, UTC ISO time"),
            ),
        ),
    ),
)
