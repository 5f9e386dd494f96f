"""`pneumo serve --host --port --workers`: overrides of params.yaml for one run, validated like it.

The real server with two model workers runs in test_api_clients.py (slow)."""

from __future__ import annotations

import json

import pytest

from pneumo.cli.serve import serve_command
from pneumo.config import Settings
from pneumo.errors import ConfigError
from pneumo.stored_model import SERVE_ARGS_ENV


def test_params_give_the_defaults_and_flags_override_them() -> None:
    settings = Settings()
    command, env = serve_command(settings, "pneumo-service:v1")
    assert command[-5:] == ["pneumo-service:v1", "--host", "127.0.0.1", "--port", "3000"]
    assert env == {}
    command, env = serve_command(settings, "pneumo-service:v1", "0.0.0.0", 8080, 3)
    assert command[-4:] == ["--host", "0.0.0.0", "--port", "8080"]
    assert json.loads(env[SERVE_ARGS_ENV]) == {"workers": 3}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"port": 70000}, "--port"), ({"workers": 0}, "--workers"), ({"host": ""}, "--host")],
)
def test_invalid_overrides_say_which_flag(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        serve_command(Settings(), "pneumo-service:v1", **overrides)
