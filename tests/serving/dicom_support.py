"""Helpers of the DICOM tests: a listener on the serving lab's model, instances to send, and
reading what came back to Orthanc."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread

from pneumo.config import Settings, load_settings
from serving.dicom.listener import Listener
from serving.dicom.node import DicomNode
from serving.dicom.results import part10
from serving.dicom.send import wrap_radiograph
from tests.serving.serving_support import ServingLab


def dicom_settings(lab: ServingLab, folder: Path, **dicom: Any) -> Settings:
    """The lab's params with a prediction store in ``folder`` and ``dicom.*`` overrides."""
    overrides: dict[str, Any] = {f"dicom.{k}": v for k, v in dicom.items()}
    overrides["monitor.store_url"] = f"sqlite:///{folder / 'predictions.db'}"
    overrides.setdefault("dicom.port", 0)
    overrides.setdefault("dicom.metrics_port", 0)
    return load_settings(lab.params, overrides)


def start_listener(lab: ServingLab, folder: Path, **dicom: Any) -> Listener:
    import bentoml

    folder.mkdir(parents=True, exist_ok=True)
    settings = dicom_settings(lab, folder, **dicom)
    node = DicomNode(settings, bentoml.models.get(lab.model_tag), folder)
    return Listener(node, settings.dicom).start()


def radiograph_instance(path: Path, study_uid: str | None = None) -> Dataset:
    """A real radiograph (JPEG) wrapped as a DX instance, as `pneumo dicom-send` does."""
    return dcmread(io.BytesIO(part10(wrap_radiograph(path.read_bytes(), study_uid))))


def wait_for(check: Callable[[], Any], timeout: float = 60.0, step: float = 0.3) -> Any:
    """Poll ``check`` until it returns something truthy; its last value (AssertionError if none)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            assert value, f"nothing after {timeout:.0f} s"
            return value
        time.sleep(step)


def series_by_modality(orthanc: Any, study_uid: str) -> dict[str, list[dict[str, Any]]]:
    """QIDO-RS: the study's series in Orthanc, by modality (SR, OT, DX...)."""
    response = orthanc.rest("GET", f"/dicom-web/studies/{study_uid}/series")
    found: dict[str, list[dict[str, Any]]] = {}
    for item in response.json() if response.content else []:
        found.setdefault(item["00080060"]["Value"][0], []).append(item)
    return found


def retrieve(orthanc: Any, study_uid: str, series: dict[str, Any]) -> list[Dataset]:
    """WADO-RS: every instance of a series found by QIDO-RS."""
    from dicomweb_client.api import DICOMwebClient

    series_uid = series["0020000E"]["Value"][0]
    return DICOMwebClient(orthanc.dicomweb).retrieve_series(study_uid, series_uid)
