"""A load generator that leaves the cores to the server: keep-alive HTTP/1.1 on asyncio streams.

bench/serve.py measures a server that shares this machine's 2 cores with the client. httpx spent
1.2-1.6 ms of CPU per request there (13-15 % of both cores at 8 clients) and its event loop added
about 6 ms to every measured latency beyond the server's own total. Like wrk, this client sends
requests built once and reads only a status line, headers and the body the headers announce:
about 0.3 ms of CPU per request and 3-5 ms outside the server's total (measured at 8 clients).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

MAX_HEAD = 65_536  # status line and headers of one answer


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    seconds: float


@dataclass
class Results:
    answers: list[Answer] = field(default_factory=list)  # 200s, in completion order
    errors: dict[str, int] = field(default_factory=dict)  # status code or exception name -> count
    wall_s: float = 0.0


def post_request(url: str, path: str, content_type: str, body: bytes) -> bytes:
    """One complete POST, built once and sent as many times as needed."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {urlsplit(url).netloc}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > MAX_HEAD:
        raise ValueError("answer headers too long")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")  # no trailers are sent to this client
        return status, headers, b"".join(chunks)
    return status, headers, await reader.readexactly(int(headers.get("content-length", "0")))


async def run(
    url: str, requests: list[bytes], concurrency: int, total: int, seconds: float,
    timeout: float = 120.0,
) -> Results:  # fmt: skip
    """``total`` of ``requests`` (in turn) from ``concurrency`` clients, each on its own kept-alive
    connection and sending its next request when the last is answered; stops after ``seconds``.
    A failed exchange is counted by its exception's name and the client reconnects."""
    parts = urlsplit(url)
    results = Results()
    sent = 0
    deadline = time.monotonic() + seconds

    async def client() -> None:
        nonlocal sent
        connection = None
        while sent < total and time.monotonic() < deadline:
            request = requests[sent % len(requests)]
            sent += 1
            start = time.perf_counter()
            try:
                if connection is None:
                    connection = await asyncio.open_connection(parts.hostname, parts.port)
                reader, writer = connection
                writer.write(request)
                status, headers, body = await asyncio.wait_for(_read_answer(reader), timeout)
            except (OSError, EOFError, ValueError, TimeoutError,
                    asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:  # fmt: skip
                key = type(exc).__name__
                results.errors[key] = results.errors.get(key, 0) + 1
                if connection is not None:
                    connection[1].close()
                connection = None
                continue
            if status == 200:
                results.answers.append(Answer(status, headers, body, time.perf_counter() - start))
            else:
                results.errors[str(status)] = results.errors.get(str(status), 0) + 1
            if headers.get("connection", "").lower() == "close":
                writer.close()
                connection = None
        if connection is not None:
            connection[1].close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    results.wall_s = time.perf_counter() - start
    return results
