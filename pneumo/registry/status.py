"""Reading the registry: which version holds which alias, and a version's files for serving."""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pneumo import tracking
from pneumo.config import Settings
from pneumo.decision import Decision
from pneumo.registry.client import RegistryClient, RegistryError, connect
from pneumo.registry.gate import REPORTED_METRICS
from pneumo.registry.promotion import CHAMPION
from pneumo.stored_model import DECISION_FILE, GUARD_FILE, MODEL_FILE, PRECISION_FILE
from pneumo.workspace import Workspace, atomic_path, sha256_file

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from pneumo.inference.predictor import Predictor

log = logging.getLogger(__name__)


def status(settings: Settings, workspace: Workspace = Workspace()) -> dict[str, Any]:
    """Aliases -> versions, and every version with its key metrics and validation status."""
    with connect(settings, workspace) as registry:
        aliases = registry.aliases()
        versions = registry.versions()
    by_version: dict[int, list[str]] = {}
    for alias, number in aliases.items():
        by_version.setdefault(number, []).append(alias)
    summaries = [summary(v, sorted(by_version.get(int(v.version), []))) for v in versions]
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
    """Put ``model.pt``, ``decision.json``, ``guard.pt`` and ``precision.json`` (when the version
    has them) of an alias or version into ``dest``.

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
            shipped = {MODEL_FILE: files["model"], DECISION_FILE: files["decision"]}
            if "guard" in files:
                shipped[GUARD_FILE] = files["guard"]
            if "precision" in files:
                shipped[PRECISION_FILE] = files["precision"]
            for name, source in shipped.items():
                with atomic_path(dest / name) as target:
                    shutil.copyfile(source, target)
            aliases = [a for a, v in registry.aliases().items() if v == version]
    info = summary(model_version, sorted(aliases))
    log.info("%s v%d -> %s", registry.name, version, dest)
    return {
        "name": settings.registry.model_name,
        "version": version,
        "run_id": model_version.run_id,
        "threshold": Decision.load(dest / "decision.json").threshold,
        "metrics": info["metrics"],
        "registered_at": info["registered_at"],
        "aliases": info["aliases"],
        "validation_status": info["validation_status"],
        "model_sha256": model_version.tags.get("model_sha256"),
        "source": model_version.source,
    }


def version_predictor(
    settings: Settings, workspace: Workspace, alias_or_version: str | int
) -> tuple[Predictor, dict[str, Any]]:
    """A registered version ready to score (weights, its own threshold, its guard), and its record."""
    from pneumo.inference.predictor import Predictor

    with tempfile.TemporaryDirectory(prefix="pneumo-registry-") as tmp:
        folder = Path(tmp)
        info = download_version(settings, workspace, alias_or_version, folder)
        predictor = Predictor.from_files(folder / MODEL_FILE, folder / DECISION_FILE,
                                         settings.model.accelerator(), settings.model.runtime,
                                         folder / GUARD_FILE)  # fmt: skip
    return predictor, info


def champion_predictor(settings: Settings, workspace: Workspace = Workspace()) -> Predictor:
    """The registry's champion (weights, threshold, guard), e.g. for `pneumo predict --champion`."""
    predictor, info = version_predictor(settings, workspace, CHAMPION)
    return replace(predictor, model_id=f"{info['name']}/v{info['version']}:{predictor.model_id}")


def summary(version: ModelVersion, aliases: list[str]) -> dict[str, Any]:
    """One version as `pneumo registry status` shows it, from its tags."""
    tags = version.tags
    metrics = {
        name: float(tags[f"test_{name}"]) for name in REPORTED_METRICS if f"test_{name}" in tags
    }
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


def _iso(timestamp_ms: int | None) -> str | None:
    if timestamp_ms is None:
        return None
    return datetime.fromtimestamp(timestamp_ms / 1000, UTC).isoformat(timespec="seconds")
