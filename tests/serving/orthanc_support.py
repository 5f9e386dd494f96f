"""A real PACS for the DICOM tests: Debian's Orthanc with its DICOMweb plugin, on free ports,
answering 127.0.0.1 only, in its own process group, its storage in a temporary folder."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.serving.serving_support import Server, free_port, wait_ready

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
PLUGINS = Path("/usr/share/orthanc/plugins")
DICOMWEB_PLUGIN = PLUGINS / "libOrthancDicomWeb.so"
AE_TITLE = "ORTHANC"


def available() -> bool:
    return Path(ORTHANC).is_file() and DICOMWEB_PLUGIN.is_file()


@dataclass
class Orthanc(Server):
    """The PACS process (stopped by its process group, as the servers are) and its ports."""

    http_port: int = 0
    dicom_port: int = 0

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def destination(self) -> str:
        return f"{AE_TITLE}@127.0.0.1:{self.dicom_port}"

    def rest(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = httpx.request(method, f"{self.url}{path}", timeout=60, **kwargs)
        response.raise_for_status()
        return response


def start_orthanc(
    folder: Path, modalities: dict[str, list[Any]], dicom_port: int | None = None,
    timeout: float = 60,
) -> Orthanc:  # fmt: skip
    """Orthanc knowing ``modalities`` (name -> [AE, host, port]) as DICOM peers."""
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), dicom_port or free_port()
    config = {
        "Name": "pneumo-test-pacs",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": AE_TITLE,
        # Orthanc 1.10 has no bind address: it answers HTTP from 127.0.0.1 only and DICOM only
        # from the listed peers at their (127.0.0.1) hosts.
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomModalities": modalities,
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False,
        "DicomCheckModalityHost": True,
        "DicomCheckCalledAet": True,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
    }
    (folder / "orthanc.json").write_text(json.dumps(config, indent=2))
    log = folder / "orthanc.log"
    process = subprocess.Popen(
        [ORTHANC, str(folder / "orthanc.json")],
        cwd=folder,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    orthanc = Orthanc(process, f"http://127.0.0.1:{http_port}", log, http_port, dicom_port)
    return wait_ready(orthanc, "/system", timeout)
