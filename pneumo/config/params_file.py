"""Edit params.yaml in place, keeping its comments, for `make run DATA=...` and `pneumo params set`."""

from __future__ import annotations

from pathlib import Path

import yaml
from ruamel.yaml import YAML

from pneumo.config import load_settings
from pneumo.errors import ConfigError


def set_param(path: Path, dotted_key: str, raw_value: str) -> bool:
    """Set one key (``section.key``) to a YAML-parsed value; return True if the file changed.

    The new file is validated before it replaces the old one, so a typo never lands in params.yaml.
    """
    path = Path(path)
    yaml_rt = YAML()
    yaml_rt.preserve_quotes = True
    document = yaml_rt.load(path.read_text()) or {}
    value = yaml.safe_load(raw_value) if raw_value != "" else ""
    node = document
    *parents, leaf = dotted_key.split(".")
    for part in parents:
        if part not in node:
            node[part] = {}  # a section left to its defaults; validation below catches typos
        node = node[part]
    if leaf in node and node[leaf] == value:
        return False
    node[leaf] = value
    candidate = path.with_name(f".{path.name}.candidate")
    try:
        with candidate.open("w") as handle:
            yaml_rt.dump(document, handle)
        try:
            load_settings(candidate)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace(str(candidate), str(path))) from None
        candidate.replace(path)
    finally:
        candidate.unlink(missing_ok=True)
    return True
