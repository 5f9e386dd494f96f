"""The folders are the floors of the house: every import points down (or along), never up.

README's "Where to change what" draws the same order. A module may import one on its own floor or
below; an import that climbs (including one inside a function, which hides the arrow without
removing it) fails here with the arrow named.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Lowest first. A root module of pneumo/ is the ground floor; each folder is one floor.
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    (
        "core",
        (
            "pneumo",
            "pneumo.errors",
            "pneumo.workspace",
            "pneumo.locking",
            "pneumo.accel",
            "pneumo.web_assets",
            "pneumo.client",
            "pneumo.stored_model",
        ),
    ),
    ("models", ("pneumo.models",)),
    ("config", ("pneumo.config",)),
    ("data", ("pneumo.data",)),
    ("decision", ("pneumo.decision",)),
    ("inference", ("pneumo.inference",)),
    ("tracking", ("pneumo.tracking",)),
    ("evaluation", ("pneumo.evaluation",)),
    ("training", ("pneumo.training",)),
    ("registry", ("pneumo.registry",)),
    ("site", ("pneumo.site",)),
    ("monitor", ("pneumo.monitor",)),
    ("serving", ("serving",)),
    ("flows", ("flows",)),
    ("cli", ("pneumo.cli",)),
]
PACKAGES = [p for _, names in FLOORS for p in names if (REPO / p.replace(".", "/")).is_dir()]


def floor_of(module: str) -> int | None:
    """The floor a dotted module name lives on, or None outside the project."""
    for index, (_, names) in enumerate(FLOORS):
        for name in names:
            is_package = name in PACKAGES and name != "pneumo"
            if module == name or (is_package and module.startswith(name + ".")):
                return index
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Every project module the file imports, at the top or inside a function."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            # `from pneumo import training` names a module, not an attribute.
            found.update(
                f"{base}.{alias.name}"
                for alias in node.names
                if (REPO / base.replace(".", "/") / alias.name).is_dir()
                or (REPO / base.replace(".", "/") / f"{alias.name}.py").is_file()
            )
    return {m for m in found if floor_of(m) is not None}


def project_files() -> list[Path]:
    return sorted(
        p for top in ("pneumo", "serving", "flows") for p in (REPO / top).rglob("*.py")
    )


def test_every_module_has_a_floor() -> None:
    homeless = [str(p.relative_to(REPO)) for p in project_files() if floor_of(module_name(p)) is None]
    assert not homeless, f"modules on no floor (add them to FLOORS and README): {homeless}"


def test_no_import_climbs_a_floor() -> None:
    climbs = []
    for path in project_files():
        here = floor_of(module_name(path))
        assert here is not None
        for target in sorted(imported(path)):
            there = floor_of(target)
            if there is not None and there > here:
                climbs.append(
                    f"{path.relative_to(REPO)} ({FLOORS[here][0]}) -> {target} ({FLOORS[there][0]})"
                )
    assert not climbs, "imports that run back up a floor:\n" + "\n".join(climbs)


def test_the_ground_floor_is_small() -> None:
    """New code goes into a room; the ground floor keeps only what every floor needs."""
    root = sorted(p.name for p in (REPO / "pneumo").glob("*.py"))
    assert len(root) <= len(FLOORS[0][1]), root


@pytest.mark.parametrize(
    "module",
    ["pneumo.inference", "pneumo.decision", "pneumo.tracking"],
)
def test_the_names_models_logged_before_the_move_import(module: str) -> None:
    """MLflow models logged earlier copy a file that imports these names; they must still load."""
    names = {
        "pneumo.inference": "predict_proba",
        "pneumo.decision": "Decision",
        "pneumo.tracking": "resolve_uri",
    }
    imported_module = __import__(module, fromlist=["_"])
    assert hasattr(imported_module, names[module])


def test_no_module_over_400_lines_and_no_function_over_60() -> None:
    """Long modules mix rooms and long functions mix steps: split them where they change."""
    too_long = []
    for path in project_files():
        source = path.read_text(encoding="utf-8")
        if len(source.splitlines()) > 400:
            too_long.append(f"{path.relative_to(REPO)}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > 60:
                    too_long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {length}")
    assert not too_long, "\n".join(too_long)
