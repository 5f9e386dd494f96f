"""Benchmark: radiographs per second through the DICOM node, end to end, against /predict.

The 48 full-size originals of ../shared/data/originals, wrapped as DX instances (JPEG baseline,
their own bytes), are sent by C-STORE to `pneumo dicom-listen` (a child process, as deployed)
over 1 and 4 concurrent associations; a level ends when Orthanc (the Debian package, on free
127.0.0.1 ports) holds every Structured Report. Its rate is instances per second from the first
send to the last report stored: receive, decode, model, Grad-CAM, SR and overlay made, queued,
sent by C-STORE and stored by Orthanc. The same DICOM files go to /predict of `bentoml serve` at
concurrency 1 and 4 for comparison (decode and model only: no Grad-CAM, nothing sent back), and
straight into Orthanc (``orthanc_store_instances_per_s``): each radiograph makes two results, so
the node cannot outrun half the PACS's own store rate.

Client, listener, Orthanc and the server share this machine's cores; the load average says how
busy it was. By default the model is an untrained network of params.yaml's architecture (the
same arithmetic); --from-workspace DIR uses DIR's evaluated model. Prints one JSON object and
writes bench/results/dicom.json.
Usage: python bench/dicom.py [--from-workspace .]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.serve import bench_workspace  # noqa: E402
from bench.servers import start_server, stop_server  # noqa: E402
from pneumo.config import load_settings  # noqa: E402
from pneumo.config.params_file import set_param  # noqa: E402
from pneumo.workspace import Workspace  # noqa: E402
from serving.dicom.results import part10  # noqa: E402
from serving.dicom.send import Destination, store, wrap_radiograph  # noqa: E402
from tests.serving import orthanc_support  # noqa: E402
from tests.serving.serving_support import free_port  # noqa: E402

ORIGINALS = REPO.parent / "shared" / "data" / "originals"
ASSOCIATIONS = (1, 4)
LEVEL_TIMEOUT_S = 600


def instances() -> list[Any]:
    from pydicom import dcmread

    return [dcmread(io.BytesIO(part10(wrap_radiograph(path.read_bytes()))))
            for path in sorted(ORIGINALS.rglob("*.jpeg"))]  # fmt: skip


def reports_in(orthanc: orthanc_support.Orthanc) -> int:
    found = orthanc.rest(
        "POST", "/tools/find", json={"Level": "Series", "Query": {"Modality": "SR"}}
    )
    return len(found.json())


def listener_level(
    orthanc: orthanc_support.Orthanc, port: int, datasets: list[Any], associations: int
) -> dict[str, Any]:
    """Send every dataset over ``associations`` concurrent associations; wait for the reports."""
    before = reports_in(orthanc)
    chunks = [datasets[i::associations] for i in range(associations)]
    statuses: list[int] = []
    start = time.perf_counter()
    threads = [threading.Thread(target=lambda c=chunk: statuses.extend(
        store(c, Destination("PNEUMO", "127.0.0.1", port), "BENCH"))) for chunk in chunks]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sent = time.perf_counter() - start
    deadline = time.monotonic() + LEVEL_TIMEOUT_S
    while reports_in(orthanc) - before < len(datasets) and time.monotonic() < deadline:
        time.sleep(0.1)
    elapsed = time.perf_counter() - start
    stored = reports_in(orthanc) - before
    return {
        "associations": associations,
        "instances": len(datasets),
        "failed_statuses": sum(s != 0 for s in statuses),
        "reports_stored": stored,
        "instances_per_s": round(stored / elapsed, 2),
        "seconds_to_last_report": round(elapsed, 2),
        "seconds_to_last_c_store_answer": round(sent, 2),
    }


async def predict_level(url: str, bodies: list[bytes], concurrency: int) -> dict[str, Any]:
    queue = list(bodies)
    failures = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal failures
        while queue:
            body = queue.pop()
            response = await client.post(f"{url}/predict", content=body,
                                         headers={"Content-Type": "application/dicom"})  # fmt: skip
            failures += response.status_code != 200

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=120) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return {"concurrency": concurrency, "requests": len(bodies), "failed": failures,
            "requests_per_s": round(len(bodies) / elapsed, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from-workspace", type=Path, help="serve this workspace's model")
    args = parser.parse_args()
    if not orthanc_support.available():
        raise SystemExit("Orthanc is not installed: apt-get install orthanc orthanc-dicomweb")
    datasets = instances()
    bodies = [part10(ds) for ds in datasets]
    result: dict[str, Any] = {"machine": {"cpu": platform.processor() or platform.machine(),
                                          "cores": len(os.sched_getaffinity(0))}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="pneumo-bench-dicom-") as tmp:
        root = Path(tmp)
        params = root / "params.yaml"
        shutil.copyfile(REPO / "params.yaml", params)
        set_param(params, "serve.bentoml_home", str(root / ".bentoml"))
        set_param(params, "monitor.store_url", f"sqlite:///{root / 'predictions.db'}")
        settings = load_settings(params)
        source = Workspace(args.from_workspace.resolve()) if args.from_workspace else None
        workspace = bench_workspace(root, settings, source, tta=False)
        result["model"] = "workspace" if source else "untrained (same arithmetic)"
        orthanc = orthanc_support.start_orthanc(root / "orthanc", {})
        port = free_port()
        orthanc.rest("PUT", "/modalities/pneumo", json=["PNEUMO", "127.0.0.1", port])
        command = [sys.executable, "-m", "pneumo.cli", "--params", str(params), "dicom-listen",
                   "--from-workspace", "--port", str(port), "--metrics-port", "0",
                   "--destination", orthanc.destination]  # fmt: skip
        log = root / "listen.log"
        listener = subprocess.Popen(command, cwd=root, stdout=log.open("wb"),
                                    stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            deadline = time.monotonic() + 300
            while "listening as" not in log.read_text() and time.monotonic() < deadline:
                if listener.poll() is not None:
                    raise SystemExit(f"dicom-listen exited:\n{log.read_text()[-2000:]}")
                time.sleep(0.5)
            # The PACS's own rate: the same instances stored straight into Orthanc.
            start = time.perf_counter()
            store(datasets, Destination("ORTHANC", "127.0.0.1", orthanc.dicom_port), "PNEUMO")
            result["orthanc_store_instances_per_s"] = round(
                len(datasets) / (time.perf_counter() - start), 2
            )
            listener_level(orthanc, port, datasets[:4], 1)  # warm-up
            result["listener"] = {f"associations_{n}": listener_level(orthanc, port, datasets, n)
                                  for n in ASSOCIATIONS}  # fmt: skip
        finally:
            listener.terminate()
            listener.wait(timeout=60)
            orthanc.stop()
        from pneumo.registry.bento import import_champion

        tag, _, _ = import_champion(settings, workspace, from_workspace=True)
        process, url = start_server(params, root / ".bentoml", tag, root / "serve.log", 300)
        try:
            asyncio.run(predict_level(url, bodies[:4], 1))  # warm-up
            result["predict"] = {f"concurrency_{n}": asyncio.run(predict_level(url, bodies, n))
                                 for n in ASSOCIATIONS}  # fmt: skip
        finally:
            stop_server(process)
    result["load_average"] = os.getloadavg()
    text = json.dumps(result, indent=2)
    print(text)
    (REPO / "bench" / "results" / "dicom.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
