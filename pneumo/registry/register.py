"""Register the evaluated model as a version (alias ``challenger``) and let the gate judge it.

Every evaluated model becomes one version of ``registry.model_name``. A version's files are its
logged model's artifacts: ``artifacts/model.pt`` (logged by training as the pyfunc's ``model``
artifact) and ``decision.json`` (added here). Registering a training run again creates no second
version, and a version the gate already judged keeps its recorded verdict.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pneumo import tracking
from pneumo.config import Settings
from pneumo.decision import Decision
from pneumo.decision.metrics import point_metrics
from pneumo.errors import PipelineOrderError, PneumoError
from pneumo.registry.client import WEIGHTS_ARTIFACT, RegistryClient, RegistryError, connect
from pneumo.registry.gate import REPORTED_METRICS, floors, gate
from pneumo.registry.promotion import (
    CHALLENGER,
    CHAMPION,
    alias_transaction,
    make_champion,
    now,
    user,
)
from pneumo.registry.rescore import rescore
from pneumo.registry.verdict import GateVerdict, model_description, version_description
from pneumo.workspace import Workspace, atomic_path, sha256_file

if TYPE_CHECKING:
    import numpy as np
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

VERDICT_TAG = "gate_verdict"
_LEGACY_VERDICT_TAG = "gate_decision"  # what versions registered before the rename carry


def register_and_gate(settings: Settings, workspace: Workspace = Workspace()) -> GateVerdict:
    """Register the evaluated model (alias challenger) and promote it if it passes the gate.

    The verdict is also written to ``reports/gate_verdict.json``.
    """
    from pneumo.data.preprocess import load_arrays

    run_id = _read_run_id(workspace)
    report = _read_report(workspace)
    decision = Decision.load(workspace.decision)
    test = load_arrays(workspace.arrays("test"))
    _check_same_test_split(report, test["labels"], workspace)
    test_metrics = point_metrics(report["test"], REPORTED_METRICS)
    challenger = {**test_metrics, **counterfactual_metrics(workspace)}
    data_sha256 = sha256_file(workspace.arrays("test"))
    with connect(settings, workspace) as registry:
        registry.ensure_registered_model(model_description(settings.registry))
        evaluated = {**_metric_tags("test_", test_metrics), "data_test_sha256": data_sha256}
        version, created = _register(
            registry, run_id, settings, workspace, decision, test, evaluated
        )
        status = version.tags.get("validation_status", "pending")
        if not created and status != "pending":
            verdict = _recorded_verdict(version, settings, challenger, data_sha256)
            log.info("run %s is already version %s (%s)", run_id, verdict.version, verdict.status)
        else:
            verdict = _judge(registry, version, created, challenger, data_sha256, test, settings,
                             workspace)  # fmt: skip
            _apply(registry, verdict, report, settings, workspace)
    with atomic_path(workspace.gate_verdict) as tmp:
        tmp.write_text(json.dumps(verdict.to_json(), indent=2) + "\n")
    return verdict


def counterfactual_metrics(workspace: Workspace) -> dict[str, float]:
    """The counterfactual battery's sensitivity and specificity (metrics/stress.json); NaN when
    the stress stage has not run, which the gate refuses with the command to run."""
    path = workspace.stress_metrics
    summary = {}
    if path.is_file():
        summary = (json.loads(path.read_text()).get("counterfactual") or {}).get("summary") or {}
    else:
        log.warning("%s not found: run `pneumo stress` before registering", path)
    return {f"counterfactual_{name}": float(summary.get(name, math.nan))
            for name in ("sensitivity", "specificity")}  # fmt: skip


def _judge(
    registry: RegistryClient,
    version: ModelVersion,
    created: bool,
    challenger: dict[str, float],
    data_sha256: str,
    test: dict[str, np.ndarray],
    settings: Settings,
    workspace: Workspace,
) -> GateVerdict:
    """Re-score the champion (if any) and apply the gate's rule."""
    number = int(version.version)
    champion = registry.aliases().get(CHAMPION)
    if champion == number:
        champion = None  # an earlier attempt promoted it before being interrupted
    champion_metrics, problem = None, None
    if champion is not None:
        try:
            champion_metrics = rescore(registry, champion, test, settings, workspace)
        except (PneumoError, RuntimeError, ValueError, KeyError) as exc:
            # Fail closed: a champion we cannot measure is kept, and the reason recorded.
            problem = (
                f"champion v{champion} could not be re-scored on this test split ({exc}); "
                "the champion is kept: promote deliberately with `pneumo registry promote`"
            )
    cfg = settings.registry
    passed, reasons = gate(
        challenger, champion_metrics, cfg, champion, problem, counterfactual=True
    )
    return GateVerdict(
        model_name=cfg.model_name, version=number, run_id=version.run_id, passed=passed,
        reasons=reasons, challenger_metrics=challenger, champion_version=champion,
        champion_metrics=champion_metrics, floors=floors(cfg, counterfactual=True),
        margin=cfg.margin,
        primary_metrics=list(cfg.primary_metrics), data_sha256=data_sha256, decided_at=now(),
        newly_registered=created, champion_after=number if passed else champion,
    )  # fmt: skip


def _apply(
    registry: RegistryClient,
    verdict: GateVerdict,
    report: dict[str, Any],
    settings: Settings,
    workspace: Workspace,
) -> None:
    """Record the verdict on the version (tags, description), then move the aliases if it passed."""
    from pneumo.evaluation.evaluate import metrics_table

    number = verdict.version
    registry.set_tags(number, _verdict_tags(verdict, workspace))
    table = metrics_table(report)
    description = version_description(
        verdict, table[table["split"] == "test"], settings.evaluate.ci_level
    )
    registry.describe_version(number, description)
    if verdict.passed:
        with alias_transaction(registry, f"promotion of version {number}"):
            make_champion(registry, number)
            registry.set_tags(number, {"validation_status": "passed"})
        log.info("version %d is the new champion (was %s)", number, verdict.champion_version)
    else:
        registry.set_tags(number, {"validation_status": "failed"})
        log.info("version %d failed the gate; champion %s kept", number, verdict.champion_version)


def _recorded_verdict(
    version: ModelVersion, settings: Settings, metrics: dict[str, float], data_sha256: str
) -> GateVerdict:
    """The verdict an earlier registration recorded for this version (no second gate run)."""
    status_now = version.tags["validation_status"]
    recorded = version.tags.get(VERDICT_TAG) or version.tags.get(_LEGACY_VERDICT_TAG)
    if recorded:
        earlier = json.loads(recorded)
        if status_now != ("passed" if earlier["passed"] else "failed"):
            earlier["reasons"] = [*earlier["reasons"], f"validation_status is now {status_now}"]
        return GateVerdict.from_json({**earlier, "newly_registered": False})
    cfg = settings.registry
    return GateVerdict(  # decided by hand (promote) before any gate ran
        model_name=cfg.model_name, version=int(version.version), run_id=version.run_id,
        passed=status_now in ("passed", "overridden"),
        reasons=[f"validation_status is {status_now}; no gate verdict was recorded"],
        challenger_metrics=metrics, champion_version=None, champion_metrics=None,
        floors=floors(cfg), margin=cfg.margin, primary_metrics=list(cfg.primary_metrics),
        data_sha256=data_sha256, decided_at=version.tags.get("override_at", now()),
        newly_registered=False,
    )  # fmt: skip


def _register(
    registry: RegistryClient,
    run_id: str,
    settings: Settings,
    workspace: Workspace,
    decision: Decision,
    test: dict[str, np.ndarray],
    evaluated: dict[str, str],
) -> tuple[ModelVersion, bool]:
    """The run's version (created with alias challenger when new) and whether it is new.

    ``evaluated``: tags of the evaluation (test metrics, test split hash) that the version carries
    from the start, so `pneumo registry status` shows them even before the gate has run.
    """
    model_sha256 = sha256_file(workspace.model)
    existing = _existing_version(registry, run_id, model_sha256, sha256_file(workspace.decision))
    if existing is not None:
        guard = sha256_file(workspace.guard) if workspace.guard.is_file() else "none"
        if existing.tags.get("guard_sha256", guard) != guard:
            log.warning("models/guard.pt differs from the guard registered with %s v%s (refitted "
                        "since): a registered version is immutable, so it keeps serving with its "
                        "own; retrain to register a version with this one", existing.name,
                        existing.version)  # fmt: skip
        return existing, False
    run = registry.run(run_id)
    logged = registry.logged_model(run, workspace.model, test["images"][:2])
    with tempfile.TemporaryDirectory(prefix="pneumo-registry-") as tmp:
        weights = registry.download(logged.artifact_location, WEIGHTS_ARTIFACT, Path(tmp))
        if sha256_file(weights) != model_sha256:
            raise RegistryError(
                f"models/model.pt differs from the weights logged in run {run_id}: the file changed "
                "after training; rerun `pneumo train` (or `dvc repro`) so the run and the file agree"
            )
    shipped = [workspace.decision, *([workspace.guard] if workspace.guard.is_file() else [])]
    shipped += [workspace.precision] if workspace.precision.is_file() else []
    registry.add_model_files(logged.model_id, shipped)
    tags = {**_registration_tags(run, workspace, decision, model_sha256), **evaluated}
    pending = "Registered; the promotion gate has not judged this version yet."
    version, created = registry.create_version(logged, run_id, tags, pending)
    if created:
        registry.set_alias(CHALLENGER, int(version.version))
        log.info("registered run %s as %s version %s", run_id, registry.name, version.version)
    return version, created


def _existing_version(
    registry: RegistryClient, run_id: str, model_sha256: str, decision_sha256: str
) -> ModelVersion | None:
    """This model's version of the run, if any; refuses a changed decision.json or model.pt."""
    for existing in registry.versions(run_id, any_name=True):
        recorded = existing.tags.get("decision_sha256")
        if recorded and recorded != decision_sha256:
            raise RegistryError(
                f"run {run_id} is already registered ({existing.name} v{existing.version}) with "
                f"another decision.json (threshold {existing.tags.get('threshold')}); a registered "
                "version is immutable: retrain to register a new model, or restore the evaluate "
                "settings that chose its threshold"
            )
        if existing.name == registry.name:
            if existing.tags.get("model_sha256") not in (None, model_sha256):
                raise RegistryError(
                    f"models/model.pt differs from version {existing.version} of run {run_id}: "
                    "rerun `pneumo train` so the run and the file agree"
                )
            return existing
    return None


def _registration_tags(
    run: Run, workspace: Workspace, decision: Decision, model_sha256: str
) -> dict[str, str]:
    from pneumo.models import load_model

    _, metadata = load_model(workspace.model)
    return {
        "validation_status": "pending",
        "model_sha256": model_sha256,
        "decision_sha256": sha256_file(workspace.decision),
        "guard_sha256": sha256_file(workspace.guard) if workspace.guard.is_file() else "none",
        "threshold": f"{decision.threshold:.6g}",
        "threshold_rule": decision.rule,
        "tta": str(decision.tta).lower(),
        "arch": str(metadata.get("arch", "")),
        "image_size": str(metadata.get("image_size", "")),
        "registered_at": now(),
        "registered_by": user(),
        "train_git_commit": run.data.tags.get("git_commit", "unknown"),
    }


def _verdict_tags(verdict: GateVerdict, workspace: Workspace) -> dict[str, str]:
    """The audit log on the version: the rule applied, the numbers compared, the verdict."""
    tags = {
        "validation_reasons": "; ".join(verdict.reasons),
        "validated_at": verdict.decided_at,
        "validated_by": user(),
        "gate_floors": ", ".join(f"{k}>={v:g}" for k, v in verdict.floors.items()),
        "gate_margin": f"{verdict.margin:g} on {', '.join(verdict.primary_metrics)}",
        "gate_champion_version": str(verdict.champion_version or "none"),
        "git_commit": tracking.git_commit(workspace.root) or "unknown",
        VERDICT_TAG: json.dumps(verdict.to_json()),
        "data_test_sha256": verdict.data_sha256,
        **_metric_tags("test_", verdict.challenger_metrics),
        **_metric_tags("gate_champion_", verdict.champion_metrics),
    }
    arrays_md5 = tracking.dvc_tags(workspace.root).get("dvc_arrays_md5")
    if arrays_md5:
        tags["dvc_arrays_md5"] = arrays_md5
    return tags


def _metric_tags(prefix: str, metrics: dict[str, float] | None) -> dict[str, str]:
    return {f"{prefix}{k}": f"{v:.6g}" for k, v in (metrics or {}).items() if math.isfinite(v)}


def _read_run_id(workspace: Workspace) -> str:
    if not workspace.run_id.is_file():
        raise PipelineOrderError(
            f"{workspace.run_id} not found: the model was trained without MLflow tracking; run "
            "`pneumo train` with a reachable tracking.uri"
        )
    return workspace.run_id.read_text().strip()


def _read_report(workspace: Workspace) -> dict[str, Any]:
    path, hint = workspace.eval_metrics, "run `pneumo evaluate` first"
    if not path.is_file():
        raise PipelineOrderError(f"{path} not found: {hint}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PipelineOrderError(f"{path} is not valid JSON ({exc}): {hint}") from exc


def _check_same_test_split(
    report: dict[str, Any], labels: np.ndarray, workspace: Workspace
) -> None:
    """metrics.json must describe the test arrays the champion will be re-scored on."""
    scored = report.get("test", {}).get("n")
    if scored != len(labels):
        raise PipelineOrderError(
            f"{workspace.eval_metrics} scored {scored} test images but "
            f"{workspace.arrays('test')} holds {len(labels)}: rerun `pneumo evaluate`"
        )
