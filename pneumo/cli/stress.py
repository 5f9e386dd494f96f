"""`pneumo stress`: the validation split under a fixed battery of acquisition shifts."""

from __future__ import annotations

import argparse

from pneumo.cli import Command, load_settings_of, workspace_of


def run(args: argparse.Namespace) -> int:
    from pneumo.evaluation.stress import stress

    report = stress(load_settings_of(args), workspace_of(args))
    clean, summary = report["clean"], report["summary"]
    print(f"threshold {report['threshold']:.4f} (from models/decision.json); {report['n']} images")
    print(f"{'shift':<16}{'sev':>4}{'ROC-AUC':>9}{'sens':>7}{'spec':>7}")
    print(f"{'clean':<16}{'':>4}{clean['roc_auc']:>9.4f}{clean['sensitivity']:>7.3f}"
          f"{clean['specificity']:>7.3f}")  # fmt: skip
    for name, values in report["shifts"].items():
        for severity in ("1", "2"):
            v = values[severity]
            print(f"{name:<16}{severity:>4}{v['roc_auc']:>9.4f}{v['sensitivity']:>7.3f}"
                  f"{v['specificity']:>7.3f}")  # fmt: skip
    print(
        f"mean ROC-AUC {summary['mean_roc_auc']:.4f}; worst {summary['worst_roc_auc']:.4f} "
        f"({summary['worst_roc_auc_shift']}); worst specificity {summary['worst_specificity']:.3f} "
        f"({summary['worst_specificity_shift']}); worst sensitivity "
        f"{summary['worst_sensitivity']:.3f} ({summary['worst_sensitivity_shift']})"
    )
    return 0


COMMAND = Command(
    "stress",
    help="score the model on the validation split under acquisition shifts (two severities each)",
    description="Darker, brighter, lower contrast, gamma, JPEG 30/10, low resolution, blur, noise, "
    "zoom in/out, aspect, collimation bars and burned-in markers, made from the validation "
    "radiographs with a fixed seed (stress.seed) and scored at the validation-chosen threshold; "
    "then the counterfactual swaps (the classes trade sharpness), threshold and referral rules on "
    "simulated sites, and the network at bf16 and int8 against fp32 on every one of those sets "
    "(stress.reduced_precision). Writes metrics/stress.json, plots/stress/, "
    "reports/adaptation.md and models/precision.json (what precision the service may run); the "
    "carved test split is not used, the train split only for int8's calibration.",
    handler=run,
)
