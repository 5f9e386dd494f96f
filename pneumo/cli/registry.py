"""`pneumo registry register | status | promote | rollback`: the MLflow registry by hand."""

from __future__ import annotations

import argparse
import json

from pneumo.cli import Command, arg, load_settings_of, workspace_of


def register(args: argparse.Namespace) -> int:
    from pneumo import registry

    workspace = workspace_of(args)
    verdict = registry.register_and_gate(load_settings_of(args), workspace)
    print(registry.verdict_table(verdict))
    print(f"verdict written to {workspace.gate_verdict}")
    return 0  # a kept champion is a verdict, not an error


def promote(args: argparse.Namespace) -> int:
    from pneumo import registry

    result = registry.promote(load_settings_of(args), workspace_of(args), args.version, args.reason)
    old = f"v{result['previous']} -> previous" if result["previous"] else "no earlier champion"
    print(f"{result['model_name']}: v{result['champion']} is the champion ({old})")
    return 0


def rollback(args: argparse.Namespace) -> int:
    from pneumo import registry

    result = registry.rollback(load_settings_of(args), workspace_of(args), args.reason or "")
    print(
        f"{result['model_name']}: champion v{result['demoted']} -> v{result['champion']} "
        "('previous' cleared)"
    )
    return 0


def status(args: argparse.Namespace) -> int:
    from pneumo import registry

    state = registry.status(load_settings_of(args), workspace_of(args))
    if args.json:
        print(json.dumps(state, indent=2))
        return 0
    print(f"{state['model_name']} at {state['tracking_uri']}")
    if not state["versions"]:
        print("no versions yet: run `pneumo registry register` after `pneumo evaluate`")
    for v in state["versions"]:
        m = v["metrics"]
        shown = "  ".join(
            f"{k} {m[k]:.4f}" for k in ("roc_auc", "sensitivity", "specificity") if k in m
        )
        aliases = ",".join(v["aliases"]) or "-"
        note = "  (rolled back)" if v["rolled_back"] else ""
        print(f"v{v['version']:<4}{aliases:<22}{v['validation_status']:<12}{shown}{note}")
    return 0


COMMAND = Command(
    "registry",
    help="register the evaluated model and gate its promotion; status, promote, rollback",
    description="register: new version (alias challenger), promoted to champion only if it meets "
    "the registry.* floors and trails the champion, re-scored on this test split, by at most "
    "registry.margin. promote/rollback move the champion deliberately and record why.",
    actions=(
        Command(
            "register", help="register + gate; prints champion vs challenger", handler=register
        ),
        Command(
            "status",
            help="aliases and versions with metrics and verdicts",
            handler=status,
            arguments=(arg("--json", action="store_true", help="machine-readable output"),),
        ),
        Command(
            "promote",
            help="make a version the champion, bypassing the gate",
            handler=promote,
            arguments=(
                arg("--version", type=int, required=True, help="model version number"),
                arg("--reason", required=True, help="why (recorded in the version's tags)"),
            ),
        ),
        Command(
            "rollback",
            help="champion <- previous (the demoted one is tagged)",
            handler=rollback,
            arguments=(arg("--reason", help="why (recorded in the demoted version's tags)"),),
        ),
    ),
)
