"""Run one `pneumo` command and record which params.yaml keys it read and which pneumo modules it
imported: the evidence that dvc.yaml declares each stage honestly.

    python -m tests.e2e.stage_probe RECORD.json [VARIANT.yaml ...] -- pneumo train

Each VARIANT.yaml is copied over params.yaml in turn and the command run again in the same process
(the union is recorded): a stage that reads some keys only under some settings is probed under
each without paying the interpreter's start-up again.

Keys are recorded when the command's code reads a settings field (attribute access or a
``model_dump`` of a section), not while params.yaml is validated. Reads made by
``pneumo.tracking`` are recorded apart ("logged"): it reads settings only to log them to MLflow.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pneumo import config

TRACKING_MODULE = "pneumo.tracking"
REPO = Path(__file__).resolve().parents[2]


class Recorder:
    def __init__(self) -> None:
        self.on = False
        self.read: set[str] = set()
        self.logged: set[str] = set()
        self.paths = section_paths()

    def key(self, section: type, field: str) -> str:
        prefix = self.paths[section]
        return f"{prefix}.{field}" if prefix else field

    def record(self, keys: list[str]) -> None:
        frame = sys._getframe(2)
        by_tracking = False
        while frame is not None:
            if frame.f_globals.get("__name__") == TRACKING_MODULE:
                by_tracking = True
                break
            frame = frame.f_back
        (self.logged if by_tracking else self.read).update(keys)


def section_paths() -> dict[type, str]:
    """Each settings class and its dotted place in params.yaml (every class sits in one place)."""
    paths: dict[type, str] = {config.Settings: ""}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            kind = field.annotation
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                paths[kind] = f"{prefix}{field.alias or name}"
                walk(kind, f"{paths[kind]}.")

    walk(config.Settings, "")
    return paths


def leaf_keys(tree: dict[str, Any], prefix: str) -> list[str]:
    keys = []
    for name, value in tree.items():
        name = "validate" if name == "validate_" else name
        key = f"{prefix}.{name}" if prefix else name
        keys.extend(leaf_keys(value, key) if isinstance(value, dict) else [key])
    return keys


def install(recorder: Recorder) -> None:
    """Patch the settings classes so that reads are recorded, and switch on after loading."""
    section = config._Section
    dump, dump_json, load = section.model_dump, section.model_dump_json, config.load_settings

    def getattribute(self: BaseModel, name: str) -> Any:
        value = object.__getattribute__(self, name)
        if recorder.on and not name.startswith("_"):
            cls = type(self)
            fields = cls.__pydantic_fields__
            if name in fields and not isinstance(value, BaseModel):
                recorder.record([recorder.key(cls, fields[name].alias or name)])
        return value

    def model_dump(self: BaseModel, **kwargs: Any) -> dict[str, Any]:
        tree = dump(self, **kwargs)
        if recorder.on:
            recorder.record(leaf_keys(tree, recorder.paths[type(self)]))
        return tree

    def model_dump_json(self: BaseModel, **kwargs: Any) -> str:
        text = dump_json(self, **kwargs)
        if recorder.on:
            recorder.record(leaf_keys(json.loads(text), recorder.paths[type(self)]))
        return text

    def load_settings(*args: Any, **kwargs: Any) -> config.Settings:
        recorder.on = False  # validation reads every key: that is not the command's doing
        try:
            return load(*args, **kwargs)
        finally:
            recorder.on = True

    section.__getattribute__ = getattribute  # type: ignore[method-assign]
    section.model_dump = model_dump  # type: ignore[method-assign]
    section.model_dump_json = model_dump_json  # type: ignore[method-assign]
    config.load_settings = load_settings


def imported_modules() -> list[str]:
    """Files of the pneumo package this process imported, relative to the repository."""
    root = Path(config.__file__).resolve().parents[1]  # pneumo/: config is a package
    files = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and Path(path).resolve().is_relative_to(root):
            files.add(str(Path(path).resolve().relative_to(root.parent)))
    return sorted(files)


def main(argv: list[str]) -> int:
    split = argv.index("--")
    record_path, variants, command = argv[0], argv[1:split], argv[split + 1 :]
    assert command[0] == "pneumo", "usage: RECORD.json [VARIANT.yaml ...] -- pneumo ARGS..."
    recorder = Recorder()
    install(recorder)
    from pneumo.cli import main as pneumo_main

    code = pneumo_main(command[1:])
    for variant in variants:
        if code:
            break
        Path("params.yaml").write_text(Path(variant).read_text())
        code = pneumo_main(command[1:])
    result = {
        "returncode": code,
        "read": sorted(recorder.read),
        "logged": sorted(recorder.logged),
        "modules": imported_modules(),
    }
    Path(record_path).write_text(json.dumps(result, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
