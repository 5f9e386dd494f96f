"""Prefect flows: orchestration around pneumo's plain functions (retries, schedules, artifacts)."""

import pneumo  # noqa: F401  (its environment defaults must be set before Prefect is imported)
