"""`pneumo dicom-send`: radiograph files to a DICOM node by C-STORE (a small storescu).

A DICOM file is sent as it is. A JPEG or PNG is first wrapped as a Digital X-Ray instance (For
Presentation): a grayscale JPEG keeps its bytes (JPEG Baseline, encapsulated, no re-encoding),
anything else is stored as 8-bit grayscale (Explicit VR Little Endian). Used to try the listener
with the files one has, by the tests and by bench/dicom.py.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)

from pneumo.data.dicom import is_dicom
from pneumo.errors import PneumoError

log = logging.getLogger(__name__)


class SendError(PneumoError):
    """The destination could not be reached or refused an instance."""


@dataclass(frozen=True)
class Destination:
    """A DICOM application entity: AE title, host and port (``AE@host:port``)."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        try:
            title, address = text.split("@", 1)
            host, port = address.rsplit(":", 1)
            return cls(title, host, int(port))
        except ValueError:
            raise PneumoError(
                f"{text!r} is not AE_TITLE@host:port (e.g. PNEUMO@127.0.0.1:11112)"
            ) from None

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def wrap_radiograph(
    data: bytes,
    study_uid: str | None = None,
    patient_id: str = "ANONYMOUS",
    patient_name: str = "Anonymous^",
) -> Dataset:
    """A JPEG or PNG radiograph as a DX instance (see the module's docstring)."""
    image = Image.open(io.BytesIO(data))
    now = datetime.now(UTC)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID, ds.PatientName = patient_id, patient_name
    ds.PatientBirthDate, ds.PatientSex = "", ""
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = "", "", "1"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "DX", 1, 1
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", "PA"
    ds.PresentationIntentType, ds.ImageType = "FOR PRESENTATION", ["ORIGINAL", "PRIMARY"]
    ds.PatientOrientation = ""
    ds.Manufacturer = "pneumo dicom-send"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = image.height, image.width
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelIntensityRelationship, ds.PixelIntensityRelationshipSign = "LIN", 1
    ds.BurnedInAnnotation, ds.LossyImageCompression = "NO", "00"
    if image.format == "JPEG" and image.mode == "L":
        meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PixelData = encapsulate([data])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
    else:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = np.ascontiguousarray(np.asarray(image.convert("L"))).tobytes()
    return ds


def read_instance(path: Path, study_uid: str | None = None) -> Dataset:
    """A DICOM file as it is, or a JPEG/PNG wrapped by :func:`wrap_radiograph`."""
    data = Path(path).read_bytes()
    if is_dicom(data):
        return dcmread(io.BytesIO(data))
    try:
        return wrap_radiograph(data, study_uid)
    except OSError as exc:
        raise PneumoError(f"{path}: not a DICOM, JPEG or PNG file ({exc})") from None


def store(
    datasets: Sequence[Dataset], destination: Destination, calling_ae: str = "PNEUMO-SEND",
    timeout_s: float = 30.0,
) -> list[int]:  # fmt: skip
    """C-STORE each dataset in one association; the status of each (0 is success)."""
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    for ds in datasets:
        context = (ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        if context not in [
            (c.abstract_syntax, c.transfer_syntax[0]) for c in ae.requested_contexts
        ]:
            ae.add_requested_context(*context)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        raise SendError(f"no association with {destination}: it rejected or did not answer")
    statuses: list[int] = []
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status) if "Status" in status else -1)
    finally:
        assoc.release()
    return statuses
