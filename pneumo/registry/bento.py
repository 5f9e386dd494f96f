"""Package the champion for serving: registry (or workspace) model -> BentoML model store -> Bento.

The model store gets the files the service needs (pneumo/stored_model.py: weights, decision,
metrics, guard, precision evidence) under one versioned tag, and the Bento pairs that tag with
this source tree's service code and params.yaml (its ``serve.*`` limits). Both stores live in
``serve.bentoml_home`` inside the workspace (never ``~/bentoml``); the build never reaches a
package index (``python.lock_packages: false``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pneumo.config import Settings
from pneumo.errors import PipelineOrderError, PneumoError
from pneumo.stored_model import (
    CHAMPION_ALIAS,
    COMPARISON_FILE,
    DECISION_FILE,
    EVALUATION_FILE,
    GUARD_FILE,
    METRICS_FILE,
    MODEL_FILE,
    PRECISION_FILE,
    ROC_FILE,
    SERVE_ARGS_ENV,
    SHORTCUT_FILE,
    SPLIT_FILE,
    STRESS_FILE,
    model_digest,
)
from pneumo.workspace import Workspace, sha256_file

log = logging.getLogger(__name__)

# The source tree that holds serving/ next to pneumo/: the Bento's build context. Its bentofile
# says what a Bento carries (``include``); nothing else here knows the serving layout.
SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the repository (pneumo/registry/../..)
BENTOFILE = SOURCE_ROOT / "serving" / "bentofile.yaml"


class PackagingError(PneumoError):
    """The champion cannot be imported into the model store or built into a Bento."""


@dataclass(frozen=True)
class Packaged:
    """What `pneumo package` produced: the model-store tag and the Bento tag that serves it."""

    model_tag: str
    bento_tag: str
    metadata: dict[str, Any]
    reused_model: bool
    reused_bento: bool

    def __str__(self) -> str:
        return self.bento_tag


def bentoml_home(settings: Settings, workspace: Workspace) -> Path:
    """``serve.bentoml_home``, relative paths taken from the workspace root."""
    home = Path(settings.serve.bentoml_home)
    return (home if home.is_absolute() else Path(workspace.root) / home).resolve()


def bentoml_env(home: Path) -> dict[str, str]:
    """The environment of a `bentoml` child process that uses the stores in ``home``.

    Every store operation runs in a child: BentoML reads BENTOML_HOME once per process, so this
    process never touches ~/bentoml nor depends on which store it used first.
    """
    wide = {"COLUMNS": "4096"}  # BentoML prints through rich, which wraps long paths otherwise
    return {**os.environ, **wide, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}


def _run(
    home: Path, command: list[str], stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    home.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, *command],
        input=stdin,
        env={**bentoml_env(home), **(env or {})},
        cwd=SOURCE_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def _failure(what: str, result: subprocess.CompletedProcess[str]) -> PackagingError:
    detail = (result.stderr or result.stdout).strip().splitlines()[-5:]
    return PackagingError(f"{what} failed: {' | '.join(detail)}")


def _headline_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Test-split numbers worth showing in `bentoml models list` (flat or nested reports)."""
    source = metrics.get("test") if isinstance(metrics.get("test"), dict) else metrics
    names = ("roc_auc", "accuracy", "sensitivity", "specificity")
    found = {}
    for name in names:
        value = source.get(name, source.get(f"test_{name}"))
        if isinstance(value, int | float):
            found[name] = float(value)
    return found


def fetch_from_workspace(workspace: Workspace, dest: Path) -> dict[str, Any]:
    """Copy this workspace's evaluated model into ``dest``; metadata as the registry gives it."""
    needed = ((workspace.model, "pneumo train"), (workspace.decision, "pneumo evaluate"),
              (workspace.eval_metrics, "pneumo evaluate"))  # fmt: skip
    for path, step in needed:
        if not path.is_file():
            raise PipelineOrderError(f"{path} not found: run `{step}` (or `dvc repro`) first")
    shutil.copyfile(workspace.model, dest / MODEL_FILE)
    shutil.copyfile(workspace.decision, dest / DECISION_FILE)
    shutil.copyfile(workspace.eval_metrics, dest / METRICS_FILE)
    if workspace.precision.is_file():  # the stress stage's evidence; without it fp32 only
        shutil.copyfile(workspace.precision, dest / PRECISION_FILE)
    if workspace.guard.is_file():
        from pneumo.inference.guard import Guard

        # Never package a guard fitted on other weights: it would flag every request.
        Guard.load(workspace.guard).check_weights(workspace.model, workspace.guard)
        shutil.copyfile(workspace.guard, dest / GUARD_FILE)
    run_id = workspace.run_id.read_text().strip() if workspace.run_id.is_file() else ""
    decision = json.loads((dest / DECISION_FILE).read_text())
    return {
        "name": None,
        "version": None,
        "run_id": run_id or None,
        "threshold": float(decision["threshold"]),
        "metrics": json.loads((dest / METRICS_FILE).read_text()),
        "registered_at": None,
    }


def fetch_from_registry(
    settings: Settings, workspace: Workspace, alias_or_version: str, dest: Path
) -> dict[str, Any]:
    """Download a registered version (default: the champion alias) through pneumo.registry."""
    from pneumo.registry import download_version

    metadata = dict(
        download_version(settings, workspace, alias_or_version=alias_or_version, dest=dest)
    )
    for name in (MODEL_FILE, DECISION_FILE):
        if not (dest / name).is_file():
            raise PackagingError(f"the registry download of '{alias_or_version}' lacks {name}")
    if not (dest / METRICS_FILE).is_file():
        (dest / METRICS_FILE).write_text(json.dumps(metadata.get("metrics") or {}, indent=2) + "\n")
    return metadata


def card_files(workspace: Workspace, weights: Path, from_workspace: bool) -> dict[str, Path]:
    """The workspace files that describe ``weights`` for the model card, by their stored name.

    Only when the workspace's own model is these very weights: a registry champion older than
    the workspace's last training must not be shown with another model's evaluation.
    """
    if not workspace.model.is_file() or sha256_file(workspace.model) != sha256_file(weights):
        log.info("the workspace's evaluation is of another model: no card files are packaged")
        return {}
    sources = {
        SPLIT_FILE: workspace.split_metrics,
        ROC_FILE: workspace.eval_plots / ROC_FILE,
        COMPARISON_FILE: workspace.comparison.with_suffix(".csv"),
        STRESS_FILE: workspace.stress_plots / "detail.json",  # pneumo/evaluation/stress.py's DETAIL_FILE
        SHORTCUT_FILE: workspace.shortcut_metrics,
    }
    if not from_workspace:  # from a workspace, metrics.json already is the full report
        sources[EVALUATION_FILE] = workspace.eval_metrics
    return {name: path for name, path in sources.items() if path.is_file()}


def _model_version(metadata: dict[str, Any], digest: str, precision: str = "fp32") -> str:
    """Registry version plus content digest (so two registries never collide), else the digest."""
    suffix = "" if precision == "fp32" else f"-{precision}"  # evidence for bf16: another entry
    if metadata.get("version") not in (None, ""):
        return f"v{metadata['version']}-{digest[:8]}{suffix}".lower()
    return f"ws-{digest[:12]}{suffix}"


def _staged_metadata(
    settings: Settings, workspace: Workspace, staging: Path, source: dict[str, Any],
    from_workspace: bool,
) -> tuple[str, dict[str, Any]]:  # fmt: skip
    """The model-store tag and metadata of the staged files; refuses weights that are not a
    pneumo model (opened with the weights-only loader) before anything is stored."""
    from pneumo.inference.runtime import ServedPrecision
    from pneumo.models import ModelFileError, load_model

    try:
        _, model_metadata = load_model(staging / MODEL_FILE)
    except ModelFileError as exc:
        raise PackagingError(f"the champion's weights are not a pneumo model file: {exc}") from exc
    decision = json.loads((staging / DECISION_FILE).read_text())
    digest = model_digest(staging / MODEL_FILE, staging / DECISION_FILE, staging / GUARD_FILE)
    precision = getattr(ServedPrecision.load(staging / PRECISION_FILE), "precision", "fp32")
    tag = f"{settings.registry.model_name}:{_model_version(source, digest, precision)}"
    metadata: dict[str, Any] = {
        "source": "workspace" if from_workspace else "registry",
        "registered_model": source.get("name") or settings.registry.model_name,
        "mlflow_version": str(source["version"]) if source.get("version") else "",
        "run_id": source.get("run_id") or model_metadata.get("mlflow_run_id") or "",
        "registered_at": str(source.get("registered_at") or ""),
        "threshold": float(decision["threshold"]),
        "threshold_rule": str(decision.get("rule", "")),
        "tta": bool(decision.get("tta", False)),
        "arch": str(model_metadata["arch"]),
        "image_size": int(model_metadata["image_size"]),
        # The served model's digest (weights, decision, guard: the tag, the prediction log) and
        # the weights file's (the registry's model_sha256 tag, `pneumo predict`'s model column).
        "sha256": digest,
        "weights_sha256": sha256_file(staging / MODEL_FILE),
        "guard": (staging / GUARD_FILE).is_file(),
        "precision_allowed": precision,  # bf16 runs only where the CPU has it natively
        "metrics": _headline_metrics(json.loads((staging / METRICS_FILE).read_text())),
    }
    return tag, metadata


def _labels(metadata: dict[str, Any]) -> dict[str, str]:
    return {
        "source": metadata["source"],
        "mlflow_version": metadata["mlflow_version"] or "none",
        "run_id": metadata["run_id"] or "none",
        "threshold": f"{metadata['threshold']:.6f}",
        "image_size": str(metadata["image_size"]),
        **{name: f"{value:.4f}" for name, value in metadata["metrics"].items()},
    }


def store_model(request: dict[str, Any]) -> bool:
    """Create the model ``request['tag']`` from ``request['files']`` unless it exists; True if
    it existed. Runs in a child process whose BENTOML_HOME is the workspace's store."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        bentoml.models.get(request["tag"])
        return True
    except NotFound:
        pass
    labels, metadata = request["labels"], request["metadata"]
    with bentoml.models.create(request["tag"], labels=labels, metadata=metadata) as stored:
        for name, path in request["files"].items():
            shutil.copyfile(path, Path(stored.path) / name)
    return False


def import_champion(
    settings: Settings,
    workspace: Workspace,
    from_workspace: bool = False,
    alias_or_version: str = "champion",
) -> tuple[str, dict[str, Any], bool]:
    """Import the champion into the model store; returns (tag, metadata, already_there).

    The weights are opened once with the weights-only loader to prove they are a pneumo model
    before anything is stored; importing the same files twice reuses the stored model.
    """
    home = bentoml_home(settings, workspace)
    with tempfile.TemporaryDirectory(prefix="pneumo-package-") as tmp:
        staging = Path(tmp)
        if from_workspace:
            source = fetch_from_workspace(workspace, staging)
        else:
            source = fetch_from_registry(settings, workspace, alias_or_version, staging)
        tag, metadata = _staged_metadata(settings, workspace, staging, source, from_workspace)
        shipped = (MODEL_FILE, DECISION_FILE, METRICS_FILE, GUARD_FILE, PRECISION_FILE)
        files = {name: staging / name for name in shipped if (staging / name).is_file()}
        files |= card_files(workspace, staging / MODEL_FILE, from_workspace)
        request = {
            "tag": tag,
            "labels": _labels(metadata),
            "metadata": metadata,
            "files": {name: str(path) for name, path in files.items()},
        }
        result = _run(home, ["-m", "pneumo.registry.bento"], stdin=json.dumps(request))
    if result.returncode != 0:
        raise _failure(f"importing {tag} into the model store in {home}", result)
    reused = json.loads(result.stdout.strip().splitlines()[-1])["reused"]
    log.info("model %s %s %s", tag, "is already in" if reused else "imported into", home)
    return tag, metadata, reused


def _bentofile() -> dict[str, Any]:
    if not BENTOFILE.is_file():
        raise PackagingError(
            f"{BENTOFILE} not found: package from a source checkout of pneumo (serving/ lives "
            "beside the pneumo package)"
        )
    return yaml.safe_load(BENTOFILE.read_text())


def source_digest(root: Path = SOURCE_ROOT) -> str:
    """Digest of the files a Bento is built from (the bentofile and what it includes), to know
    when a rebuild is needed."""
    config = _bentofile()
    patterns = [str(BENTOFILE.relative_to(root)), *config.get("include", [])]
    digest = hashlib.sha256()
    for pattern in patterns:
        for path in sorted(root.glob(pattern)):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(root)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _bento_labels(home: Path, tag: str) -> dict[str, str] | None:
    """The labels of the Bento ``tag`` in the store, or None when it is not there."""
    result = _run(home, ["-m", "bentoml", "get", tag, "-o", "path"])
    if result.returncode != 0:
        return None
    path = Path(result.stdout.strip().splitlines()[-1])
    info = yaml.safe_load((path / "bento.yaml").read_text())
    return dict(info.get("labels") or {})


def build_bento(
    settings: Settings, home: Path, model_tag: str, labels: dict[str, str], force: bool = False
) -> tuple[str, bool]:
    """Build (or reuse) the Bento ``pneumo-service:<model version>``; returns (tag, reused).

    The Bento carries serving/bentofile.yaml's files, the model under the alias ``champion``
    (which the service loads), and ``serve.*`` as Bento arguments (what BentoML needs when the
    service classes are decorated: workers and batching).
    """
    config = _bentofile()
    version = model_tag.split(":", 1)[1]
    tag = f"{config['name']}:{version}"
    digest = source_digest()
    existing = _bento_labels(home, tag)
    if existing is not None:
        if existing.get("source_digest") == digest and not force:
            log.info("Bento %s is up to date", tag)
            return tag, True
        log.info("rebuilding Bento %s: the service code or params changed", tag)
        deleted = _run(home, ["-m", "bentoml", "delete", tag, "--yes"])
        if deleted.returncode != 0:
            raise _failure(f"deleting the stale Bento {tag}", deleted)
    config["models"] = [{"tag": model_tag, "alias": CHAMPION_ALIAS}]
    config["labels"] = {**config.get("labels", {}), **labels, "source_digest": digest}
    config["args"] = settings.serve.model_dump(mode="json")  # the service picks what it needs
    with tempfile.TemporaryDirectory(prefix="pneumo-bentofile-") as tmp:
        bentofile = Path(tmp) / "bentofile.yaml"
        bentofile.write_text(yaml.safe_dump(config, sort_keys=False))
        command = ["-m", "bentoml", "build", "-f", str(bentofile), "--version", version]
        # The Bento records the services it was built with, and `bentoml serve` refuses a service
        # it has no record of: build with model workers so that `pneumo serve --workers N` (which
        # adds the PneumoniaService service) serves the same Bento. The recorded args keep
        # params.yaml's workers, so a plain serve still holds the model in the front process.
        graph = {SERVE_ARGS_ENV: json.dumps({"workers": max(2, settings.serve.workers)})}
        result = _run(home, [*command, "-o", "tag", str(SOURCE_ROOT)], env=graph)
    if result.returncode != 0:
        raise _failure("bentoml build", result)
    built = result.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    if built != tag:
        raise PackagingError(f"bentoml build produced {built}, expected {tag}")
    return tag, False


def package(
    settings: Settings,
    workspace: Workspace,
    from_workspace: bool = False,
    alias_or_version: str = "champion",
    force: bool = False,
) -> Packaged:
    """Import the champion into the model store and build the Bento that serves it."""
    model_tag, metadata, reused_model = import_champion(
        settings, workspace, from_workspace, alias_or_version
    )
    labels = {
        "model": model_tag,
        "mlflow_version": metadata["mlflow_version"] or "none",
        "run_id": metadata["run_id"] or "none",
        "threshold": f"{metadata['threshold']:.6f}",
    }
    home = bentoml_home(settings, workspace)
    bento_tag, reused_bento = build_bento(settings, home, model_tag, labels, force)
    return Packaged(model_tag, bento_tag, metadata, reused_model, reused_bento)


if __name__ == "__main__":  # the model-store child of import_champion: request on stdin
    print(json.dumps({"reused": store_model(json.load(sys.stdin))}))
