"""Labelled folders from outside the training data: external validation and site samples.

A folder is either in the Kermany layout (``{train,val,test}/{NORMAL,PNEUMONIA}``, every split
used) or holds ``NORMAL/`` and ``PNEUMONIA/`` directly. It is read by the ingest stage's own
scanner and inspector, so a file the manifest would quarantine is refused here too, and it must
not share a single image (by sha256) with the workspace's dataset: an overlap would make an
"external" result an internal one.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumo.config import Settings
from pneumo.data.kermany import CLASSES, LABEL_INDEX
from pneumo.errors import DatasetError, PipelineOrderError
from pneumo.workspace import Workspace, atomic_path

log = logging.getLogger(__name__)


class ExternalDataError(DatasetError):
    """An external or site folder that cannot give an honest measurement."""


@dataclass(frozen=True)
class LabelledImages:
    """A labelled folder's images, checked: absolute paths, 0/1 labels, patients, subtypes."""

    folder: Path
    frame: pd.DataFrame  # path (absolute), label, patient_id, subtype, sha256

    @property
    def labels(self) -> np.ndarray:
        return self.frame["label"].map(LABEL_INDEX).to_numpy(np.int64)

    def counts(self) -> dict[str, int]:
        return {c: int((self.frame["label"] == c).sum()) for c in CLASSES}


def _kermany_view(folder: Path, tmp: Path) -> Path:
    """The folder as a Kermany root: itself, or a temporary root whose test/ links to it."""
    if (folder / "train").is_dir() or (folder / "test").is_dir() or (folder / "val").is_dir():
        return folder
    if any((folder / c).is_dir() for c in CLASSES):
        (tmp / "test").symlink_to(folder.resolve(), target_is_directory=True)
        (tmp / "train").mkdir()  # the scanner's layout check; holds nothing
        return tmp
    raise ExternalDataError(
        f"{folder} holds neither NORMAL/ and PNEUMONIA/ nor the Kermany layout "
        "(train/, val/ or test/ with NORMAL/ and PNEUMONIA/ inside)"
    )


def load_labelled_folder(folder: Path, workers: int = 0) -> LabelledImages:
    """Scan and inspect every file of ``folder``; refuse empty, one-class or damaged folders."""
    from pneumo.data.ingest import build_manifest

    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise ExternalDataError(
            f"{folder} is not a folder: give the folder holding NORMAL/ and PNEUMONIA/"
        )
    with tempfile.TemporaryDirectory(prefix="pneumo-external-") as tmp:
        root = _kermany_view(folder, Path(tmp))
        try:
            manifest, quarantine, _ = build_manifest(root, workers)
        except DatasetError as exc:
            raise ExternalDataError(f"{folder}: {exc}") from exc
        manifest["path"] = [str((root / p).resolve()) for p in manifest["path"]]
    damaged = quarantine[~quarantine["reason"].str.startswith("exact duplicate")]
    if len(damaged):
        listed = "; ".join(f"{r.path}: {r.reason}" for r in damaged.head(5).itertuples())
        raise ExternalDataError(
            f"{len(damaged)} files of {folder} would be quarantined by ingest ({listed}): "
            "remove or repair them, so that every image is scored"
        )
    images = LabelledImages(folder, manifest[["path", "label", "patient_id", "subtype", "sha256"]])
    counts = images.counts()
    if not len(manifest):
        raise ExternalDataError(f"{folder} holds no images (.jpeg, .jpg or .png)")
    if min(counts.values()) == 0:
        raise ExternalDataError(
            f"{folder} holds only one class ({counts}): sensitivity, specificity and ROC-AUC "
            "need both NORMAL and PNEUMONIA images"
        )
    return images


def check_no_overlap(images: LabelledImages, workspace: Workspace) -> None:
    """Refuse a folder that shares images (same sha256) with the workspace's dataset."""
    if not workspace.manifest.is_file():
        raise PipelineOrderError(
            f"{workspace.manifest} not found: run `pneumo ingest` so the dataset's images are "
            "known, and an overlap with them can be ruled out"
        )
    known = pd.read_parquet(workspace.manifest, columns=["path", "sha256"])
    shared = images.frame.merge(known, on="sha256", suffixes=("", "_dataset"))
    if len(shared):
        examples = "; ".join(
            f"{Path(r.path).name} = {r.path_dataset}" for r in shared.head(3).itertuples()
        )
        raise ExternalDataError(
            f"{len(shared)} images of {images.folder} are also in the training dataset "
            f"({examples}): an external measurement must use images the model never saw; "
            "remove them from the folder"
        )


def predict_folder(
    images: LabelledImages, predictor: Any, batch_size: int, workers: int = 0
) -> np.ndarray:
    """The pneumonia probability of every image, decoded by the one preprocessing function."""
    from pneumo.data.preprocess import decode_many

    pixels = decode_many(list(images.frame["path"]), predictor.image_size, workers, "external")
    return predictor.probabilities(pixels, batch_size)


def evaluate_external(
    settings: Settings,
    workspace: Workspace,
    folder: Path,
    name: str | None = None,
    model: tuple[Any, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Score a labelled external folder with the workspace's model or ``model``.

    ``model`` is a registry version at its own threshold, as ``pneumo.registry.version_predictor``
    returns it (predictor, version record); None scores the workspace's evaluated model.

    Writes ``metrics/external-NAME.json`` (metrics with patient-bootstrap intervals, like the test
    report) and ROC/PR/calibration/confusion plots, and logs them to the model's MLflow run.
    """
    from pneumo.accel import configure_threads
    from pneumo.evaluation import plots
    from pneumo.evaluation.evaluate import score_split

    name = _safe_name(name or Path(folder).name)
    configure_threads(settings.model.threads)
    images = load_labelled_folder(folder, settings.preprocess.workers)
    check_no_overlap(images, workspace)
    if model is None:
        predictor, model_info = _workspace_predictor(settings, workspace)
    else:
        predictor, info = model
        model_info = {"source": "registry", "name": info["name"], "version": info["version"],
                      "run_id": info.get("run_id"), "model": predictor.model_id}  # fmt: skip
    probabilities = predict_folder(images, predictor, settings.model.batch_size,
                                   settings.preprocess.workers)  # fmt: skip
    frame = images.frame
    report = score_split(images.labels, probabilities, frame["patient_id"].to_numpy(),
                   predictor.decision, settings.evaluate, frame["subtype"].to_numpy(),
                   name="external")  # fmt: skip
    report["dataset"] = {"name": name, "folder": str(images.folder), "counts": images.counts()}
    report["model"] = model_info
    with atomic_path(workspace.external_metrics(name)) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    figures = plots.evaluation_curves(workspace.external_plots(name), images.labels, probabilities,
                                      predictor.threshold, settings.evaluate.calibration_bins,
                                      split=f"external: {name}")  # fmt: skip
    _log(
        settings,
        workspace,
        model_info.get("run_id"),
        report,
        [workspace.external_metrics(name), *figures],
    )
    return report


def _workspace_predictor(settings: Settings, workspace: Workspace) -> tuple[Any, dict[str, Any]]:
    """The workspace's evaluated model and its record."""
    from pneumo.inference.predictor import Predictor

    predictor = Predictor.from_workspace(workspace, settings.model.accelerator(),
                                         settings.model.runtime)  # fmt: skip
    run_id = workspace.run_id.read_text().strip() if workspace.run_id.is_file() else None
    return predictor, {"source": "workspace", "model": predictor.model_id, "run_id": run_id}


def _log(
    settings: Settings, workspace: Workspace, run_id: str | None, report: dict[str, Any],
    files: list[Path],
) -> None:  # fmt: skip
    if not run_id:
        log.warning("the model has no MLflow run: the external evaluation is not tracked")
        return
    from pneumo import tracking
    from pneumo.evaluation.evaluate import metrics_table, mlflow_metrics

    name = report["dataset"]["name"]
    metrics = {k.replace("external/", f"external/{name}/", 1): v
               for k, v in mlflow_metrics(report, "external").items() if k != "val/threshold"}  # fmt: skip
    table = metrics_table(report, "external").to_csv(index=False)
    tracking.log_to_run(settings, workspace, run_id, metrics, files, f"external-{name}",
                        texts={"metrics_with_intervals.csv": table})  # fmt: skip


def _safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_" else "-" for c in name.strip()).strip("-")
    if not cleaned:
        raise ExternalDataError(f"'{name}' is not usable as a name: use letters, digits, - or _")
    return cleaned.lower()
