"""The Prefect API of one command-line run: the configured server, or a local one started early.

Without ``PREFECT_API_URL`` Prefect starts a temporary server itself when the flow begins: it
first imports the server's code into this process, then waits for the server process to boot,
and only then runs anything; both sit on the critical path of every `make run`. Started here as
a plain ``prefect server start`` at the beginning of the command, the server boots on another
core while this process imports what the flow needs, and the run is recorded in the same place:
the database in ``PREFECT_HOME`` (a later ``prefect server start`` shows every run).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    PREFECT_UI_URL,
    temporary_settings,
)

from pneumo.errors import PneumoError


class PrefectServerError(PneumoError):
    """The local Prefect server did not start."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalServer:
    """`prefect server start` on a free loopback port, without UI, scheduler or late-run checks."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.port = free_port()
        log.parent.mkdir(parents=True, exist_ok=True)
        prefect = Path(sys.executable).parent / "prefect"
        command = [str(prefect), "server", "start", "--host", "127.0.0.1", "--port",
                   str(self.port), "--no-ui", "--no-scheduler", "--no-late-runs"]  # fmt: skip
        with log.open("wb") as handle:
            self.process = subprocess.Popen(
                command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches the flow, which then records the stop
            )  # fmt: skip

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def wait(self, timeout: float | None = None) -> str:
        """Block until the API answers; its URL. By default as long as Prefect's own temporary
        server may take (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, 120 s in pneumo)."""
        timeout = timeout or PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise PrefectServerError(f"the Prefect server exited: {self._tail()}")
                try:
                    if client.get(f"{self.api_url}/health").status_code == 200:
                        return self.api_url
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        raise PrefectServerError(
            f"the Prefect server did not answer in {timeout} s: {self._tail()}"
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def _tail(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.is_file() else ""
        return f"see {self.log}: " + " | ".join(text.strip().splitlines()[-5:])


@contextmanager
def prefect_api(log: Path, warm_up: Callable[[], None] = lambda: None) -> Iterator[str]:
    """Yield the API URL flows report to, starting a local server if none is configured.

    ``warm_up`` runs while the server boots (imports the flow needs anyway, for instance).
    """
    configured = PREFECT_API_URL.value()
    if configured:
        warm_up()
        yield configured
        return
    server = LocalServer(log)
    try:
        warm_up()
        url = server.wait()
        # No "View at" links: the UI is off and the server stops with this command.
        with temporary_settings({PREFECT_API_URL: url, PREFECT_UI_URL: ""}):
            try:
                yield url
            finally:
                deliver_pending()
    finally:
        server.stop()


def deliver_pending() -> None:
    """Send the logs and events this process still queues (task runs are recorded from events)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)
    EventsWorker.drain_all(timeout=30)


def prefect_console() -> None:
    """Let Prefect print the run's log in its own format (time, level, which task run).

    The `pneumo` command sets up plain logging for its one-line messages; Prefect keeps out of
    the way of any handler already on the root logger, so a flow run from the command line would
    lose the task names. The flows' commands hand the terminal back to Prefect with this.
    """
    import logging

    from prefect.logging.configuration import setup_logging

    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    setup_logging(incremental=False)
