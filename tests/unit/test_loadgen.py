"""bench/loadgen.py, the serving benchmark's HTTP client, against a small local HTTP/1.1 server:
every answer is read whole (Content-Length or chunked), kept-alive connections are reused,
closed ones reopened, and failures counted instead of ending the run."""

from __future__ import annotations

import asyncio

from bench import loadgen


async def _serve(handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return await reader.readexactly(length)


def test_answers_are_read_whole_on_kept_alive_connections() -> None:
    connections: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        n = 0
        while True:
            try:
                body = await _read_request(reader)
            except asyncio.IncompleteReadError:
                break
            n += 1
            if n % 2:  # Content-Length
                answer = b"ok:" + body
                writer.write(b"HTTP/1.1 200 OK\r\nServer-Timing: total;dur=1.5\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer))  # fmt: skip
            else:  # chunked, in two pieces
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"3\r\nok:\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))  # fmt: skip
            await writer.drain()
        writer.close()

    async def main() -> loadgen.Results:
        server, url = await _serve(handler)
        async with server:
            posts = [loadgen.post_request(url, "/p", "image/jpeg", b"x" * n) for n in (10, 70_000)]
            return await loadgen.run(url, posts, concurrency=2, total=20, seconds=30)

    results = asyncio.run(main())
    assert not results.errors and len(results.answers) == 20
    assert sorted({len(a.body) for a in results.answers}) == [13, 70_003]
    assert len(connections) == 2  # one per client, kept alive
    timed = [a for a in results.answers if "server-timing" in a.headers]
    assert timed and all(a.headers["server-timing"] == "total;dur=1.5" for a in timed)


def test_refusals_and_dropped_connections_are_counted_and_the_run_goes_on() -> None:
    served = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        while True:
            try:
                await _read_request(reader)
            except asyncio.IncompleteReadError:
                break
            served += 1
            if served % 3 == 0:  # drops the connection without an answer
                break
            if served % 3 == 1:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
                await writer.drain()
                break
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
        writer.close()

    async def main() -> loadgen.Results:
        server, url = await _serve(handler)
        async with server:
            posts = [loadgen.post_request(url, "/p", "image/jpeg", b"abc")]
            return await loadgen.run(url, posts, concurrency=1, total=9, seconds=30)

    results = asyncio.run(main())
    assert len(results.answers) == 3 and results.errors["503"] == 3
    assert sum(results.errors.values()) == 6  # 3 refusals, 3 dropped connections
