"""The only module that calls MLflow's model registry API; transient failures are retried here.

It also reads what registration needs from the tracking side (a run, its logged models) and adds
files to a logged model. Every call goes through one ``MlflowClient`` bound to the store's URI:
nothing process-wide (MLflow's global URIs, ``os.environ``) is changed.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import mlflow  # telemetry is switched off in pneumo/__init__.py, before this import
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

from pneumo import tracking
from pneumo.config import Settings
from pneumo.errors import PipelineOrderError, PneumoError
from pneumo.workspace import Workspace

if TYPE_CHECKING:
    import numpy as np
    from mlflow.entities import LoggedModel, Run
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

WEIGHTS_ARTIFACT = "artifacts/model.pt"  # where mlflow.pyfunc stores the "model" artifact
DECISION_ARTIFACT = "decision.json"  # the threshold, added to the logged model at registration
GUARD_ARTIFACT = "guard.pt"  # the input guard, added beside it (versions before it lack one)
PRECISION_ARTIFACT = "precision.json"  # the reduced-precision evidence (absent: fp32 only)
RETRY_ATTEMPTS = 3
RETRY_DELAY_S = 1.0  # doubled after each failed attempt
HEALTH_TIMEOUT_S = 10.0
# Errors of this machine's files that a retry cannot fix.
_PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
_T = TypeVar("_T")


class RegistryError(PneumoError):
    """The registry holds nothing to act on, or refused the operation."""


class RegistryUnavailableError(RegistryError):
    """The tracking / registry server did not answer after bounded retries."""


def is_transient(exc: BaseException | None) -> bool:
    """Worth a retry: I/O errors, connection errors, timeouts, HTTP 502/503/504,
    TEMPORARILY_UNAVAILABLE and a locked SQLite file. Missing or forbidden files are not.

    A bare 500 is not retried: MlflowException uses INTERNAL_ERROR as the default code for any
    failure, deterministic ones included (and MLflow's HTTP client already retries real 500s).
    """
    import requests

    if exc is None:
        return False
    if isinstance(exc, OSError) and not isinstance(
        exc, (*_PERMANENT_OS_ERRORS, requests.RequestException)
    ):
        return True  # ConnectionError and TimeoutError included
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _unreachable_or_busy(current):
            return True
        # MLflow re-raises request failures inside `except`, so the cause is often the context.
        current = current.__cause__ or current.__context__
    return False


def _unreachable_or_busy(exc: BaseException) -> bool:
    import requests

    if isinstance(
        exc,
        ConnectionError
        | TimeoutError
        | requests.ConnectionError
        | requests.Timeout
        | requests.exceptions.RetryError,
    ):
        return True
    if isinstance(exc, MlflowException):
        return (
            exc.error_code == "TEMPORARILY_UNAVAILABLE"
            or exc.get_http_status_code() in (502, 503, 504)
            or "database is locked" in str(exc.message)
        )
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
                    f"{what} failed {attempts} times ({first_line(exc)}): check that the MLflow "
                    f"server at {where} is running and reachable, or fix tracking.uri in params.yaml"
                ) from exc
            log.warning(
                "%s failed (%s); retry %d of %d", what, first_line(exc), attempt, attempts - 1
            )
            time.sleep(delay * 2 ** (attempt - 1))
    raise AssertionError("unreachable")  # pragma: no cover


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, for one-line errors."""
    text = str(getattr(exc, "message", None) or exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0][:300]


class RegistryClient:
    """The registered model ``name`` in the store at ``uri``; every call retries transient failures."""

    def __init__(self, uri: str, name: str) -> None:
        self.uri = uri
        self.name = name
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    def _call(self, what: str, call: Callable[[], _T]) -> _T:
        return with_retries(call, f"MLflow {what}", self.uri)

    @property
    def _is_server(self) -> bool:
        return self.uri.startswith(("http://", "https://"))

    def check_reachable(self) -> None:
        """Fail fast against a dead server: MLflow's own HTTP client retries for minutes."""
        if not self._is_server:
            return
        import requests

        def ping() -> None:
            response = requests.get(f"{self.uri.rstrip('/')}/health", timeout=HEALTH_TIMEOUT_S)
            if response.status_code in (502, 503, 504):  # a proxy in front of a stopped server
                raise requests.ConnectionError(f"HTTP {response.status_code} from {self.uri}")

        self._call("health check", ping)

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

    def logged_model(self, run: Run, model_path: Path, example: np.ndarray) -> LoggedModel:
        """The run's logged pyfunc model, logging ``model_path`` to the run when it has none
        (training with ``tracking.log_model`` off, or a site version's new run)."""
        run_id = run.info.run_id
        found = self.logged_models(run.info.experiment_id, run_id)
        if found:
            return found[-1]
        from pneumo.inference import predict_proba
        from pneumo.models import load_model

        log.info("run %s has no logged model: logging %s", run_id, model_path.name)
        model, metadata = load_model(model_path)
        probabilities = predict_proba(model, example, tta=bool(metadata.get("tta", False)))
        tracking.log_model_to_run(self.uri, run_id, model_path, example, probabilities)
        found = self.logged_models(run.info.experiment_id, run_id)
        if not found:
            raise RegistryError(f"logging the model of run {run_id} failed: see the log above")
        return found[-1]

    def add_model_files(self, model_id: str, files: list[Path]) -> None:
        """Upload files next to a logged model's MLmodel (same name = replaced)."""
        with tempfile.TemporaryDirectory(prefix="pneumo-registry-") as tmp:
            for path in files:
                shutil.copyfile(path, Path(tmp) / path.name)
            self._call(
                "log_model_artifacts", lambda: self.client.log_model_artifacts(model_id, tmp)
            )

    def ensure_registered_model(self, description: str) -> None:
        """Create the registered model, or bring its description up to date."""
        try:
            self._call(
                "create_registered_model",
                lambda: self.client.create_registered_model(self.name, description=description),
            )
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            self._call(
                "update_registered_model",
                lambda: self.client.update_registered_model(self.name, description),
            )

    def create_version(
        self, logged: LoggedModel, run_id: str, tags: dict[str, str], description: str
    ) -> tuple[ModelVersion, bool]:
        """The run's version, created only when none exists (a retry cannot create a second one),
        and linked to its logged model as ``mlflow.register_model`` links it."""

        def find_or_create() -> tuple[ModelVersion, bool]:
            existing = list(
                self.client.search_model_versions(f"name = '{self.name}' and run_id = '{run_id}'")
            )
            if existing:
                return min(existing, key=lambda v: int(v.version)), False
            # `models:/<id>` is the source the UI links back to the logged model. The embedded
            # store resolves it through MLflow's process-wide client (a TODO in MLflow), so that
            # client is bound to this store for the call; a server resolves it by itself.
            scoped = nullcontext() if self._is_server else tracking.fluent_store(self.uri)
            with scoped:
                created = self.client.create_model_version(
                    self.name, f"models:/{logged.model_id}", run_id=run_id, tags=tags,
                    description=description, model_id=logged.model_id,
                )  # fmt: skip
            return created, True

        version, created = self._call("create_model_version", find_or_create)
        self._link(logged.model_id, int(version.version))
        return version, created

    def _link(self, model_id: str, version: int) -> None:
        """List the version on its logged model (the UI's "Registered" column reads this tag).

        An MLflow server does this itself; the embedded store does not.
        """
        model = self._call("get_logged_model", lambda: self.client.get_logged_model(model_id))
        linked = json.loads(model.tags.get(MLFLOW_MODEL_VERSIONS) or "[]")
        entry = {"name": self.name, "version": str(version)}
        if entry not in linked:
            value = json.dumps([*linked, entry])
            self._call(
                "set_logged_model_tags",
                lambda: self.client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: value}),
            )

    def describe_version(self, version: int, description: str) -> None:
        self._call(
            "update_model_version",
            lambda: self.client.update_model_version(self.name, str(version), description),
        )

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
        """Download a version's weights, decision.json and (when it has them) guard.pt and
        precision.json."""
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
                    f"{self.name} version {version} lacks {artifact} ({first_line(exc)}): it was "
                    "not registered by `pneumo registry register`; register a new model"
                ) from exc
        try:
            files["guard"] = self.download(base, GUARD_ARTIFACT, dest_dir / "guard")
        except MlflowException:
            log.warning("%s version %s has no input guard: it answers without one", self.name,
                        version)  # fmt: skip
        try:
            files["precision"] = self.download(base, PRECISION_ARTIFACT, dest_dir / "precision")
        except MlflowException:
            log.info("%s version %s has no precision evidence: it runs in fp32", self.name,
                     version)  # fmt: skip
        return files


@contextmanager
def connect(settings: Settings, workspace: Workspace) -> Iterator[RegistryClient]:
    """A client for the configured store; MLflow's own errors become one-line RegistryErrors."""
    uri = tracking.resolve_uri(settings.tracking.uri, workspace)
    registry = RegistryClient(uri, settings.registry.model_name)
    registry.check_reachable()
    try:
        yield registry
    except MlflowException as exc:
        raise RegistryError(f"MLflow at {uri}: {first_line(exc)}") from exc
