"""The DICOM node against a real PACS (Orthanc): a radiograph forwarded by the PACS comes back as
a Structured Report and a Grad-CAM overlay in its study, with the values /predict gives; bad
input gets failure statuses; a destination that is down loses nothing; dicom-pull over DICOMweb."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pynetdicom
import pytest
import sqlalchemy as sa
from PIL import Image
from pydicom import Dataset
from pydicom.uid import (
    BasicTextSRStorage,
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    JPEGLosslessSV1,
    generate_uid,
)
from pynetdicom import AE

from serving.dicom.listener import UNCOMPRESSED
from serving.dicom.outbox import metrics
from serving.dicom.pull import pull
from serving.dicom.results import part10, read_report
from tests.serving import orthanc_support
from tests.serving.dicom_support import (
    radiograph_instance,
    retrieve,
    series_by_modality,
    start_listener,
    wait_for,
)
from tests.serving.hostile_corpus import dicom_cases
from tests.serving.serving_samples import dicom_bytes
from tests.serving.serving_support import free_port

pytestmark = pytest.mark.skipif(
    not orthanc_support.available() and not os.environ.get("CI"),
    reason="Orthanc is not installed (apt-get install orthanc orthanc-dicomweb; .ci/run does)",
)
COMPARED = ("label", "threshold", "refer_to_radiologist", "out_of_distribution", "ood_reason")


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[orthanc_support.Orthanc]:
    orthanc = orthanc_support.start_orthanc(tmp_path_factory.mktemp("orthanc"), {})
    yield orthanc
    orthanc.stop()


@pytest.fixture(scope="module")
def listener(serving_lab, pacs, tmp_path_factory):
    running = start_listener(serving_lab, tmp_path_factory.mktemp("listener"),
                             destination=pacs.destination)  # fmt: skip
    # The PACS knows pneumo as a peer it may forward to and accept results from.
    pacs.rest("PUT", "/modalities/pneumo", json=["PNEUMO", "127.0.0.1", running.port])
    yield running
    running.stop()


def _association(port: int, contexts: list[tuple[str, str]]):
    ae = AE(ae_title="TESTSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, syntax)
    return ae.associate("127.0.0.1", port, ae_title="PNEUMO")


def _store(port: int, dataset: Dataset) -> Dataset:
    assoc = _association(port, [(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)])
    assert assoc.is_established
    try:
        return assoc.send_c_store(dataset)
    finally:
        assoc.release()


@pytest.mark.slow
def test_a_radiograph_forwarded_by_the_pacs_comes_back_as_report_and_overlay(
    listener, pacs, jpeg_paths, asgi_client
) -> None:
    source = radiograph_instance(jpeg_paths[0])
    study = str(source.StudyInstanceUID)
    stored = pacs.rest("POST", "/instances", content=part10(source)).json()
    forwarded = pacs.rest("POST", "/modalities/pneumo/store",
                          json={"Resources": [stored["ID"]], "Synchronous": True}).json()  # fmt: skip
    assert forwarded["FailedInstancesCount"] == 0
    found = wait_for(lambda: (s := series_by_modality(pacs, study)).get("SR") and "OT" in s and s)
    (report,) = retrieve(pacs, study, found["SR"][0])
    values = read_report(report)
    # The HTTP route, on the same DICOM bytes.
    answer = asgi_client.post("/predict", content=part10(source),
                              headers={"Content-Type": "application/dicom"}).json()  # fmt: skip
    assert values["probability"] == pytest.approx(answer["probability"], abs=1e-5)
    assert {k: values[k] for k in COMPARED} == {k: answer[k] for k in COMPARED}
    assert values["source_sop_instance_uid"] == source.SOPInstanceUID
    assert values["model_version"] == answer["model"]["version"]
    assert report.PatientID == source.PatientID and report.StudyInstanceUID == study
    (overlay,) = retrieve(pacs, study, found["OT"][0])
    assert overlay.PhotometricInterpretation == "RGB"
    assert overlay.pixel_array.shape == (512, 512, 3)
    assert overlay.pixel_array.std() > 5  # an image, not a blank
    # The prediction log has the row and the UIDs, and nothing waits in the outbox.
    listener.node.monitoring.log.flush(10)
    query = sa.text(
        "SELECT p.endpoint, i.study_uid, i.series_uid, i.sender FROM predictions p "
        "JOIN dicom_instances i ON i.request_id = p.request_id WHERE i.sop_instance_uid = :uid"
    )
    with sa.create_engine(listener.node.outbox.store.url).connect() as conn:
        row = conn.execute(query, {"uid": str(source.SOPInstanceUID)}).one()
    assert row.endpoint == "dicom" and row.study_uid == study and row.sender == "ORTHANC"
    assert row.series_uid == source.SeriesInstanceUID
    assert wait_for(lambda: listener.node.outbox.pending() == 0 or None, 20)


def test_echo_and_bad_instances_get_failure_statuses_and_log_lines(
    listener, originals_root: Path, caplog, monkeypatch
) -> None:
    caplog.set_level(logging.WARNING, logger="pneumo.dicom")
    assoc = _association(listener.port, [("1.2.840.10008.1.1", ExplicitVRLittleEndian)])
    assert assoc.send_c_echo().Status == 0
    assoc.release()
    gray = np.asarray(Image.open(sorted(originals_root.rglob("*.jpeg"))[1]).convert("L"))
    small = np.ascontiguousarray(gray[:256, :256])
    cases: dict[str, tuple[bytes, set[int]]] = {
        "multi_frame": (dicom_bytes(np.concatenate([small, small]), frames=2), {0xA900}),
        "absurd_dimensions": (dicom_bytes(small, rows=60000, columns=60000), {0xA700}),
        "damaged_pixel_data": (dicom_bytes(small, pixel_data=small.tobytes()[:1000]), {0xC000}),
    }
    for hostile in dicom_cases(gray):
        # An unknown transfer syntax cannot even be proposed (see the negotiation below).
        if hostile.name not in ("dicom_valid", "dicom_unknown_transfer_syntax"):
            cases[hostile.name] = (hostile.data, {0xA900, 0xC000, 0xA700})
    report = Dataset()
    report.SOPClassUID, report.SOPInstanceUID = BasicTextSRStorage, generate_uid()
    report.file_meta = Dataset()
    report.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    statuses = {}
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    for name, (data, expected) in cases.items():
        path = listener.node.outbox.store.url.split("///")[1] + f".{name}.dcm"
        Path(path).write_bytes(data)
        contexts = [(ComputedRadiographyImageStorage, syntax) for syntax in UNCOMPRESSED]
        assoc = _association(listener.port, contexts)
        status = assoc.send_c_store(path)  # the file's bytes as they are: parsed by no one here
        assoc.release()
        statuses[name] = status.Status
        assert status.Status in expected, name
        assert status.ErrorComment, name  # the reason travels with the status
    non_image = _store(listener.port, report)
    assert non_image.Status == 0x0122 and "Basic Text SR" in non_image.ErrorComment
    # An undecodable transfer syntax is refused at association, with a log line.
    contexts = [("1.2.840.10008.1.1", ExplicitVRLittleEndian),
                (ComputedRadiographyImageStorage, JPEGLosslessSV1)]  # fmt: skip
    assoc = _association(listener.port, contexts)
    assert assoc.is_established and len(assoc.rejected_contexts) == 1
    assoc.release()
    logged = caplog.text
    assert "no decoder for that transfer syntax" in logged
    assert logged.count("refused") >= len(cases) + 1, statuses
    # The listener is alive and scores a good one after all that.
    assert (
        _store(listener.port, radiograph_instance(sorted(originals_root.rglob("*.jpeg"))[2])).Status
        == 0
    )


def test_a_stalled_association_does_not_block_others(listener, jpeg_paths) -> None:
    stalled = socket.create_connection(("127.0.0.1", listener.port))
    stalled.sendall(b"\x01\x00\x00\x00\x10\x00")  # the start of an A-ASSOCIATE-RQ, then silence
    try:
        started = time.monotonic()
        assert _store(listener.port, radiograph_instance(jpeg_paths[3])).Status == 0
        assert time.monotonic() - started < 20
    finally:
        stalled.close()


@pytest.mark.slow
def test_results_wait_in_the_store_while_the_pacs_is_down(
    serving_lab, jpeg_paths, tmp_path
) -> None:
    port = free_port()
    destination = f"{orthanc_support.AE_TITLE}@127.0.0.1:{port}"
    running = start_listener(serving_lab, tmp_path / "node", destination=destination,
                             retry_initial_s=0.5, retry_max_s=1.0)  # fmt: skip
    counter = metrics()["results"]
    retries_before = counter.labels("retry")._value.get()
    pacs = None
    try:
        source = radiograph_instance(jpeg_paths[4])
        assert _store(running.port, source).Status == 0
        outbox = running.node.outbox
        wait_for(lambda: counter.labels("retry")._value.get() > retries_before, 30)
        assert outbox.pending() == 2  # the report and the overlay, kept
        assert all(r["attempts"] >= 1 and r["last_error"] for r in outbox.rows())
        # The PACS comes up on that port: the next attempt delivers both.
        pacs = orthanc_support.start_orthanc(tmp_path / "pacs", {}, dicom_port=port)
        pacs.rest("PUT", "/modalities/pneumo", json=["PNEUMO", "127.0.0.1", running.port])
        wait_for(lambda: outbox.pending() == 0 or None, 60)
        found = series_by_modality(pacs, str(source.StudyInstanceUID))
        assert set(found) == {"SR", "OT"}
        assert all(r["delivered_at"] is not None for r in outbox.rows())
        with sa.create_engine(outbox.store.url).connect() as conn:  # delivered bytes are dropped
            assert (
                conn.execute(
                    sa.text("SELECT count(*) FROM dicom_outbox WHERE payload IS NOT NULL")
                ).scalar()
                == 0
            )
    finally:
        running.stop()
        if pacs is not None:
            pacs.stop()


@pytest.mark.slow
def test_dicom_pull_scores_a_study_in_the_pacs_once(
    serving_lab, pacs, jpeg_paths, tmp_path
) -> None:
    import bentoml

    from serving.dicom.node import DicomNode
    from tests.serving.dicom_support import dicom_settings

    study = generate_uid()
    sources = [radiograph_instance(p, study) for p in jpeg_paths[5:7]]
    for source in sources:
        pacs.rest("POST", "/instances", content=part10(source))
    node = DicomNode(
        dicom_settings(serving_lab, tmp_path), bentoml.models.get(serving_lab.model_tag), tmp_path
    )
    try:
        first = pull(node, pacs.dicomweb, study)
        assert len(first.scored) == 2 and first.pending == 0 and first.delivered == 4
        again = pull(node, pacs.dicomweb, study)
        assert again.scored == [] and again.skipped == 2
    finally:
        node.close()
    found = series_by_modality(pacs, study)
    reports = [read_report(ds) for series in found["SR"] for ds in retrieve(pacs, study, series)]
    assert sorted(r["source_sop_instance_uid"] for r in reports) == sorted(
        s.SOPInstanceUID for s in sources
    )
    assert {round(r["probability"], 6) for r in reports} == {
        round(s["probability"], 6) for s in first.scored
    }


@pytest.mark.slow
def test_the_commands_listen_send_and_count_on_metrics(
    serving_lab, pacs, jpeg_paths, tmp_path
) -> None:
    """`pneumo dicom-listen` and `pneumo dicom-send` as a user runs them."""
    import subprocess
    import sys

    from tests.serving.serving_support import REPO

    port, metrics_port = free_port(), free_port()
    env = {**os.environ, "PNEUMO_MONITOR_URL": f"sqlite:///{tmp_path / 'predictions.db'}"}
    command = [sys.executable, "-m", "pneumo.cli", "--params", str(serving_lab.params),
               "dicom-listen", "--from-workspace", "--port", str(port),
               "--metrics-port", str(metrics_port), "--destination", pacs.destination]  # fmt: skip
    log = tmp_path / "listen.log"
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log.open("wb"),
                               stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        wait_for(
            lambda: "listening as PNEUMO" in log.read_text() or process.poll() is not None, 180
        )
        assert process.poll() is None, log.read_text()
        pacs.rest("PUT", "/modalities/pneumo", json=["PNEUMO", "127.0.0.1", port])
        study = generate_uid()
        sent = subprocess.run([sys.executable, "-m", "pneumo.cli", "dicom-send", str(jpeg_paths[7]),
                               "--to", f"PNEUMO@127.0.0.1:{port}", "--study-uid", study],
                              cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert sent.returncode == 0 and "stored as" in sent.stdout, sent.stderr
        wait_for(lambda: "SR" in series_by_modality(pacs, study), 60)
        delivered = 'pneumo_dicom_results_total{outcome="delivered"} 2.0'

        def exposed() -> str | None:
            text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
            return text if delivered in text else None

        text = wait_for(exposed, 30)
        assert 'pneumo_dicom_instances_total{outcome="scored"} 1.0' in text
        assert "pneumo_dicom_outbox_pending 0.0" in text
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert process.returncode == 0, log.read_text()[-2000:]
    # `pneumo dicom-pull`: a study already in the PACS, scored and written back by STOW-RS.
    study = generate_uid()
    pacs.rest("POST", "/instances", content=part10(radiograph_instance(jpeg_paths[8], study)))
    pulled = subprocess.run([sys.executable, "-m", "pneumo.cli", "--params", str(serving_lab.params),
                             "dicom-pull", "--url", pacs.dicomweb, "--study", study,
                             "--from-workspace"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert pulled.returncode == 0, pulled.stderr[-2000:]
    summary = json.loads(pulled.stdout.strip().splitlines()[-1])
    assert summary["scored"] == 1 and summary["results_delivered"] == 2
    assert {"SR", "OT"} <= set(series_by_modality(pacs, study))
