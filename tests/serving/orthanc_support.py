"""A real PACS for the DICOM tests: Debian's Orthanc with its DICOMweb plugin, on free ports,
answering 127.0.0.1 only, in its own process group, its storage in a temporary folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.serving.serving_support import free_port

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
PLUGINS = Path("/usr/share/orthanc/plugins")
DICOMWEB_PLUGIN = PLUGINS / "libOrthancDicomWeb.so"
AE_TITLE = "ORTHANC"


def available() -> bool:
    return Path(ORTHANC).is_file() and DICOMWEB_PLUGIN.is_file()


@dataclass
class Orthanc:
    process: subprocess.Popen[bytes]
    http_port: int
    dicom_port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

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

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


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
    orthanc = Orthanc(process, http_port, dicom_port, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {process.returncode}:\n{orthanc.log_tail()}")
        try:
            if httpx.get(f"{orthanc.url}/system", timeout=2).status_code == 200:
                return orthanc
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    orthanc.stop()
    raise RuntimeError(f"Orthanc did not answer within {timeout:.0f} s:\n{orthanc.log_tail()}")
