"""A hostile corpus against a real `bentoml serve`: damaged files made from the shared radiographs,
bombs, bad DICOMs, framing and multipart abuse, slow and stalled uploads.

Every case must get its expected 4xx (never a 5xx, never a 200 for a damaged file) with a JSON
error, valid requests must keep being answered while 70 uploads stall, and the server must be
ready and answering a real radiograph afterwards, with no traceback in its log.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.serving.hostile_corpus import (
    Hostile,
    dicom_cases,
    dicom_jpeg_damage,
    jpeg_bombs,
    jpeg_damage,
    png_cases,
)
from tests.serving.serving_support import Server, ServingLab, start_source_server

pytestmark = pytest.mark.slow
READ_TIMEOUT_S = 2  # serve.read_timeout_s of this server: slow bodies are cut quickly
STALLED = 70


@pytest.fixture(scope="module")
def server(serving_lab: ServingLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("hostile")
    running = start_source_server(
        serving_lab, folder, **{"serve.read_timeout_s": str(READ_TIMEOUT_S)}
    )
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def corpus(originals_root: Path, real_root: Path) -> list[Hostile]:
    """About 150 damaged or hostile files from full-size originals and 224 px copies."""
    originals = sorted(originals_root.rglob("*.jpeg"))[::8]  # six, baseline and progressive
    copies = sorted((real_root / "val").rglob("*.jpeg"))[::200][:2]
    cases: list[Hostile] = []
    for seed, path in enumerate([*originals, *copies]):
        cases += jpeg_damage(path.stem, path.read_bytes(), seed)
    cases += jpeg_bombs(originals[0].read_bytes())
    with Image.open(originals[1]) as img:
        gray = np.asarray(img.convert("L").resize((700, 600)))
    cases += png_cases(gray)
    cases += dicom_cases(gray)
    for seed, path in enumerate(originals[:3]):
        cases += dicom_jpeg_damage(path.stem, path.read_bytes(), seed)
    assert len({c.name for c in cases}) == len(cases)
    return cases


def _multipart(parts: list[bytes], boundary: str = "b0undary") -> tuple[bytes, str]:
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + part + b"\r\n" for part in parts)
    return body + b"--" + boundary.encode() + b"--\r\n", f"multipart/form-data; boundary={boundary}"


def _file_part(name: str, filename: str, content_type: str, data: bytes) -> bytes:
    disposition = f'Content-Disposition: form-data; name="{name}"; filename="{filename}"'
    return f"{disposition}\r\nContent-Type: {content_type}\r\n\r\n".encode() + data


def framing_cases(jpeg: bytes) -> list[tuple[str, str, str, dict, set[int], str | None]]:
    """(name, method, path, httpx kwargs, statuses, code) of multipart and routing abuse."""
    good = _file_part("image", "x.jpeg", "image/jpeg", jpeg)
    long_name, long_type = _multipart(
        [_file_part("image", "a" * 5000 + ".jpeg", "image/jpeg", jpeg)]
    )
    mismatch, _ = _multipart([good], "aaa")
    no_disposition, nd_type = _multipart([b"Content-Type: image/jpeg\r\n\r\n" + jpeg])
    no_name, nn_type = _multipart(
        [b'Content-Disposition: form-data; filename="x.jpeg"\r\n\r\n' + jpeg]
    )
    fields = [f'Content-Disposition: form-data; name="f{i}"\r\n\r\nx'.encode() for i in range(40)]
    many_fields, mf_type = _multipart([*fields, good])
    nested, ne_type = _multipart(
        [_file_part("image", "x", "multipart/mixed; boundary=zz", b"--zz--")]
    )
    pdf, pdf_type = _multipart([_file_part("image", "x.pdf", "application/pdf", jpeg)])
    unclosed = _multipart([good])[0][:-40]
    raw = lambda body, kind: {"content": body, "headers": {"content-type": kind}}  # noqa: E731
    return [
        (
            "filename_5000_chars",
            "POST",
            "/predict",
            raw(long_name, long_type),
            {200},  # a long file name is legal: answered, the name cut for echoing
            None,
        ),
        (
            "boundary_mismatch",
            "POST",
            "/predict",
            raw(mismatch, "multipart/form-data; boundary=bbb"),
            {400},
            None,
        ),
        ("part_without_disposition", "POST", "/predict", raw(no_disposition, nd_type), {400}, None),
        (
            "part_without_name",
            "POST",
            "/predict",
            raw(no_name, nn_type),
            {400},
            "invalid_multipart",
        ),
        (
            "forty_text_fields",
            "POST",
            "/predict",
            raw(many_fields, mf_type),
            {400},
            "invalid_multipart",
        ),
        ("nested_multipart", "POST", "/predict", raw(nested, ne_type), {400, 415}, None),
        ("pdf_part", "POST", "/predict", raw(pdf, pdf_type), {415}, "unsupported_media_type"),
        (
            "unclosed_form",
            "POST",
            "/predict",
            raw(unclosed, long_type.replace("b0undary", "b0undary")),
            {400},
            None,
        ),
        (
            "batch_boundary_mismatch",
            "POST",
            "/predict_batch",
            raw(mismatch, "multipart/form-data; boundary=bbb"),
            {400},
            None,
        ),
        ("unknown_route", "GET", "/nope", {}, {404}, "not_found"),
        (
            "post_unknown_route",
            "POST",
            "/admin/upload",
            raw(jpeg, "image/jpeg"),
            {404},
            "not_found",
        ),
        ("post_livez", "POST", "/livez", {}, {405}, "method_not_allowed"),
        ("post_readyz", "POST", "/readyz", {}, {405}, "method_not_allowed"),
        ("get_predict", "GET", "/predict", {}, {405}, "method_not_allowed"),
        ("delete_metadata", "DELETE", "/metadata", {}, {405}, "method_not_allowed"),
    ]


def _raw_exchange(url: str, request: bytes, wait: float = 5.0) -> bytes:
    """Send raw bytes (framing httpx refuses to produce) and read what comes back."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        sock.sendall(request)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def _status(reply: bytes) -> int | None:
    line = reply.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) > 1 and line[1].isdigit() else None


def test_hostile_files_are_refused_and_valid_ones_answered(
    server: Server, corpus: list[Hostile]
) -> None:
    assert len(corpus) >= 150
    assert sum(c.damaged for c in corpus) >= 140
    wrong = []
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for case in corpus:
            response = client.post(
                "/predict", content=case.data, headers={"content-type": case.content_type}
            )
            body = response.json()
            if response.status_code not in case.statuses or (
                case.code and body.get("code") != case.code
            ):
                wrong.append((case.name, response.status_code, str(body)[:160]))
            elif response.status_code != 200 and set(body) < {"error", "code"}:
                wrong.append((case.name, "not our error format", str(body)[:160]))
        assert client.get("/readyz").status_code == 200
    assert not wrong, wrong


def test_framing_and_routing_abuse_gets_json_4xx(server: Server, jpeg_paths: list[Path]) -> None:
    jpeg = jpeg_paths[2].read_bytes()
    wrong = []
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for name, method, path, kwargs, statuses, code in framing_cases(jpeg):
            response = client.request(method, path, **kwargs)
            try:
                body = response.json()
            except json.JSONDecodeError:
                body = {"not json": response.text[:100]}
            if 200 in statuses and response.status_code in statuses:
                continue  # a legal request, answered
            if response.status_code not in statuses or "error" not in body or "code" not in body:
                wrong.append((name, response.status_code, body))
            elif code and body["code"] != code:
                wrong.append((name, response.status_code, body))
        long_name = framing_cases(jpeg)[0][3]
        assert client.post("/predict", **long_name).json()["label"] in ("NORMAL", "PNEUMONIA")
        files = [("images", ("a" * 5000 + ".jpeg", jpeg, "image/jpeg"))]
        echoed = client.post("/predict_batch", files=files).json()["predictions"][0]["filename"]
        assert echoed == "a" * 200  # echoed (and logged) cut to 200 characters
    post = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
    raw = [  # framing that h11 refuses before any route runs: never a 5xx
        post + b"Content-Length: 12x\r\n\r\n" + jpeg[:12],
        post + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
        post + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /metadata HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 100_000 + b"\r\n\r\n",
        b"NOT-HTTP\r\n\r\n",
    ]
    for request in raw:
        status = _status(_raw_exchange(server.url, request))
        if status is not None and status >= 500:
            wrong.append((request[:40], status))
    assert not wrong, wrong


def test_framing_is_refused_as_the_http_specification_says(
    server: Server, jpeg_paths: list[Path]
) -> None:
    """Leniencies h11 lets through, each answered with its status and the service's JSON."""
    jpeg = jpeg_paths[2].read_bytes()
    length = f"Content-Length: {len(jpeg)}\r\n".encode()
    post = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
    cases = {
        "gzip_then_chunked": (post + b"Transfer-Encoding: gzip, chunked\r\n\r\n"
                              + f"{len(jpeg):x}\r\n".encode() + jpeg + b"\r\n0\r\n\r\n",
                              501, "unsupported_transfer_coding"),
        "header_100_kb": (post + length + b"X-Pad: " + b"a" * 100_000 + b"\r\n\r\n" + jpeg,
                          431, "headers_too_large"),
        "http10_post_without_length": (
            b"POST /predict HTTP/1.0\r\nHost: x\r\nContent-Type: image/jpeg\r\n\r\n" + jpeg,
            411, "length_required"),
        "expect_continue_oversize": (post + b"Expect: 100-continue\r\n"
                                     b"Content-Length: 900000000\r\n\r\n", 413, "body_too_large"),
    }  # fmt: skip
    wrong = []
    for name, (request, status, code) in cases.items():
        reply = _raw_exchange(server.url, request, wait=20)
        head, _, body = reply.partition(b"\r\n\r\n")
        got = _status(reply)
        try:
            answered = json.loads(body)["code"] if got else None
        except (json.JSONDecodeError, KeyError):
            answered = body[:80]
        if (got, answered) != (status, code):
            wrong.append((name, got, answered))
    assert not wrong, wrong
    # the plain forms of the same requests are answered
    ok = post + length + b"\r\n" + jpeg
    assert _status(_raw_exchange(server.url, ok, wait=20)) == 200


def _read_reply(sock: socket.socket) -> bytes:
    """One HTTP answer: its head and the Content-Length bytes of body after it."""
    reply = b""
    while b"\r\n\r\n" not in reply and (chunk := sock.recv(65536)):
        reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length and (chunk := sock.recv(65536)):
        body += chunk
    return head + b"\r\n\r\n" + body


def _stall(url: str, declared: int = 100_000) -> socket.socket:
    """A connection that announces a body and sends only its first bytes."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
    head += f"Content-Length: {declared}\r\n\r\n"
    sock.sendall(head.encode() + b"\xff\xd8\xff" + b"\0" * 97)
    return sock


def test_stalled_uploads_do_not_lock_out_valid_requests(
    server: Server, jpeg_paths: list[Path]
) -> None:
    jpeg = jpeg_paths[3].read_bytes()
    stalled = [_stall(server.url) for _ in range(STALLED)]
    try:
        started = time.monotonic()
        with httpx.Client(base_url=server.url, timeout=30) as client, ThreadPoolExecutor(4) as pool:
            answers = list(
                pool.map(
                    lambda _: client.post(
                        "/predict", content=jpeg, headers={"content-type": "image/jpeg"}
                    ),
                    range(8),
                )
            )
        assert [a.status_code for a in answers] == [200] * 8, [a.text[:100] for a in answers]
        assert time.monotonic() - started < READ_TIMEOUT_S + 10
        replies = []
        for sock in stalled:  # each stalled upload is cut after serve.read_timeout_s
            sock.settimeout(READ_TIMEOUT_S + 20)
            replies.append(_read_reply(sock))
        statuses = [_status(reply) for reply in replies]
        assert statuses == [408] * STALLED, statuses[:5]
        assert b"body_timeout" in replies[0]
    finally:
        for sock in stalled:
            sock.close()


def test_trickled_body_and_disconnects_are_4xx_or_logged(
    server: Server, jpeg_paths: list[Path]
) -> None:
    jpeg = jpeg_paths[4].read_bytes()

    def trickle() -> Iterator[bytes]:
        for start in range(0, 4000, 100):
            yield jpeg[start : start + 100]
            time.sleep(0.25)  # 40 pieces over 10 s: far past serve.read_timeout_s

    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.post(
            "/predict", content=trickle(), headers={"content-type": "image/jpeg"}
        )
        assert response.status_code == 408 and response.json()["code"] == "body_timeout"
    for _ in range(3):  # announce a body, send half of it, hang up
        sock = _stall(server.url, declared=len(jpeg))
        sock.sendall(jpeg[: len(jpeg) // 2])
        sock.close()
    time.sleep(1)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.get("/readyz").status_code == 200
        ok = client.post("/predict", content=jpeg, headers={"content-type": "image/jpeg"})
        assert ok.status_code == 200
    log = server.log.read_text(errors="replace")
    assert "client disconnected" in log
    assert "Traceback" not in log and "ClientDisconnect" not in log
    assert server.process.poll() is None
