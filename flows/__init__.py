"""Prefect flows: orchestration around pneumo's plain functions (retries, schedules, artifacts)."""
