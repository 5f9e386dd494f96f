"""An answer as DICOM: a Structured Report and a Grad-CAM Secondary Capture in the source study.

Both are made with highdicom from the source instance's header (no pixel data): patient and
study attributes are copied so that the PACS files them beside the radiograph; each result is a
new series of its own. The report holds the finding, the probability, the threshold, whether to
refer to a radiologist, whether (and why) the image is outside the model's intended use, the
model's name and version, and a reference to the source image. :func:`read_report` reads those
values back (tests, `pneumo dicom-pull`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian

MANUFACTURER = "pneumo"
SCHEME = "99PNEUMO"  # private coding scheme of the concepts no standard terminology names
REPORT_TITLE = CodedConcept("18748-4", "LN", "Diagnostic imaging report")
FINDING = CodedConcept("121071", "DCM", "Finding")
PNEUMONIA = CodedConcept("233604007", "SCT", "Pneumonia")
NO_PNEUMONIA = CodedConcept("17621005", "SCT", "Normal")
PROBABILITY = CodedConcept("PROBABILITY", SCHEME, "Probability of pneumonia")
THRESHOLD = CodedConcept("THRESHOLD", SCHEME, "Decision threshold")
REFER = CodedConcept("REFER", SCHEME, "Refer to radiologist")
OUT_OF_SCOPE = CodedConcept("OUT_OF_SCOPE", SCHEME, "Outside the model's intended use")
OUT_OF_SCOPE_REASON = CodedConcept("SCOPE_REASON", SCHEME, "Why outside intended use")
ALGORITHM_NAME = CodedConcept("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION = CodedConcept("111003", "DCM", "Algorithm Version")
SOURCE = CodedConcept("260753009", "SCT", "Source")
YES = CodedConcept("373066001", "SCT", "Yes")
NO = CodedConcept("373067005", "SCT", "No")
NO_UNITS = CodedConcept("1", "UCUM", "no units")
REPORT_SERIES_NUMBER = 9901
OVERLAY_SERIES_NUMBER = 9902


@dataclass(frozen=True)
class Result:
    """One DICOM object to deliver: what it is, its UIDs and its Part 10 bytes."""

    kind: str  # "report" or "overlay"
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    data: bytes


def _yes_no(value: bool) -> CodedConcept:
    return YES if value else NO


def _content(prediction: dict[str, Any], model: dict[str, Any], source: Dataset) -> Any:
    items: list[Any] = [
        hd.sr.CodeContentItem(
            FINDING, PNEUMONIA if prediction["label"] == "PNEUMONIA" else NO_PNEUMONIA, "CONTAINS"
        ),  # fmt: skip
        hd.sr.NumContentItem(
            PROBABILITY, float(prediction["probability"]), NO_UNITS, relationship_type="CONTAINS"
        ),  # fmt: skip
        hd.sr.NumContentItem(
            THRESHOLD, float(prediction["threshold"]), NO_UNITS, relationship_type="CONTAINS"
        ),  # fmt: skip
        hd.sr.CodeContentItem(REFER, _yes_no(prediction["refer_to_radiologist"]), "CONTAINS"),
        hd.sr.CodeContentItem(
            OUT_OF_SCOPE, _yes_no(prediction["out_of_distribution"]), "CONTAINS"
        ),  # fmt: skip
    ]
    if prediction.get("ood_reason"):
        items.append(hd.sr.TextContentItem(OUT_OF_SCOPE_REASON, str(prediction["ood_reason"])[:1000],
                                           "CONTAINS"))  # fmt: skip
    items += [
        hd.sr.TextContentItem(ALGORITHM_NAME, str(model["name"]), "CONTAINS"),
        hd.sr.TextContentItem(ALGORITHM_VERSION, str(model["version"]), "CONTAINS"),
        hd.sr.ImageContentItem(
            SOURCE, source.SOPClassUID, source.SOPInstanceUID, relationship_type="CONTAINS"
        ),  # fmt: skip
    ]
    root = hd.sr.ContainerContentItem(REPORT_TITLE, template_id=None)
    root.ContentSequence = hd.sr.ContentSequence(items)
    return hd.sr.ContentSequence([root], is_root=True)


def part10(dataset: Dataset) -> bytes:
    """A dataset as the bytes of a DICOM Part 10 file (preamble, file meta, dataset)."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def structured_report(source: Dataset, prediction: dict[str, Any], model: dict[str, Any]) -> Result:
    """The answer as a Comprehensive SR in the source's study, referencing the source image."""
    report = hd.sr.ComprehensiveSR(
        evidence=[source],
        content=_content(prediction, model, source),
        series_instance_uid=hd.UID(),
        series_number=REPORT_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=f"pneumo {model['name']} {model['version']}"[:64],
    )
    return Result("report", str(source.StudyInstanceUID), str(report.SeriesInstanceUID),
                  str(report.SOPInstanceUID), str(report.SOPClassUID), part10(report))  # fmt: skip


def overlay_capture(
    source: Dataset, rgb: np.ndarray, prediction: dict[str, Any], model: dict[str, Any], side: int
) -> Result:
    """The model's view with its Grad-CAM heatmap, ``side`` pixels square, as a Secondary
    Capture in the source's study."""
    pixels = np.asarray(Image.fromarray(rgb, "RGB").resize((side, side), Image.Resampling.BILINEAR))
    verdict = f"{prediction['label']} p={prediction['probability']:.3f}"
    capture = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=hd.UID(),
        series_number=OVERLAY_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description="pneumo Grad-CAM (not for diagnosis)",
    )
    capture.DerivationDescription = f"Grad-CAM of {model['name']} {model['version']}: {verdict}"[
        :1024
    ]
    capture.BurnedInAnnotation = "NO"
    return Result("overlay", str(source.StudyInstanceUID), str(capture.SeriesInstanceUID),
                  str(capture.SOPInstanceUID), str(capture.SOPClassUID), part10(capture))  # fmt: skip


def _walk(items: Any) -> Any:
    for item in items:
        yield item
        yield from _walk(getattr(item, "ContentSequence", []))


def read_report(data: bytes | Dataset) -> dict[str, Any]:
    """The values of a pneumo Structured Report: finding, probability, threshold, referral,
    out-of-scope flag and reason, model name and version, the referenced source instance."""
    report = data if isinstance(data, Dataset) else dcmread(io.BytesIO(data))
    values: dict[str, Any] = {"ood_reason": None}
    for item in _walk(report.ContentSequence):
        name = item.ConceptNameCodeSequence[0].CodeValue
        if item.ValueType == "NUM":
            number = float(item.MeasuredValueSequence[0].NumericValue)
            values[{"PROBABILITY": "probability", "THRESHOLD": "threshold"}.get(name, name)] = (
                number
            )
        elif item.ValueType == "CODE":
            code = item.ConceptCodeSequence[0].CodeValue
            if name == FINDING.value:
                values["label"] = "PNEUMONIA" if code == PNEUMONIA.value else "NORMAL"
            elif name in (REFER.value, OUT_OF_SCOPE.value):
                key = "refer_to_radiologist" if name == REFER.value else "out_of_distribution"
                values[key] = code == YES.value
        elif item.ValueType == "TEXT":
            key = {OUT_OF_SCOPE_REASON.value: "ood_reason", ALGORITHM_NAME.value: "model_name",
                   ALGORITHM_VERSION.value: "model_version"}.get(name)  # fmt: skip
            if key:
                values[key] = str(item.TextValue)
        elif item.ValueType == "IMAGE":
            values["source_sop_instance_uid"] = str(
                item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            )
    return values
