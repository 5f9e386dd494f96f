"""The one place that talks to the MLflow model registry: register, gate, promote, roll back, fetch.

Every evaluated model becomes one version of ``registry.model_name`` (alias ``challenger``). It
replaces the ``champion`` only when it reaches the floors of params.yaml and does not trail the
champion -- whose own weights are re-scored on this workspace's test split -- by more than
``registry.margin``. Every decision is written as version tags, so the registry is its own audit
log. Aliases only; the deprecated stages are never used.

A version's files are its logged model's artifacts: ``artifacts/model.pt`` (the weights, logged by
training as the pyfunc's ``model`` artifact) and ``decision.json`` (the threshold, added here).
"""

from __future__ import annotations

import getpass
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import mlflow  # telemetry is switched off in pneumo/__init__.py, before this import
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pneumo import tracking
from pneumo.config import RegistrySettings, Settings
from pneumo.errors import PipelineOrderError, PneumoError
from pneumo.workspace import Workspace, atomic_path, sha256_file

if TYPE_CHECKING:
    import numpy as np
    from mlflow.entities import LoggedModel, Run
    from mlflow.entities.model_registry import ModelVersion

    from pneumo.predict import Predictor

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
MANAGED_ALIASES: tuple[str, ...] = (CHAMPION, CHALLENGER, PREVIOUS)
WEIGHTS_ARTIFACT = "artifacts/model.pt"  # where mlflow.pyfunc stores the "model" artifact
DECISION_ARTIFACT = "decision.json"
REPORTED_METRICS: tuple[str, ...] = (
    "roc_auc", "accuracy", "sensitivity", "specificity", "f1", "pr_auc",
)  # fmt: skip
FLOOR_KEYS: dict[str, str] = {
    "roc_auc": "min_roc_auc",
    "sensitivity": "min_sensitivity",
    "specificity": "min_specificity",
}
RETRY_ATTEMPTS = 3
RETRY_DELAY_S = 1.0  # doubled after each failed attempt
# MLflow's own HTTP client retries 7 times with a 2 s exponential backoff (minutes against a dead
# server); these bounds apply unless the user has set the variables.
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
_T = TypeVar("_T")


class RegistryError(PneumoError):
    """The registry holds nothing to act on, or refused the operation."""


class RegistryUnavailableError(RegistryError):
    """The tracking / registry server did not answer after bounded retries."""


class PromotionError(RegistryError):
    """Moving the aliases failed part-way; they were put back as they were."""


# ---------------------------------------------------------------- retries for transient failures


def is_transient(exc: BaseException) -> bool:
    """Connection errors, timeouts, 502/503/504, TEMPORARILY_UNAVAILABLE and a locked SQLite file.

    A bare 500 is not retried: MlflowException uses INTERNAL_ERROR as the default code for any
    failure, deterministic ones included (and MLflow's HTTP client already retries real 500s).
    """
    import requests

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(
            current,
            ConnectionError | TimeoutError | requests.ConnectionError | requests.Timeout,
        ) or isinstance(current, requests.exceptions.RetryError):
            return True
        if isinstance(current, MlflowException):
            if current.error_code == "TEMPORARILY_UNAVAILABLE":
                return True
            if current.get_http_status_code() in (502, 503, 504):
                return True
            if "database is locked" in str(current.message):
                return True
        # MLflow re-raises request failures inside `except`, so the cause is often the context.
        current = current.__cause__ or current.__context__
    return False


def with_retries(
    call: Callable[[], _T],
    what: str,
    where: str,
    attempts: int | None = None,
    delay_s: float | None = None,
) -> _T:
    """Run ``call``; retry only transient failures, a bounded number of times with backoff."""
    attempts = attempts or RETRY_ATTEMPTS
    delay = RETRY_DELAY_S if delay_s is None else delay_s
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt == attempts:
                raise RegistryUnavailableError(
                    f"{what} failed {attempts} times ({_first_line(exc)}): check that the MLflow "
                    f"server at {where} is running and reachable, or fix tracking.uri in params.yaml"
                ) from exc
            log.warning(
                "%s failed (%s); retry %d of %d", what, _first_line(exc), attempt, attempts - 1
            )
            time.sleep(delay * 2 ** (attempt - 1))
    raise AssertionError("unreachable")  # pragma: no cover


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0][:300]


@contextmanager
def _bounded_http_retries() -> Iterator[None]:
    """Apply :data:`_HTTP_DEFAULTS` for the duration of one registry operation."""
    added = [key for key in _HTTP_DEFAULTS if key not in os.environ]
    os.environ.update({key: _HTTP_DEFAULTS[key] for key in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


# ---------------------------------------------------------------- the client


class RegistryClient:
    """The registered model ``name`` in the store at ``uri``; every call retries transient failures."""

    def __init__(self, uri: str, name: str) -> None:
        self.uri = uri
        self.name = name
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    def _call(self, what: str, call: Callable[[], _T]) -> _T:
        return with_retries(call, f"MLflow {what}", self.uri)

    def aliases(self) -> dict[str, int]:
        """alias -> version; empty while the registered model does not exist."""
        try:
            model = self._call(
                "get_registered_model", lambda: self.client.get_registered_model(self.name)
            )
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return {}
            raise
        return {alias: int(version) for alias, version in model.aliases.items()}

    def version(self, version: int) -> ModelVersion:
        try:
            return self._call(
                "get_model_version", lambda: self.client.get_model_version(self.name, str(version))
            )
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise RegistryError(
                    f"{self.name} has no version {version}: list them with `pneumo registry status`"
                ) from exc
            raise

    def versions(self, run_id: str | None = None, any_name: bool = False) -> list[ModelVersion]:
        """Versions of this model (or of every model, ``any_name``), optionally of one run."""
        clauses = [] if any_name else [f"name = '{self.name}'"]
        if run_id:
            clauses.append(f"run_id = '{run_id}'")
        query = " and ".join(clauses) or None
        found = self._call(
            "search_model_versions", lambda: list(self.client.search_model_versions(query))
        )
        return sorted(found, key=lambda v: int(v.version))

    def run(self, run_id: str) -> Run:
        try:
            return self._call("get_run", lambda: self.client.get_run(run_id))
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise PipelineOrderError(
                    f"MLflow run {run_id} (models/run_id.txt) is not in {self.uri}: rerun "
                    "`pneumo train` against this tracking.uri"
                ) from exc
            raise

    def logged_models(self, experiment_id: str, run_id: str) -> list[LoggedModel]:
        query = f"source_run_id = '{run_id}' AND name = '{tracking.MODEL_NAME}'"
        found = self._call(
            "search_logged_models",
            lambda: list(self.client.search_logged_models([experiment_id], filter_string=query)),
        )
        return sorted(found, key=lambda m: m.creation_timestamp or 0)

    def add_model_files(self, model_id: str, files: list[Path]) -> None:
        """Upload files next to a logged model's MLmodel (same name = replaced)."""
        with tempfile.TemporaryDirectory(prefix="pneumo-registry-") as tmp:
            for path in files:
                shutil.copyfile(path, Path(tmp) / path.name)
            self._call(
                "log_model_artifacts", lambda: self.client.log_model_artifacts(model_id, tmp)
            )

    def create_version(
        self, source: str, run_id: str, model_id: str, tags: dict[str, str]
    ) -> tuple[ModelVersion, bool]:
        """The run's version, created only when none exists: a retry cannot create a second one."""
        self._ensure_registered_model()

        def find_or_create() -> tuple[ModelVersion, bool]:
            existing = list(
                self.client.search_model_versions(f"name = '{self.name}' and run_id = '{run_id}'")
            )
            if existing:
                return min(existing, key=lambda v: int(v.version)), False
            created = self.client.create_model_version(
                self.name, source, run_id=run_id, tags=tags, model_id=model_id
            )
            return created, True

        return self._call("create_model_version", find_or_create)

    def _ensure_registered_model(self) -> None:
        try:
            self._call(
                "create_registered_model",
                lambda: self.client.create_registered_model(
                    self.name, description="Pneumonia classifier; see pneumo/registry.py"
                ),
            )
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise

    def set_alias(self, alias: str, version: int) -> None:
        self._call(
            f"set alias {alias}",
            lambda: self.client.set_registered_model_alias(self.name, alias, str(version)),
        )

    def delete_alias(self, alias: str) -> None:
        self._call(
            f"delete alias {alias}",
            lambda: self.client.delete_registered_model_alias(self.name, alias),
        )

    def set_tags(self, version: int, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self._call(
                "set_model_version_tag",
                lambda key=key, value=value: self.client.set_model_version_tag(
                    self.name, str(version), key, str(value)
                ),
            )

    def download(self, base_uri: str, artifact: str, dest_dir: Path) -> Path:
        """Download one file of a logged model (``base_uri`` = its artifact location)."""
        local = self._call(
            f"download {artifact}",
            lambda: mlflow.artifacts.download_artifacts(
                artifact_uri=f"{base_uri.rstrip('/')}/{artifact}",
                dst_path=str(dest_dir),
                tracking_uri=self.uri,
            ),
        )
        return Path(local)

    def version_files(self, version: int, dest_dir: Path) -> dict[str, Path]:
        """Download a version's weights and decision into ``dest_dir``."""
        base = self._call(
            "get_model_version_download_uri",
            lambda: self.client.get_model_version_download_uri(self.name, str(version)),
        )
        files = {}
        for key, artifact in (("model", WEIGHTS_ARTIFACT), ("decision", DECISION_ARTIFACT)):
            try:
                files[key] = self.download(base, artifact, dest_dir / key)
            except MlflowException as exc:
                raise RegistryError(
                    f"{self.name} version {version} lacks {artifact} ({_first_line(exc)}): it was "
                    "not registered by `pneumo registry register`; register a new model"
                ) from exc
        return files


@contextmanager
def connect(settings: Settings, workspace: Workspace = Workspace()) -> Iterator[RegistryClient]:
    """A client for the configured store; MLflow's own errors become one-line RegistryErrors."""
    uri = tracking.resolve_uri(settings.tracking.uri, workspace)
    # MLflow resolves `models:/<id>` sources through the global URIs, not the client's.
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with _bounded_http_retries():
        try:
            yield RegistryClient(uri, settings.registry.model_name)
        except MlflowException as exc:
            raise RegistryError(f"MLflow at {uri}: {_first_line(exc)}") from exc


# ---------------------------------------------------------------- the gate


@dataclass(frozen=True)
class GateDecision:
    """What the promotion gate decided for one registered version, and why."""

    model_name: str
    version: int
    run_id: str
    passed: bool
    reasons: list[str]
    challenger_metrics: dict[str, float]
    champion_version: int | None  # the champion it was compared with
    champion_metrics: dict[str, float] | None  # re-scored on this workspace's test split
    floors: dict[str, float]
    margin: float
    primary_metrics: list[str]
    data_sha256: str
    decided_at: str
    newly_registered: bool = True
    champion_after: int | None = field(default=None)

    @property
    def status(self) -> str:
        return "passed" if self.passed else "failed"

    @property
    def verdict(self) -> str:
        if self.passed:
            replaced = f" (v{self.champion_version} -> previous)" if self.champion_version else ""
            return f"promoted: v{self.version} is the champion{replaced}"
        kept = f"v{self.champion_version}" if self.champion_version else "none"
        return f"not promoted: champion kept ({kept})"

    def comparison(self) -> dict[str, dict[str, float | None]]:
        """metric -> {champion, challenger, floor}: the rows of the decision table."""
        return {
            metric: {
                "champion": (self.champion_metrics or {}).get(metric),
                "challenger": self.challenger_metrics.get(metric),
                "floor": self.floors.get(metric),
            }
            for metric in REPORTED_METRICS
        }

    def to_json(self) -> dict[str, Any]:
        """Strict JSON: NaN metrics (a class absent from the test split) become null."""
        extra = {"status": self.status, "verdict": self.verdict, "comparison": self.comparison()}
        return _nan_to_none({**asdict(self), **extra})

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GateDecision:
        names = cls.__dataclass_fields__.keys()
        return cls(**{key: value for key, value in data.items() if key in names})


def floors(settings: RegistrySettings) -> dict[str, float]:
    """metric -> the minimum a challenger must reach on the test split."""
    return {metric: getattr(settings, key) for metric, key in FLOOR_KEYS.items()}


def gate(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    settings: RegistrySettings,
    champion_version: int | None = None,
) -> tuple[bool, list[str]]:
    """Floors, then non-inferiority to the champion; returns (passed, why). NaN never passes."""
    failures: list[str] = []
    notes: list[str] = []
    for metric, floor in floors(settings).items():
        value = challenger.get(metric, math.nan)
        if value >= floor:
            notes.append(f"{metric} {value:.4f} >= floor {floor:.4f}")
        else:
            failures.append(f"{metric} {value:.4f} is below the floor {floor:.4f}")
    if champion is None:
        notes.append("no champion yet: the first model that reaches the floors is promoted")
    else:
        name = f"champion v{champion_version}" if champion_version else "the champion"
        for metric in settings.primary_metrics:
            value = challenger.get(metric, math.nan)
            reference = champion.get(metric, math.nan)
            # A tiny tolerance: identical models must not fail on float noise.
            if value + 1e-12 >= reference - settings.margin:
                notes.append(
                    f"{metric} {value:.4f} vs {name} {reference:.4f}: within margin {settings.margin}"
                )
            else:
                failures.append(
                    f"{metric} {value:.4f} trails {name} ({reference:.4f}) by "
                    f"{reference - value:.4f}, more than the margin {settings.margin}"
                )
    return (not failures), (failures or notes)


def register_and_gate(settings: Settings, workspace: Workspace = Workspace()) -> GateDecision:
    """Register the evaluated model (alias challenger) and promote it if it passes the gate.

    Registering the same training run again creates no new version; a version whose gate already
    ran returns its recorded decision. The decision is also written to ``reports/registry_decision.json``.
    """
    from pneumo.data.preprocess import load_arrays

    cfg = settings.registry
    run_id = _read_run_id(workspace)
    report = _read_json(workspace.eval_metrics, "run `pneumo evaluate` first")
    decision_file = _read_json(workspace.decision, "run `pneumo evaluate` first")
    test = load_arrays(workspace.arrays("test"))
    _check_same_test_split(report, test["labels"], workspace)
    challenger_metrics = point_metrics(report["test"])
    data_sha256 = sha256_file(workspace.arrays("test"))
    with connect(settings, workspace) as registry:
        version, created = _register(
            registry, run_id, workspace, decision_file, challenger_metrics, data_sha256, test
        )
        if not created and version.tags.get("validation_status", "pending") != "pending":
            decision = _recorded_decision(version, settings, challenger_metrics, data_sha256)
            log.info("run %s is already version %s (%s)", run_id, decision.version, decision.status)
            _write_decision(workspace, decision)
            return decision
        number = int(version.version)
        champion = registry.aliases().get(CHAMPION)
        if champion == number:
            champion = None  # an earlier attempt promoted it before being interrupted
        champion_metrics: dict[str, float] | None = None
        rescore_problem = None
        if champion is not None:
            try:
                champion_metrics = _rescore(registry, champion, test, settings, workspace)
            except (PneumoError, RuntimeError, ValueError, KeyError) as exc:
                # Fail closed: a champion we cannot measure is kept, and the reason recorded.
                rescore_problem = (
                    f"champion v{champion} could not be re-scored on this test split ({exc}); "
                    "the champion is kept: promote deliberately with `pneumo registry promote`"
                )
        if rescore_problem:
            floors_met, why = gate(challenger_metrics, None, cfg)
            passed, reasons = False, [rescore_problem, *([] if floors_met else why)]
        else:
            passed, reasons = gate(challenger_metrics, champion_metrics, cfg, champion)
        decision = GateDecision(
            model_name=cfg.model_name,
            version=number,
            run_id=run_id,
            passed=passed,
            reasons=reasons,
            challenger_metrics=challenger_metrics,
            champion_version=champion,
            champion_metrics=champion_metrics,
            floors=floors(cfg),
            margin=cfg.margin,
            primary_metrics=list(cfg.primary_metrics),
            data_sha256=data_sha256,
            decided_at=_now(),
            newly_registered=created,
            champion_after=number if passed else champion,
        )
        registry.set_tags(number, _decision_tags(decision, workspace))
        if passed:
            with _alias_transaction(registry, f"promotion of version {number}"):
                _make_champion(registry, number)
                registry.set_tags(number, {"validation_status": "passed"})
            log.info("version %d is the new champion (was %s)", number, champion or "none")
        else:
            registry.set_tags(number, {"validation_status": "failed"})
            log.info("version %d failed the gate; champion %s kept", number, champion or "none")
    _write_decision(workspace, decision)
    return decision


def _recorded_decision(
    version: ModelVersion, settings: Settings, metrics: dict[str, float], data_sha256: str
) -> GateDecision:
    """The decision an earlier registration recorded for this version (no second gate run)."""
    status_now = version.tags["validation_status"]
    if "gate_decision" in version.tags:
        earlier = json.loads(version.tags["gate_decision"])
        if status_now != ("passed" if earlier["passed"] else "failed"):
            earlier["reasons"] = [*earlier["reasons"], f"validation_status is now {status_now}"]
        return GateDecision.from_json({**earlier, "newly_registered": False})
    cfg = settings.registry
    return GateDecision(  # decided by hand (promote) before any gate ran
        model_name=cfg.model_name,
        version=int(version.version),
        run_id=version.run_id,
        passed=status_now in ("passed", "overridden"),
        reasons=[f"validation_status is {status_now}; no gate decision was recorded"],
        challenger_metrics=metrics,
        champion_version=None,
        champion_metrics=None,
        floors=floors(cfg),
        margin=cfg.margin,
        primary_metrics=list(cfg.primary_metrics),
        data_sha256=data_sha256,
        decided_at=version.tags.get("override_at", _now()),
        newly_registered=False,
    )


def point_metrics(values: dict[str, Any]) -> dict[str, float]:
    """The gate's metrics from one split of an evaluation report (NaN when absent)."""
    return {name: float(values.get(name, math.nan)) for name in REPORTED_METRICS}


def _register(
    registry: RegistryClient,
    run_id: str,
    workspace: Workspace,
    decision: dict[str, Any],
    metrics: dict[str, float],
    data_sha256: str,
    test: dict[str, np.ndarray],
) -> tuple[ModelVersion, bool]:
    """The run's version of the model (created with alias challenger when new) and whether it is new."""
    model_sha256 = sha256_file(workspace.model)
    decision_sha256 = sha256_file(workspace.decision)
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
            log.debug("run %s is already version %s of %s", run_id, existing.version, registry.name)
            return existing, False

    run = registry.run(run_id)
    logged = _logged_model(registry, run, workspace, test)
    with tempfile.TemporaryDirectory(prefix="pneumo-registry-") as tmp:
        weights = registry.download(logged.artifact_location, WEIGHTS_ARTIFACT, Path(tmp))
        if sha256_file(weights) != model_sha256:
            raise RegistryError(
                f"models/model.pt differs from the weights logged in run {run_id}: the file changed "
                "after training; rerun `pneumo train` (or `dvc repro`) so the run and the file agree"
            )
    registry.add_model_files(logged.model_id, [workspace.decision])
    from pneumo.models import load_model

    _, metadata = load_model(workspace.model)
    tags = {
        "validation_status": "pending",
        "model_sha256": model_sha256,
        "decision_sha256": decision_sha256,
        "threshold": f"{float(decision['threshold']):.6g}",
        "threshold_rule": str(decision.get("rule", "")),
        "tta": str(bool(decision.get("tta", False))).lower(),
        "arch": str(metadata.get("arch", "")),
        "image_size": str(metadata.get("image_size", "")),
        "registered_at": _now(),
        "registered_by": _user(),
        "train_git_commit": run.data.tags.get("git_commit", "unknown"),
        **_metric_tags("test_", metrics),
        **_data_tags(workspace, data_sha256),
    }
    version, created = registry.create_version(logged.model_uri, run_id, logged.model_id, tags)
    if created:
        registry.set_alias(CHALLENGER, int(version.version))
        log.info("registered run %s as %s version %s", run_id, registry.name, version.version)
    return version, created


def _logged_model(
    registry: RegistryClient, run: Run, workspace: Workspace, test: dict[str, np.ndarray]
) -> LoggedModel:
    """The pyfunc model the training logged; logged now when training ran with log_model off."""
    run_id = run.info.run_id
    found = registry.logged_models(run.info.experiment_id, run_id)
    if found:
        return found[-1]
    from pneumo.inference import predict_proba
    from pneumo.models import load_model

    log.info(
        "run %s has no logged model (tracking.log_model off?): logging models/model.pt", run_id
    )
    model, metadata = load_model(workspace.model)
    example = test["images"][:2]
    probabilities = predict_proba(model, example, tta=bool(metadata.get("tta", False)))
    mlflow.set_tracking_uri(registry.uri)
    with mlflow.start_run(run_id=run_id):
        tracking.log_pyfunc_model(workspace.model, example, probabilities)
    found = registry.logged_models(run.info.experiment_id, run_id)
    if not found:
        raise RegistryError(f"logging the model of run {run_id} failed: see the log above")
    return found[-1]


def _rescore(
    registry: RegistryClient,
    version: int,
    test: dict[str, np.ndarray],
    settings: Settings,
    workspace: Workspace,
) -> dict[str, float]:
    """A version's own weights and threshold, scored on this workspace's test arrays."""
    from pneumo.accel import configure_threads
    from pneumo.inference import predict_proba
    from pneumo.metrics import binary_metrics
    from pneumo.models import load_model

    with tempfile.TemporaryDirectory(prefix="pneumo-registry-") as tmp:
        files = registry.version_files(version, Path(tmp))
        model, metadata = load_model(files["model"])
        decision = json.loads(files["decision"].read_text())
    images = test["images"]
    size = int(metadata["image_size"])
    if images.shape[-1] != size:
        images = _decode_test_split(test["paths"], size, settings, workspace)
    configure_threads(settings.model.threads)
    probabilities = predict_proba(
        model,
        images,
        settings.model.batch_size,
        tta=bool(decision.get("tta", False)),
        accel=settings.model.accelerator(),
    )
    values = binary_metrics(
        test["labels"],
        probabilities,
        float(decision["threshold"]),
        settings.evaluate.calibration_bins,
    )
    return point_metrics(values)


def _decode_test_split(
    paths: np.ndarray, size: int, settings: Settings, workspace: Workspace
) -> np.ndarray:
    """The test images at another model's input size, decoded by the one preprocessing function."""
    from pneumo.data.preprocess import decode_many

    root = Path(settings.data.root)
    root = root if root.is_absolute() else workspace.root / root
    log.info("champion expects %d px: decoding the test split again from %s", size, root)
    return decode_many([str(root / p) for p in paths], size, settings.preprocess.workers, "rescore")


def _make_champion(registry: RegistryClient, version: int) -> int | None:
    """champion -> previous, ``version`` -> champion (and no longer challenger)."""
    aliases = registry.aliases()
    old = aliases.get(CHAMPION)
    if old is not None and old != version:
        registry.set_alias(PREVIOUS, old)
    registry.set_alias(CHAMPION, version)
    if aliases.get(CHALLENGER) == version:
        registry.delete_alias(CHALLENGER)
    if aliases.get(PREVIOUS) == version:
        registry.delete_alias(PREVIOUS)  # it cannot be its own fallback
    return old if old != version else None


@contextmanager
def _alias_transaction(registry: RegistryClient, what: str) -> Iterator[None]:
    """All-or-nothing alias moves: on any failure the managed aliases are put back as they were."""
    before = registry.aliases()
    try:
        yield
    except BaseException as exc:
        problems = _restore_aliases(registry, before)
        if not isinstance(exc, Exception):
            raise  # Ctrl-C: restored, now stop
        shown = ", ".join(f"{a}=v{v}" for a, v in sorted(before.items())) or "none"
        if problems:
            raise PromotionError(
                f"{what} failed ({_first_line(exc)}) and the aliases could not all be restored "
                f"({'; '.join(problems)}): set them back by hand to {shown} "
                f"(MlflowClient.set_registered_model_alias)"
            ) from exc
        raise PromotionError(
            f"{what} failed ({_first_line(exc)}); the aliases were restored ({shown}): "
            "fix the cause and rerun the command"
        ) from exc


def _restore_aliases(registry: RegistryClient, before: dict[str, int]) -> list[str]:
    problems = []
    try:
        current = registry.aliases()
    except Exception as exc:  # report it: the caller raises
        return [f"reading the aliases: {_first_line(exc)}"]
    for alias in MANAGED_ALIASES:
        wanted = before.get(alias)
        if current.get(alias) == wanted:
            continue
        try:
            if wanted is None:
                registry.delete_alias(alias)
            else:
                registry.set_alias(alias, wanted)
        except Exception as exc:  # keep restoring the others
            problems.append(f"{alias}: {_first_line(exc)}")
    return problems


# ---------------------------------------------------------------- deliberate changes


def promote(settings: Settings, workspace: Workspace, version: int, reason: str) -> dict[str, Any]:
    """Make ``version`` the champion regardless of the gate; who, when and why go into its tags."""
    if not reason.strip():
        raise RegistryError(
            "give a --reason: a manual promotion is recorded with who, when and why"
        )
    with connect(settings, workspace) as registry:
        registry.version(version)  # fails clearly when it does not exist
        if registry.aliases().get(CHAMPION) == version:
            raise RegistryError(f"version {version} is already the champion of {registry.name}")
        with _alias_transaction(registry, f"promotion of version {version}"):
            old = _make_champion(registry, version)
            registry.set_tags(
                version,
                {
                    "override_by": _user(),
                    "override_at": _now(),
                    "override_reason": reason.strip(),
                    "override_replaced": f"v{old}" if old else "none",
                    "validation_status": "overridden",  # last: set only when the rest is
                },
            )
    log.info("version %d promoted by override (was %s): %s", version, old or "none", reason)
    return {"model_name": settings.registry.model_name, "champion": version, "previous": old}


def rollback(
    settings: Settings, workspace: Workspace = Workspace(), reason: str = ""
) -> dict[str, Any]:
    """champion <- previous; the demoted version is tagged, and ``previous`` is cleared."""
    with connect(settings, workspace) as registry:
        aliases = registry.aliases()
        restored = aliases.get(PREVIOUS)
        if restored is None:
            raise RegistryError(
                f"{registry.name} has no 'previous' version to roll back to: promote one "
                "deliberately with `pneumo registry promote --version N --reason ...`"
            )
        demoted = aliases.get(CHAMPION)
        with _alias_transaction(registry, "rollback"):
            registry.set_alias(CHAMPION, restored)
            registry.delete_alias(PREVIOUS)
            if demoted is not None:
                registry.set_tags(
                    demoted,
                    {
                        "rolled_back_at": _now(),
                        "rolled_back_by": _user(),
                        "rolled_back_to": f"v{restored}",
                        "rolled_back_reason": reason.strip() or "not given",
                        "rolled_back": "true",  # last: set only when the rest is
                    },
                )
            registry.set_tags(restored, {"restored_at": _now(), "restored_by": _user()})
    log.info("rolled back %s: champion v%s -> v%s", settings.registry.model_name, demoted, restored)
    return {"model_name": settings.registry.model_name, "champion": restored, "demoted": demoted}


# ---------------------------------------------------------------- reading the registry


def status(settings: Settings, workspace: Workspace = Workspace()) -> dict[str, Any]:
    """Aliases -> versions, and every version with its key metrics and validation status."""
    with connect(settings, workspace) as registry:
        aliases = registry.aliases()
        versions = registry.versions()
    by_version: dict[int, list[str]] = {}
    for alias, number in aliases.items():
        by_version.setdefault(number, []).append(alias)
    summaries = [_summary(v, sorted(by_version.get(int(v.version), []))) for v in versions]
    indexed = {s["version"]: s for s in summaries}
    return {
        "model_name": settings.registry.model_name,
        "tracking_uri": tracking.resolve_uri(settings.tracking.uri, workspace),
        "aliases": {
            alias: indexed.get(number, {"version": number})
            for alias, number in sorted(aliases.items())
        },
        "versions": sorted(summaries, key=lambda s: -s["version"]),
    }


def download_version(
    settings: Settings,
    workspace: Workspace,
    alias_or_version: str | int,
    dest: Path,
) -> dict[str, Any]:
    """Put ``model.pt`` and ``decision.json`` of an alias (e.g. champion) or version into ``dest``.

    Returns {name, version, run_id, threshold, metrics, registered_at, ...} for packaging.
    """
    dest = Path(dest)
    with connect(settings, workspace) as registry:
        version = _resolve(registry, alias_or_version)
        model_version = registry.version(version)
        with tempfile.TemporaryDirectory(prefix="pneumo-registry-") as tmp:
            files = registry.version_files(version, Path(tmp))
            expected = model_version.tags.get("model_sha256")
            if expected and sha256_file(files["model"]) != expected:
                raise RegistryError(
                    f"the weights of {registry.name} v{version} do not match their recorded "
                    "sha256: the artifact store was altered; re-register the model"
                )
            for name, source in (
                ("model.pt", files["model"]),
                ("decision.json", files["decision"]),
            ):
                with atomic_path(dest / name) as target:
                    shutil.copyfile(source, target)
            aliases = [a for a, v in registry.aliases().items() if v == version]
    summary = _summary(model_version, sorted(aliases))
    decision = json.loads((dest / "decision.json").read_text())
    log.info("%s v%d -> %s", registry.name, version, dest)
    return {
        "name": settings.registry.model_name,
        "version": version,
        "run_id": model_version.run_id,
        "threshold": float(decision["threshold"]),
        "metrics": summary["metrics"],
        "registered_at": summary["registered_at"],
        "aliases": summary["aliases"],
        "validation_status": summary["validation_status"],
        "model_sha256": model_version.tags.get("model_sha256"),
        "source": model_version.source,
    }


def champion_predictor(settings: Settings, workspace: Workspace = Workspace()) -> Predictor:
    """A Predictor for the registry's champion (weights + threshold), e.g. `pneumo predict --champion`."""
    from dataclasses import replace

    from pneumo.predict import Predictor

    with tempfile.TemporaryDirectory(prefix="pneumo-champion-") as tmp:
        info = download_version(settings, workspace, CHAMPION, Path(tmp))
        predictor = Predictor.from_files(
            Path(tmp) / "model.pt", Path(tmp) / "decision.json", settings.model.accelerator()
        )
    return replace(predictor, model_id=f"{info['name']}/v{info['version']}:{predictor.model_id}")


def _resolve(registry: RegistryClient, alias_or_version: str | int) -> int:
    text = str(alias_or_version).strip()
    if text.lower().lstrip("v").isdigit():
        return int(text.lower().lstrip("v"))
    number = registry.aliases().get(text)
    if number is None:
        hint = (
            "run `pneumo registry register`" if text == CHAMPION else "see `pneumo registry status`"
        )
        raise RegistryError(f"{registry.name} has no '{text}' alias yet: {hint}")
    return number


def _summary(version: ModelVersion, aliases: list[str]) -> dict[str, Any]:
    tags = version.tags
    metrics = {}
    for name in REPORTED_METRICS:
        if f"test_{name}" in tags:
            metrics[name] = float(tags[f"test_{name}"])
    return {
        "version": int(version.version),
        "aliases": aliases,
        "run_id": version.run_id,
        "validation_status": tags.get("validation_status", "unknown"),
        "reasons": tags.get("validation_reasons", ""),
        "threshold": float(tags["threshold"]) if "threshold" in tags else None,
        "metrics": metrics,
        "registered_at": _iso(version.creation_timestamp),
        "rolled_back": tags.get("rolled_back") == "true",
    }


# ---------------------------------------------------------------- small pieces


def _read_run_id(workspace: Workspace) -> str:
    if not workspace.run_id.is_file():
        raise PipelineOrderError(
            f"{workspace.run_id} not found: the model was trained without MLflow tracking; run "
            "`pneumo train` with a reachable tracking.uri"
        )
    return workspace.run_id.read_text().strip()


def _read_json(path: Path, hint: str) -> dict[str, Any]:
    if not Path(path).is_file():
        raise PipelineOrderError(f"{path} not found: {hint}")
    try:
        return json.loads(Path(path).read_text())
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


def _metric_tags(prefix: str, metrics: dict[str, float] | None) -> dict[str, str]:
    return {f"{prefix}{k}": f"{v:.6g}" for k, v in (metrics or {}).items() if math.isfinite(v)}


def _data_tags(workspace: Workspace, data_sha256: str) -> dict[str, str]:
    tags = {"data_test_sha256": data_sha256}
    arrays_md5 = tracking.dvc_tags(workspace.root).get("dvc_arrays_md5")
    if arrays_md5:
        tags["dvc_arrays_md5"] = arrays_md5
    return tags


def _decision_tags(decision: GateDecision, workspace: Workspace) -> dict[str, str]:
    cfg_floors = ", ".join(f"{k}>={v:g}" for k, v in decision.floors.items())
    return {
        "validation_reasons": "; ".join(decision.reasons),
        "validated_at": decision.decided_at,
        "validated_by": _user(),
        "gate_floors": cfg_floors,
        "gate_margin": f"{decision.margin:g} on {', '.join(decision.primary_metrics)}",
        "gate_champion_version": str(decision.champion_version or "none"),
        "git_commit": tracking.git_commit(workspace.root) or "unknown",
        "gate_decision": json.dumps(decision.to_json()),
        **_metric_tags("test_", decision.challenger_metrics),
        **_metric_tags("gate_champion_", decision.champion_metrics),
        **_data_tags(workspace, decision.data_sha256),
    }


def _write_decision(workspace: Workspace, decision: GateDecision) -> None:
    with atomic_path(workspace.registry_decision) as tmp:
        tmp.write_text(json.dumps(decision.to_json(), indent=2) + "\n")


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _iso(timestamp_ms: int | None) -> str | None:
    if timestamp_ms is None:
        return None
    return datetime.fromtimestamp(timestamp_ms / 1000, UTC).isoformat(timespec="seconds")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, e.g. an anonymous container user
        return os.environ.get("USER", "unknown")


def decision_table(decision: GateDecision) -> str:
    """The gate's decision as a small text table: metrics, floors, verdict and reasons."""
    champion = f"champion v{decision.champion_version}" if decision.champion_version else "champion"
    header = f"{'metric':<13}{'floor':>8}{champion:>16}{'challenger v' + str(decision.version):>16}"
    lines = [header, "-" * len(header)]
    for metric, row in decision.comparison().items():
        lines.append(
            f"{metric:<13}{_cell(row['floor']):>8}{_cell(row['champion']):>16}"
            f"{_cell(row['challenger']):>16}"
        )
    lines.append(
        f"non-inferiority margin {decision.margin:g} on {', '.join(decision.primary_metrics)}"
        " (champion re-scored on this test split)"
    )
    recorded = "" if decision.newly_registered else " [already registered: recorded decision]"
    lines.append(f"verdict: {decision.verdict}{recorded}")
    lines.extend(f"  - {reason}" for reason in decision.reasons)
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"
