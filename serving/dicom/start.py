"""The model a DICOM command serves: the champion (or this workspace's model), as `pneumo serve`
would serve it, loaded from the BentoML model store into a :class:`DicomNode`."""

from __future__ import annotations

import os
from typing import Any

from pneumo.config import Settings
from pneumo.workspace import Workspace
from serving.dicom.node import DicomNode


def open_node(
    settings: Settings, workspace: Workspace, from_workspace: bool, alias_or_version: str
) -> DicomNode:
    from pneumo.registry.bento import bentoml_home, import_champion

    home = bentoml_home(settings, workspace)
    tag, _, _ = import_champion(settings, workspace, from_workspace, alias_or_version)
    os.environ["BENTOML_HOME"] = str(home)  # before bentoml reads it (first import below)
    import bentoml

    stored: Any = bentoml.models.get(tag)
    return DicomNode(settings, stored, workspace.root)
