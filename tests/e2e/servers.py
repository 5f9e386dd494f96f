"""Throwaway PostgreSQL, MLflow, Prefect server and Prefect worker processes for end-to-end tests.

Each context manager starts one real server on a free 127.0.0.1 port inside a temporary folder,
waits until it answers (failing with the tail of its log if it dies or never does), yields its
URL, and stops it by PID: the process group it leads gets SIGTERM (SIGINT for PostgreSQL, its
"fast" shutdown), then SIGKILL if it lingers. Nothing is left running or listening afterwards.

    with postgres_server() as pg, mlflow_server(pg, tmp / "artifacts") as tracking_uri:
        ...
    with prefect_server(tmp / "prefect") as api_url, prefect_worker(api_url, "pool", tmp / "w"):
        ...
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent  # the project's virtual environment
PG_USER = "pneumo"  # superuser of the throwaway cluster (trust authentication, loopback only)


class ServerStartError(RuntimeError):
    """A test server could not be started; the message carries the tail of its log."""


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.is_file() else "(no log)"


def _start(
    cmd: list[str], log: Path, env: dict[str, str] | None = None, user: str | None = None
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` as the leader of a new process group, output to ``log``, in log's folder."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as handle:
        return subprocess.Popen(
            cmd,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=log.parent,  # a folder the server's user can enter (not a root-only checkout)
            env=env,
            user=user,
            start_new_session=True,  # its own process group: children (workers) stop with it
        )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    """Stop a server by its PID (the process group it leads), escalating to SIGKILL."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    # Children may outlive a leader that exited by itself; the group id is still the leader's PID.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait(10)


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Poll ``url`` until it answers 200; fail early, with the log, if the server exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerStartError(f"{url}: server exited with {proc.returncode}\n{_tail(log)}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise ServerStartError(f"{url} did not answer within {timeout:.0f} s\n{_tail(log)}")


def postgres_bin() -> Path:
    """Folder of initdb/postgres: Debian keeps them out of PATH, under /usr/lib/postgresql/N/bin."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=os.path.getmtime)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise ServerStartError(
        "PostgreSQL not found: `apt-get install postgresql` (Debian) or put initdb on PATH"
    )


class PostgresCluster:
    """A throwaway cluster that a test can stop and start again (same port, same data)."""

    def __init__(self, root: Path, port: int, user: str | None, timeout: float) -> None:
        self.root, self.port, self.user, self.timeout = root, port, user, timeout
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        data, log = self.root / "data", self.root / "postgres.log"
        self.proc = _start(
            [str(postgres_bin() / "postgres"), "-D", str(data), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}",
             "-c", "fsync=off", "-c", "full_page_writes=off"],
            log, user=self.user,
        )  # fmt: skip
        _wait_postgres(self.port, self.proc, log, self.timeout)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, signal.SIGINT)  # SIGINT = PostgreSQL's fast shutdown
            self.proc = None

    def url(self, database: str) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{database}"


@contextmanager
def postgres_cluster(database: str = "pneumo", timeout: float = 60) -> Iterator[PostgresCluster]:
    """A fresh PostgreSQL cluster holding ``database``, stopped (and deleted) afterwards.

    initdb and postgres refuse to run as root, so as root both run as the ``postgres`` user
    (created by Debian's package) in a temporary folder it owns.
    """
    bindir = postgres_bin()
    as_root = os.geteuid() == 0
    user = "postgres" if as_root else None
    if as_root:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise ServerStartError(
                "PostgreSQL refuses to run as root and there is no 'postgres' user: install "
                "Debian's postgresql package (it creates one) or run the tests as another user"
            ) from None
    root = Path(tempfile.mkdtemp(prefix="pneumo-pg-"))
    try:
        if as_root:
            shutil.chown(root, "postgres", "postgres")
        init = subprocess.run(
            [str(bindir / "initdb"), "-D", str(root / "data"), "-U", PG_USER, "--auth=trust",
             "-E", "UTF8", "--no-sync", "--no-instructions"],
            capture_output=True, text=True, user=user, cwd=root, timeout=120,
        )  # fmt: skip
        if init.returncode != 0:
            raise ServerStartError(f"initdb failed:\n{init.stdout}{init.stderr}")
        cluster = PostgresCluster(root, free_port(), user, timeout)
        cluster.start()
        try:
            _create_database(cluster.port, database)
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def postgres_server(database: str = "pneumo", timeout: float = 60) -> Iterator[str]:
    """A fresh PostgreSQL cluster; yields ``postgresql://pneumo@127.0.0.1:PORT/<database>``."""
    with postgres_cluster(database, timeout) as cluster:
        yield cluster.url(database)


def _wait_postgres(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    import psycopg2

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerStartError(f"postgres exited with {proc.returncode}\n{_tail(log)}")
        try:
            psycopg2.connect(host="127.0.0.1", port=port, user=PG_USER, dbname="postgres").close()
            return
        except psycopg2.OperationalError:
            time.sleep(0.2)
    raise ServerStartError(
        f"postgres did not accept connections within {timeout:.0f} s\n{_tail(log)}"
    )


def _create_database(port: int, name: str) -> None:
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=port, user=PG_USER, dbname="postgres")
    try:
        conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with conn.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()


def create_database(server_url: str, name: str) -> str:
    """Another database on a :func:`postgres_server` (e.g. one for Prefect); returns its URL."""
    port = int(server_url.rsplit(":", 1)[1].split("/", 1)[0])
    _create_database(port, name)
    return f"postgresql://{PG_USER}@127.0.0.1:{port}/{name}"


def client_env(**extra: str) -> dict[str, str]:
    """The test's environment with telemetry off and the venv first on PATH, plus ``extra``."""
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "DO_NOT_TRACK": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.update(extra)
    return env


@contextmanager
def mlflow_server(backend_uri: str, artifacts_dir: Path, timeout: float = 120) -> Iterator[str]:
    """``mlflow server`` with a database backend and proxied artifacts; yields its http URL.

    Clients only need the URL: artifacts travel through the server (``mlflow-artifacts:/``)
    into ``artifacts_dir``, as they would into S3/MinIO with ``--artifacts-destination s3://...``.
    """
    artifacts_dir = Path(artifacts_dir)
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = artifacts_dir.parent / f"mlflow-server-{port}.log"
    env = client_env()
    env.pop("MLFLOW_TRACKING_URI", None)
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; pneumo ships psycopg2.
    backend_uri = backend_uri.replace("postgresql://", "postgresql+psycopg2://", 1)
    proc = _start(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", backend_uri,
         "--artifacts-destination", str(artifacts_dir), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        log, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", proc, log, timeout)
        yield url
    finally:
        stop(proc, timeout=5)  # uvicorn otherwise waits for the clients' keep-alive connections


@contextmanager
def prefect_server(
    home: Path, database_url: str | None = None, timeout: float = 120
) -> Iterator[str]:
    """``prefect server start`` (SQLite in ``home`` unless ``database_url``); yields its API URL.

    The scheduler is off so that deployments with cron schedules never start runs by themselves
    during a test; runs start only when the test asks for them.
    """
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = client_env(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_UI_ENABLED="false",
        PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
        PREFECT_SERVER_LOGGING_LEVEL="WARNING",
    )
    env.pop("PREFECT_API_URL", None)
    if database_url:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url.replace(
            "postgresql://", "postgresql+asyncpg://", 1
        )
    log = home / "server.log"
    proc = _start(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        log, env=env,
    )  # fmt: skip
    api_url = f"http://127.0.0.1:{port}/api"
    try:
        wait_http(f"{api_url}/health", proc, log, timeout)
        yield api_url
    finally:
        stop(proc)


def prefect_env(api_url: str, home: Path, **extra: str) -> dict[str, str]:
    """Environment for Prefect clients (CLI, workers, flow runs) talking to ``api_url``."""
    return client_env(PREFECT_API_URL=api_url, PREFECT_HOME=str(home), **extra)


@contextmanager
def prefect_worker(
    api_url: str, pool: str, home: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``prefect worker start`` on a ``process`` pool; yields the worker process (log in home)."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    worker_env = prefect_env(api_url, home, PREFECT_WORKER_QUERY_SECONDS="1", **(env or {}))
    log = home / f"worker-{pool}.log"
    proc = _start(
        [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process",
         "--install-policy", "never"],
        log, env=worker_env,
    )  # fmt: skip
    try:
        yield proc
    finally:
        stop(proc)


def worker_log(home: Path, pool: str) -> str:
    return _tail(Path(home) / f"worker-{pool}.log", 6000)
