"""The libraries are used as released: no patched internals, no private attributes.

Evidently 0.7 imports a helper that pandas 3 removed, so pyproject pins the pandas release it
supports instead of pneumo writing the helper into pandas; MLflow is reached only through its
public names.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRIVATE = re.compile(
    r"(from|import)\s+(pandas\.core|mlflow(\.\w+)*\._\w+)|\b(mlflow|pd|pandas)(\.\w+)*\._[a-z]\w*"
)


def test_evidently_imports_in_a_fresh_process() -> None:
    """What the monitor flow imports, in a process where nothing of pneumo ran first."""
    code = "import evidently; from evidently import DataDefinition, Dataset, Report; " \
        "from evidently.metrics import ValueDrift"  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stderr[-2000:]


def test_no_project_file_reaches_into_library_internals() -> None:
    found = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for top in ("pneumo", "serving", "flows")
        for path in sorted((REPO / top).rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if PRIVATE.search(line.split("#")[0])
    ]
    assert not found, "\n".join(found)
