"""Register a site-calibrated version: the champion's weights with a site's own operating point.

The version gets its own MLflow run (``calibrate-NAME``: the site metrics and the sample's
identity), the tag ``site=NAME`` and, only when the gate passes it on the site's sample, the
alias ``site-NAME``. The champion's aliases are never touched.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pneumo import tracking
from pneumo.config import Settings
from pneumo.decision import Decision
from pneumo.registry.client import connect
from pneumo.registry.gate import REPORTED_METRICS, floors, gate
from pneumo.registry.promotion import alias_transaction, now, user
from pneumo.registry.verdict import GateVerdict
from pneumo.workspace import Workspace, sha256_file

log = logging.getLogger(__name__)


def site_alias(site: str) -> str:
    return f"site-{site}"


@dataclass(frozen=True)
class SiteCandidate:
    """What calibration or adaptation produced: the files to register and how they scored."""

    site: str
    model: Path
    decision: Path
    guard: Path | None
    calibrated_from: int  # the registry version whose weights (and guard) were adapted
    site_metrics: dict[str, float]  # the site version on the site sample (out of fold)
    reference_metrics: dict[str, float]  # that version, unchanged, on the same images
    sample_sha256: str  # identity of the site sample (its images' sha256s)
    report_files: list[Path]
    facts: dict[str, str]  # sample counts, prevalence, batchnorm: shown as tags
    # How the figures were made, for the version's description.
    how: str = ("labelled sample; every figure is out of fold: each image graded by a threshold "
                "chosen on other patients")  # fmt: skip


def register_site_version(
    settings: Settings, workspace: Workspace, candidate: SiteCandidate, example: Any
) -> GateVerdict:
    """A new version with the site's decision; alias ``site-NAME`` only if the gate passes."""
    metrics = {f"site/{k}": v for k, v in candidate.site_metrics.items()}
    run_id = tracking.log_standalone_run(settings, workspace, f"calibrate-{candidate.site}",
                                         candidate.report_files, metrics)  # fmt: skip
    decision = Decision.load(candidate.decision)
    cfg = settings.registry
    with connect(settings, workspace) as registry:
        logged = registry.logged_model(registry.run(run_id), candidate.model, example)
        shipped = [candidate.decision, *([candidate.guard] if candidate.guard else [])]
        registry.add_model_files(logged.model_id, shipped)
        tags = {
            "site": candidate.site, "calibrated_from": f"v{candidate.calibrated_from}",
            "validation_status": "pending", "model_sha256": sha256_file(candidate.model),
            "decision_sha256": sha256_file(candidate.decision), "threshold": f"{decision.threshold:.6g}",
            "threshold_rule": decision.rule, "prior_log_odds": f"{decision.prior_log_odds:.6g}",
            "tta": str(decision.tta).lower(), "site_sample_sha256": candidate.sample_sha256,
            "registered_at": now(), "registered_by": user(), **candidate.facts,
        }  # fmt: skip
        pending = f"Site calibration for {candidate.site}; the gate has not judged it yet."
        version, _ = registry.create_version(logged, run_id, tags, pending)
        number = int(version.version)
        passed, reasons = gate(candidate.site_metrics, candidate.reference_metrics, cfg,
                               candidate.calibrated_from)  # fmt: skip
        verdict = GateVerdict(
            model_name=cfg.model_name, version=number, run_id=run_id, passed=passed,
            reasons=reasons, challenger_metrics=_reported(candidate.site_metrics),
            champion_version=candidate.calibrated_from,
            champion_metrics=_reported(candidate.reference_metrics), floors=floors(cfg),
            margin=cfg.margin, primary_metrics=list(cfg.primary_metrics),
            data_sha256=candidate.sample_sha256, decided_at=now(), newly_registered=True,
        )  # fmt: skip
        registry.set_tags(number, {"gate_verdict": json.dumps(verdict.to_json()),
                                   "validation_reasons": "; ".join(reasons)})  # fmt: skip
        registry.describe_version(number, _description(candidate, verdict))
        if passed:
            with alias_transaction(registry, f"site alias of version {number}"):
                registry.set_alias(site_alias(candidate.site), number)
                registry.set_tags(number, {"validation_status": "passed"})
        else:
            registry.set_tags(number, {"validation_status": "failed"})
    log.info("site %s: version %d %s", candidate.site, number, "passed" if passed else "failed")
    return verdict


def _reported(metrics: dict[str, float]) -> dict[str, float]:
    return {name: float(metrics[name]) for name in REPORTED_METRICS if name in metrics}


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _description(candidate: SiteCandidate, verdict: GateVerdict) -> str:
    rows = "\n".join(
        f"| {metric} | {_cell(row['champion'])} | {_cell(row['challenger'])} |"
        for metric, row in verdict.comparison().items()
    )
    return (
        f"Site version of v{candidate.calibrated_from} for **{candidate.site}**: same network, "
        f"operating point re-chosen for the site ({candidate.how}).\n\n"
        f"| metric | v{candidate.calibrated_from} as is | this version |\n"
        f"|---|---|---|\n{rows}\n\nVerdict: {'passed' if verdict.passed else 'failed'}. "
        + " ".join(verdict.reasons)
    )
