"""The MLflow model registry: register, gate, promote, roll back, fetch.

Every evaluated model becomes one version of ``registry.model_name`` (alias ``challenger``). It
replaces the ``champion`` only when the gate passes it; every verdict and every deliberate change
is written as version tags, so the registry is its own audit log. Where each part lives:

- ``client.py``: the only module that calls MLflow's registry API; retries of transient failures.
- ``gate.py``: the promotion rule (floors, non-inferiority), pure.
- ``verdict.py``: the gate's verdict and how it reads (terminal table, version descriptions).
- ``rescore.py``: the champion scored again on this workspace's test split, as evaluation scores.
- ``register.py``: register the evaluated model and apply the gate.
- ``promotion.py``: alias moves in one all-or-nothing transaction; promote, rollback.
- ``status.py``: what the registry holds; a version's files for serving.
"""

from pneumo.registry.client import (
    RETRY_ATTEMPTS,
    RegistryError,
    RegistryUnavailableError,
    is_transient,
    with_retries,
)
from pneumo.registry.gate import gate
from pneumo.registry.promotion import PromotionError, promote, rollback
from pneumo.registry.register import register_and_gate
from pneumo.registry.status import (
    champion_predictor,
    download_version,
    status,
    version_predictor,
)
from pneumo.registry.verdict import GateVerdict, verdict_table

__all__ = [
    "RETRY_ATTEMPTS",
    "GateVerdict",
    "PromotionError",
    "RegistryError",
    "RegistryUnavailableError",
    "champion_predictor",
    "download_version",
    "version_predictor",
    "gate",
    "is_transient",
    "promote",
    "register_and_gate",
    "rollback",
    "status",
    "verdict_table",
    "with_retries",
]
