"""The team set-up without Docker: settings that switch servers, prefect.yaml, the compose file."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from pneumo.workspace import Workspace

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
COMPOSE = INFRA / "docker-compose.yml"
# Services that run pneumo's own code, and so may only get settings pneumo (or its stack) reads.
PNEUMO_SERVICES = ("prefect-worker", "serving", "dicom-node")
TELEMETRY = (
    "DO_NOT_TRACK", "PREFECT_SERVER_ANALYTICS_ENABLED", "MLFLOW_DISABLE_TELEMETRY",
    "BENTOML_DO_NOT_TRACK", "DVC_NO_ANALYTICS", "GX_ANALYTICS_ENABLED",
)  # fmt: skip


def _env_example() -> dict[str, str]:
    lines = (INFRA / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def _compose() -> dict:
    """The compose file as written: ${VAR} references stay; `docker compose config` (below)
    checks the interpolation where Docker is installed."""
    return yaml.safe_load(COMPOSE.read_text())


def _port_of(service: dict) -> set[str]:
    """Container ports a service listens on (from its command) or publishes."""
    ports = {str(p).split(":")[-1] for p in service.get("ports", [])}
    command = service.get("command") or []
    command = command.split() if isinstance(command, str) else [str(c) for c in command]
    ports.update(command[i + 1] for i, word in enumerate(command[:-1]) if word == "--port")
    return ports


# ---------------------------------------------------------------- settings that switch servers


def test_mlflow_tracking_uri_env_wins_over_params(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pneumo import tracking

    ws = Workspace(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = f"sqlite:///{(tmp_path / 'mlruns.db').resolve()}"
    assert tracking.resolve_uri("sqlite:///mlruns.db", ws) == default
    assert tracking.resolve_uri("http://params-server:5000", ws) == "http://params-server:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")  # read at call time
    assert tracking.resolve_uri("sqlite:///mlruns.db", ws) == "http://mlflow:5000"


def _api_of_a_run(env: dict[str, str], log: Path) -> str:
    """The Prefect API a command-line retrain would report to, started with ``env``."""
    script = (
        "import sys\nfrom pathlib import Path\nfrom flows.local_api import prefect_api\n"
        "with prefect_api(Path(sys.argv[1])) as url:\n    print(url)\n"
    )
    run = subprocess.run([sys.executable, "-c", script, str(log)], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=180)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout.strip().splitlines()[-1]


def test_a_run_reports_to_prefect_api_url_and_starts_no_server_of_its_own(tmp_path: Path) -> None:
    env = {**os.environ, "PREFECT_API_URL": "http://prefect-server:4200/api"}
    assert _api_of_a_run(env, tmp_path / "server.log") == "http://prefect-server:4200/api"
    assert not (tmp_path / "server.log").exists()  # no local server was started


def test_without_prefect_api_url_a_run_starts_a_local_server(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    url = _api_of_a_run(env, tmp_path / "server.log")
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/api", url)
    assert (tmp_path / "server.log").is_file()


@pytest.mark.parametrize("entry", ["pneumo.cli", "flows.healthcheck", "flows.retrain"])
def test_prefect_waits_two_minutes_for_its_temporary_server_unless_told_otherwise(
    entry: str,
) -> None:
    """Prefect's 20 s default was overrun on a busy 2-core CI machine; pneumo's default is set
    before Prefect reads its settings, whichever entry point is imported first."""
    script = (
        f"import {entry}\nfrom prefect.settings import get_current_settings\n"
        "from flows.local_api import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as t\n"
        "print(get_current_settings().server.ephemeral.startup_timeout_seconds, t.value())\n"
    )
    name = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
    env = {k: v for k, v in os.environ.items() if k != name}
    for given, expected in ((None, "120 120"), ("45", "45 45")):
        run_env = env if given is None else {**env, name: given}
        run = subprocess.run([sys.executable, "-c", script], env=run_env, cwd=REPO,
                             capture_output=True, text=True, timeout=180)  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
        assert run.stdout.split("\n")[-2] == expected


# ---------------------------------------------------------------- prefect.yaml


def test_prefect_yaml_deployments_import_and_match_their_flows() -> None:
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    pull = config["pull"][0]["prefect.deployments.steps.set_working_directory"]
    assert pull["directory"] == "{{ $PNEUMO_WORKSPACE }}"
    names = set()
    for deployment in config["deployments"]:
        path, _, name = deployment["entrypoint"].partition(":")
        assert (REPO / path).is_file(), deployment["entrypoint"]
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, name)
        assert type(flow).__name__ == "Flow", f"{deployment['entrypoint']} is not a Prefect flow"
        accepted = inspect.signature(flow.fn).parameters
        unknown = set(deployment.get("parameters", {})) - set(accepted)
        assert not unknown, f"{deployment['name']}: {flow.name} takes no {sorted(unknown)}"
        assert deployment["work_pool"]["name"] == "pneumo-process"
        names.add(deployment["name"])
        if deployment["name"] == "pneumo-retrain":
            assert deployment["entrypoint"] == f"flows/retrain.py:{module.retrain.fn.__name__}"
            assert module.DEPLOYMENT_NAME == "pneumo-retrain"
    assert {"pneumo-retrain", "pneumo-healthcheck"} <= names


# ---------------------------------------------------------------- infra/docker-compose.yml


def test_compose_has_every_team_service_with_pinned_images() -> None:
    services = _compose()["services"]
    expected = {
        "postgres", "minio", "minio-buckets", "mlflow", "prefect-server", "prefect-worker",
        "serving",
    }  # fmt: skip
    assert expected <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        image = service.get("image", "")
        if not image.startswith("pneumo-"):  # third-party images: a fixed version
            assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image}"
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
    for name, port in (("mlflow", "5000"), ("prefect-server", "4200"), ("serving", "3000")):
        assert f"{port}:{port}" in services[name]["ports"], name
    for name in ("mlflow", "prefect-worker"):
        dockerfile = services[name]["build"]["dockerfile"]
        context = (INFRA / services[name]["build"]["context"]).resolve()
        assert (context / dockerfile).is_file(), dockerfile


def test_compose_mlflow_uses_postgres_and_proxies_artifacts_to_minio() -> None:
    services = _compose()["services"]
    words = services["mlflow"]["command"]
    store = words[words.index("--backend-store-uri") + 1]
    user, password = "${POSTGRES_USER:-pneumo}", "${POSTGRES_PASSWORD:?"
    assert store.startswith(f"postgresql+psycopg2://{user}:{password}")
    assert store.endswith("}@postgres:5432/mlflow")
    command = " ".join(words)
    assert "--artifacts-destination s3://mlflow" in command
    env = services["mlflow"]["environment"]
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env)
    assert (
        "mc mb --ignore-existing store/mlflow store/dvc" in services["minio-buckets"]["command"][0]
    )
    prefect_db = services["prefect-server"]["environment"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    assert prefect_db.startswith("postgresql+asyncpg://") and prefect_db.endswith(
        "@postgres:5432/prefect"
    )
    init = (INFRA / "postgres-init.sql").read_text()
    assert "CREATE DATABASE prefect" in init
    dockerfile = (INFRA / services["mlflow"]["build"]["dockerfile"]).read_text()
    assert "psycopg2-binary" in dockerfile and "boto3" in dockerfile


def test_compose_clients_reach_the_servers_by_service_name_and_port() -> None:
    services = _compose()["services"]
    env = services["prefect-worker"]["environment"]
    for variable, target in (
        ("MLFLOW_TRACKING_URI", "mlflow"),
        ("PREFECT_API_URL", "prefect-server"),
    ):
        url = urlparse(env[variable])
        assert url.hostname == target, variable
        assert str(url.port) in _port_of(services[target]), (
            f"{variable}: {target} is not on {url.port}"
        )
    assert env["PREFECT_API_URL"].endswith("/api")
    worker_command = services["prefect-worker"]["command"]
    pool = worker_command[worker_command.index("--pool") + 1]
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert {d["work_pool"]["name"] for d in config["deployments"]} == {pool}
    assert env["PNEUMO_WORKSPACE"] == services["prefect-worker"]["working_dir"] == "/workspace"


def test_compose_gives_pneumo_only_settings_it_honours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pneumo
    from pneumo.tracking import resolve_uri

    services = _compose()["services"]
    worker_env = services["prefect-worker"]["environment"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", worker_env["MLFLOW_TRACKING_URI"])
    prefect_url = worker_env["PREFECT_API_URL"]
    honoured = {
        # training, evaluation and the registry all resolve their store here
        "MLFLOW_TRACKING_URI": resolve_uri("sqlite:///mlruns.db", Workspace(tmp_path))
        == worker_env["MLFLOW_TRACKING_URI"],
        "PREFECT_API_URL": _api_of_a_run(
            {**os.environ, "PREFECT_API_URL": prefect_url}, tmp_path / "server.log"
        )
        == prefect_url,  # fmt: skip
        "PNEUMO_WORKSPACE": "{{ $PNEUMO_WORKSPACE }}" in (REPO / "prefect.yaml").read_text(),
        # S3 credentials of the DVC remote (botocore's standard variables)
        "AWS_ACCESS_KEY_ID": True,
        "AWS_SECRET_ACCESS_KEY": True,
    }
    pneumo_init = Path(pneumo.__file__).read_text()
    honoured.update({name: f'"{name}"' in pneumo_init for name in TELEMETRY})
    assert all(honoured.values()), [name for name, ok in honoured.items() if not ok]
    for name in PNEUMO_SERVICES:
        unknown = set(services[name].get("environment", {})) - set(honoured)
        assert not unknown, f"{name} gets settings pneumo never reads: {sorted(unknown)}"


def test_env_example_defines_every_compose_variable() -> None:
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", COMPOSE.read_text()))
    example = set(_env_example())
    assert used <= example, f"missing from infra/.env.example: {sorted(used - example)}"
    assert example <= used, f"unused in the compose file: {sorted(example - used)}"


def test_docker_compose_config_accepts_the_file() -> None:
    """The real parser, where the Docker CLI and its compose plug-in exist (not in CI)."""
    docker = shutil.which("docker")
    if (
        docker is None
        or subprocess.run([docker, "compose", "version"], capture_output=True).returncode
    ):
        pytest.skip("docker compose is not installed; the structural checks above stand in for it")
    run = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "--env-file", str(INFRA / ".env.example"),
         "--profile", "serving", "config", "--quiet"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
