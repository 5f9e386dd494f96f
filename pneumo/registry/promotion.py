"""Alias moves, all or nothing: promotion by the gate, deliberate promotion, rollback.

The registry uses aliases only (``champion``, ``challenger``, ``previous``), never the deprecated
stages. Every move runs inside :func:`alias_transaction`: when any step fails, the aliases are put
back as they were. Who moved what, when and why is written as version tags.
"""

from __future__ import annotations

import getpass
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from pneumo.config import Settings
from pneumo.registry.client import RegistryClient, RegistryError, connect, first_line
from pneumo.workspace import Workspace

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
MANAGED_ALIASES: tuple[str, ...] = (CHAMPION, CHALLENGER, PREVIOUS)


class PromotionError(RegistryError):
    """Moving the aliases failed part-way; they were put back as they were."""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, e.g. an anonymous container user
        return os.environ.get("USER", "unknown")


@contextmanager
def alias_transaction(registry: RegistryClient, what: str) -> Iterator[None]:
    """All-or-nothing alias moves: on any failure the managed aliases are put back as they were."""
    before = registry.aliases()
    try:
        yield
    except BaseException as exc:
        problems = _restore_aliases(registry, before)
        if not isinstance(exc, Exception):
            raise  # Ctrl-C: restored, now stop
        shown = ", ".join(f"{a}=v{v}" for a, v in sorted(before.items())) or "none"
        if problems:
            raise PromotionError(
                f"{what} failed ({first_line(exc)}) and the aliases could not all be restored "
                f"({'; '.join(problems)}): set them back by hand to {shown} "
                f"(MlflowClient.set_registered_model_alias)"
            ) from exc
        raise PromotionError(
            f"{what} failed ({first_line(exc)}); the aliases were restored ({shown}): "
            "fix the cause and rerun the command"
        ) from exc


def _restore_aliases(registry: RegistryClient, before: dict[str, int]) -> list[str]:
    problems = []
    try:
        current = registry.aliases()
    except Exception as exc:  # report it: the caller raises
        return [f"reading the aliases: {first_line(exc)}"]
    for alias in MANAGED_ALIASES:
        wanted = before.get(alias)
        if current.get(alias) == wanted:
            continue
        try:
            if wanted is None:
                registry.delete_alias(alias)
            else:
                registry.set_alias(alias, wanted)
        except Exception as exc:  # keep restoring the others
            problems.append(f"{alias}: {first_line(exc)}")
    return problems


def make_champion(registry: RegistryClient, version: int) -> int | None:
    """champion -> previous, ``version`` -> champion (and no longer challenger); the old champion."""
    aliases = registry.aliases()
    old = aliases.get(CHAMPION)
    if old is not None and old != version:
        registry.set_alias(PREVIOUS, old)
    registry.set_alias(CHAMPION, version)
    if aliases.get(CHALLENGER) == version:
        registry.delete_alias(CHALLENGER)
    if aliases.get(PREVIOUS) == version:
        registry.delete_alias(PREVIOUS)  # it cannot be its own fallback
    return old if old != version else None


def promote(settings: Settings, workspace: Workspace, version: int, reason: str) -> dict[str, Any]:
    """Make ``version`` the champion regardless of the gate; who, when and why go into its tags."""
    if not reason.strip():
        raise RegistryError(
            "give a --reason: a manual promotion is recorded with who, when and why"
        )
    with connect(settings, workspace) as registry:
        registry.version(version)  # fails clearly when it does not exist
        if registry.aliases().get(CHAMPION) == version:
            raise RegistryError(f"version {version} is already the champion of {registry.name}")
        with alias_transaction(registry, f"promotion of version {version}"):
            old = make_champion(registry, version)
            registry.set_tags(
                version,
                {
                    "override_by": user(),
                    "override_at": now(),
                    "override_reason": reason.strip(),
                    "override_replaced": f"v{old}" if old else "none",
                    "validation_status": "overridden",  # last: set only when the rest is
                },
            )
    log.info("version %d promoted by override (was %s): %s", version, old or "none", reason)
    return {"model_name": settings.registry.model_name, "champion": version, "previous": old}


def rollback(
    settings: Settings, workspace: Workspace = Workspace(), reason: str = ""
) -> dict[str, Any]:
    """champion <- previous; the demoted version is tagged, and ``previous`` is cleared."""
    with connect(settings, workspace) as registry:
        aliases = registry.aliases()
        restored = aliases.get(PREVIOUS)
        if restored is None:
            raise RegistryError(
                f"{registry.name} has no 'previous' version to roll back to: promote one "
                "deliberately with `pneumo registry promote --version N --reason ...`"
            )
        demoted = aliases.get(CHAMPION)
        with alias_transaction(registry, "rollback"):
            registry.set_alias(CHAMPION, restored)
            registry.delete_alias(PREVIOUS)
            if demoted is not None:
                registry.set_tags(
                    demoted,
                    {
                        "rolled_back_at": now(),
                        "rolled_back_by": user(),
                        "rolled_back_to": f"v{restored}",
                        "rolled_back_reason": reason.strip() or "not given",
                        "rolled_back": "true",  # last: set only when the rest is
                    },
                )
            registry.set_tags(restored, {"restored_at": now(), "restored_by": user()})
    log.info("rolled back %s: champion v%s -> v%s", settings.registry.model_name, demoted, restored)
    return {"model_name": settings.registry.model_name, "champion": restored, "demoted": demoted}
