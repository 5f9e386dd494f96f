"""Every benchmark in bench/ still imports against today's pneumo (bench/train.py once did not:
a function it used had moved) and has a ``main`` and a docstring for its ``--help``."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPTS = sorted(p.stem for p in BENCH.glob("*.py"))
HELPERS = {"loadgen", "servers"}  # imported by the benchmarks, not run on their own


def test_the_benchmarks_are_found() -> None:
    assert {"train", "serve", "pipeline", "int8"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_each_benchmark_imports_and_has_a_main(name: str) -> None:
    module = importlib.import_module(f"bench.{name}")
    assert module.__doc__ and module.__doc__.strip()
    if name not in HELPERS:
        assert callable(getattr(module, "main", None)), f"bench/{name}.py has no main()"
