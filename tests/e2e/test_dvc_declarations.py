"""dvc.yaml is honest: each stage declares exactly the params.yaml keys it reads and the pneumo
modules it imports, so `dvc repro` reruns what a change can affect, and nothing else.

The slow test runs every stage's command on a small real-data workspace under
``tests/e2e/stage_probe.py``, which records the keys read and the modules imported, and compares
them with dvc.yaml both ways. The exemptions are the ones dvc.yaml's header documents.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.workspaces import REPO, real_subset, set_params

# Keys no stage declares (dvc.yaml's header says why): where results are logged, how many cores.
EXEMPT = ("tracking.*", "*.threads", "*.workers")
# Settings a stage reads only under some settings: each variant runs the stage once more (in the
# probe's process, after the baseline run).
VARIANTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "evaluate": (
        ("evaluate.threshold_rule=youden",),
        ("evaluate.threshold_rule=target_sensitivity",),
        ("evaluate.threshold_rule=fixed",),
        ("evaluate.referral=conformal",),
    ),
}
PROBE_PARAMS = (
    "preprocess.image_size=64",
    "train.warmup_epochs=0",  # before epochs: each assignment is validated on its own
    "train.epochs=1",
    "evaluate.bootstrap_samples=20",
    "explain.n_per_group=1",
)


@cache
def dvc_stages() -> dict[str, dict[str, Any]]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@cache
def params_tree() -> dict[str, Any]:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def leaves(key: str) -> list[str]:
    """The leaf keys under a declared key of params.yaml (itself, if it is a leaf)."""
    node: Any = params_tree()
    for part in key.split("."):
        node = node[part]
    if not isinstance(node, dict):
        return [key]
    return [leaf for name in node for leaf in leaves(f"{key}.{name}")]


def exempt(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in EXEMPT)


def module_deps(stage: str) -> list[str]:
    return [d for d in dvc_stages()[stage]["deps"] if d.startswith("pneumo/")]


def covers(dep: str, module: str) -> bool:
    return module == dep or module.startswith(dep.rstrip("/") + "/")


# ------------------------------------------------------------------ static checks (fast)


def test_every_declared_key_and_module_exists_and_no_exempt_key_is_declared() -> None:
    for name, stage in dvc_stages().items():
        for key in stage.get("params", []):
            assert leaves(key), f"{name}: params.yaml has no '{key}'"  # KeyError if missing
            assert not any(exempt(leaf) for leaf in leaves(key)), (
                f"{name} declares '{key}', an execution or logging key that must rerun nothing"
            )
        for dep in module_deps(name):
            assert (REPO / dep).exists(), f"{name}: dvc.yaml lists {dep}, which does not exist"


def test_no_stage_depends_on_tracking_settings() -> None:
    """Renaming the MLflow experiment (or store) reruns no stage."""
    for name, stage in dvc_stages().items():
        assert not [k for k in stage.get("params", []) if k.split(".")[0] == "tracking"], name


# ------------------------------------------------------------------ recorded runs (slow)


def _probe(ws: Path, stage: str, record: Path, variants: list[Path]) -> dict[str, Any]:
    """Run the stage under the recorder with params.yaml as it is, then once per variant file
    (in the same process: the union of what it read under each)."""
    command = shlex.split(dvc_stages()[stage]["cmd"])
    probe = [sys.executable, "-m", "tests.e2e.stage_probe", str(record), *map(str, variants)]
    run = subprocess.run(
        [*probe, "--", *command], cwd=ws, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert run.returncode == 0, f"`{' '.join(command)}` failed:\n{run.stderr[-3000:]}"
    return json.loads(record.read_text())


@pytest.fixture(scope="module")
def recorded(real_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Per stage, the union over its runs of the keys read and the modules imported."""
    tmp = tmp_path_factory.mktemp("declarations")
    data = real_subset(real_root, tmp / "chest_xray", {"NORMAL": 110, "PNEUMONIA": 150})
    ws = tmp / "ws"
    ws.mkdir()
    (ws / "params.yaml").write_text((REPO / "params.yaml").read_text())
    set_params(ws, f"data.root={data}", *PROBE_PARAMS)
    baseline = (ws / "params.yaml").read_text()
    found: dict[str, dict] = {}
    for stage in dvc_stages():  # in pipeline order: each stage reads its predecessors' outputs
        variants = []
        for number, assignments in enumerate(VARIANTS.get(stage, ())):
            set_params(ws, *assignments)
            variants.append(tmp / f"{stage}-variant-{number}.yaml")
            variants[-1].write_text((ws / "params.yaml").read_text())
            (ws / "params.yaml").write_text(baseline)
        result = _probe(ws, stage, tmp / f"{stage}.json", variants)
        (ws / "params.yaml").write_text(baseline)
        found[stage] = {"read": set(result["read"]), "modules": set(result["modules"])}
    return found


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(dvc_stages()))
def test_stage_declares_exactly_the_keys_it_reads(stage: str, recorded: dict) -> None:
    read = {k for k in recorded[stage]["read"] if not exempt(k)}
    declared = dvc_stages()[stage].get("params", [])
    undeclared = sorted(k for k in read if not any(k in leaves(d) for d in declared))
    unread = sorted(d for d in declared if not set(leaves(d)) <= read)
    expected = "\n".join(f"      - {k}" for k in sorted(read))
    assert not undeclared and not unread, (
        f"dvc.yaml stage '{stage}': reads undeclared keys {undeclared}; declares keys it never "
        f"reads {unread}. The keys it reads (a sub-section may replace all of its keys):\n"
        f"    params:\n{expected}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(dvc_stages()))
def test_stage_declares_every_module_it_imports(stage: str, recorded: dict) -> None:
    imported = recorded[stage]["modules"]
    declared = module_deps(stage)
    undeclared = sorted(m for m in imported if not any(covers(d, m) for d in declared))
    unused = sorted(d for d in declared if not any(covers(d, m) for m in imported))
    expected = "\n".join(f"      - {m}" for m in sorted(imported))
    assert not undeclared and not unused, (
        f"dvc.yaml stage '{stage}': imports undeclared modules {undeclared}; lists modules it "
        f"never imports {unused}. Its pneumo modules (a folder may replace its files):\n"
        f"    deps:\n{expected}"
    )
