"""pneumo: detect pneumonia in paediatric chest X-rays, from a raw folder to a served model."""

import os

# Telemetry off for every tool in the stack, before any of them is imported.
for _name, _value in {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "BENTOML_DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
}.items():
    os.environ.setdefault(_name, _value)

# Idle OpenMP threads sleep instead of spinning (set before torch loads libgomp): on a machine
# whose cores are shared with other work, spinning made 2-thread training 4x slower than 1 thread.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Prefect's temporary server (commands run without PREFECT_API_URL) must boot within this many
# seconds. Prefect waits 20 s by default, which a busy 2-core machine overran in CI (the command
# then fails before any work); the server pneumo starts itself waits as long (flows/local_api.py).
# Read when Prefect is imported, so set here, before it is.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

__version__ = "0.1.0"
