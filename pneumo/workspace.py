"""The one place that knows where each pipeline step reads and writes inside a workspace.

Paths are relative to the workspace root (the repository by default), matching ``dvc.yaml``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# A running stage appends its progress here (one JSON line per training epoch): the retrain
# flow watches it while `dvc repro` runs `pneumo train` in a subprocess.
PROGRESS_ENV = "PNEUMO_PROGRESS"


@dataclass(frozen=True)
class Workspace:
    root: Path = Path(".")
    # Read the arrays from another workspace (e.g. `pneumo compare` trains baselines in a
    # scratch folder on the main workspace's data); None = this workspace's own data/arrays.
    shared_arrays: Path | None = None

    @property
    def manifest(self) -> Path:
        return self.root / "data" / "manifest.parquet"

    @property
    def quarantine(self) -> Path:
        return self.root / "data" / "quarantine.csv"

    @property
    def rejected_quarantine(self) -> Path:
        """Quarantine report of a failed ingest; kept apart so the last good one survives."""
        return self.root / "data" / "quarantine.rejected.csv"

    @property
    def validation(self) -> Path:
        return self.root / "reports" / "validation.json"

    def summary(self, stage: str) -> Path:
        """metrics/summary/STAGE.json: the stage's headline figures, what `dvc metrics show`
        prints (the detail stays in the stage's own JSON, a plain output)."""
        return self.root / "metrics" / "summary" / f"{stage}.json"

    def write_summary(self, stage: str, values: dict[str, float]) -> Path:
        """Write :meth:`summary` (a few flat, rounded numbers: one short line per stage)."""
        import json

        path = self.summary(stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        shown = {k: round(float(v), 4) for k, v in values.items() if v is not None}
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(shown, indent=2) + "\n")
        return path

    @property
    def shortcut_metrics(self) -> Path:
        """The shortcut meter alone (validate): how well acquisition cues separate the classes."""
        return self.root / "metrics" / "shortcut.json"

    @property
    def data_docs(self) -> Path:
        return self.root / "reports" / "data_docs"

    @property
    def split(self) -> Path:
        return self.root / "data" / "split.parquet"

    @property
    def split_metrics(self) -> Path:
        return self.root / "metrics" / "split.json"

    def resolve(self, setting: str | Path) -> Path:
        """A folder setting (``data.root``, ``data.scope_root``): relative ones are relative to
        the workspace, as dvc.yaml's paths are. The one place that says so."""
        path = Path(setting)
        return path if path.is_absolute() else self.root / path

    @property
    def arrays_dir(self) -> Path:
        return self.shared_arrays or self.root / "data" / "arrays"

    def arrays(self, split: str) -> Path:
        return self.arrays_dir / f"{split}.npz"

    @property
    def array_stats(self) -> Path:
        return self.arrays_dir / "stats.json"

    @property
    def model(self) -> Path:
        """The trained network (weights + metadata) that evaluation and serving load."""
        return self.root / "models" / "model.pt"

    @property
    def checkpoint(self) -> Path:
        """Resumable training state, rewritten every epoch; not a DVC output (it must survive)."""
        return self.root / "models" / "checkpoint.pt"

    @property
    def run_id(self) -> Path:
        """MLflow run id of the training, so evaluation logs into the same run."""
        return self.root / "models" / "run_id.txt"

    @property
    def guard(self) -> Path:
        """The input guard fitted on the model's features (pneumo/inference/guard.py), shipped with it."""
        return self.root / "models" / "guard.pt"

    @property
    def precision(self) -> Path:
        """The stress stage's evidence on reduced precision (bf16, int8) against fp32, and what
        the service may run (pneumo/evaluation/precision.py), shipped with the model."""
        return self.root / "models" / "precision.json"

    @property
    def guard_metrics(self) -> Path:
        """How much of the validation split and of each kind of foreign image the guard flags."""
        return self.root / "metrics" / "guard.json"

    @property
    def monitor_reference(self) -> Path:
        """The validation split as the monitor sees a request: input statistics, probability,
        call, referral and guard flag per image (`pneumo reference`, pneumo/monitor/)."""
        return self.root / "models" / "reference.parquet"

    @property
    def train_metrics(self) -> Path:
        return self.root / "metrics" / "train.json"

    @property
    def train_timing(self) -> Path:
        """Minutes and device of the last training: machine-dependent, so git-ignored."""
        return self.root / "metrics" / "timing" / "train.json"

    @property
    def train_history(self) -> Path:
        """Per-epoch metrics as CSV, for `dvc plots`."""
        return self.root / "reports" / "train_history.csv"

    @property
    def train_curves(self) -> Path:
        return self.root / "reports" / "train_curves.png"

    @property
    def decision(self) -> Path:
        """The decision threshold chosen on the validation split, travelling with the model."""
        return self.root / "models" / "decision.json"

    @property
    def eval_metrics(self) -> Path:
        """Test-split metrics with confidence intervals: the DVC metric of the evaluate stage."""
        return self.root / "metrics" / "metrics.json"

    @property
    def eval_plots(self) -> Path:
        """ROC, PR, confusion and calibration data (CSV) and figures (PNG) for `dvc plots`."""
        return self.root / "plots" / "evaluate"

    @property
    def test_predictions(self) -> Path:
        return self.root / "plots" / "evaluate" / "test_predictions.csv"

    def external_metrics(self, name: str) -> Path:
        """`pneumo evaluate --external FOLDER --name NAME`: metrics of an outside labelled set."""
        return self.root / "metrics" / f"external-{name}.json"

    def site_metrics(self, site: str) -> Path:
        """`pneumo calibrate --site NAME`: the site sample's out-of-fold calls, before and after."""
        return self.root / "metrics" / f"site-{site}.json"

    def external_plots(self, name: str) -> Path:
        return self.root / "plots" / f"external-{name}"

    @property
    def stress_metrics(self) -> Path:
        """The acquisition-shift stress test of the model on the validation split."""
        return self.root / "metrics" / "stress.json"

    @property
    def adaptation_report(self) -> Path:
        """Threshold rules, referral and site adaptation on simulated sites (the stress stage)."""
        return self.root / "reports" / "adaptation.md"

    @property
    def stress_plots(self) -> Path:
        return self.root / "plots" / "stress"

    @property
    def explain_dir(self) -> Path:
        return self.root / "plots" / "explain"

    @property
    def comparison(self) -> Path:
        """Baselines vs the default model vs published results (markdown; CSV beside it)."""
        return self.root / "reports" / "comparison.md"

    @property
    def gate_verdict(self) -> Path:
        """The promotion gate's last verdict (champion vs challenger), written by the register step."""
        return self.root / "reports" / "gate_verdict.json"

    @property
    def mlflow_artifacts(self) -> Path:
        """Artifact store of the default embedded MLflow backend."""
        return self.root / "mlartifacts"


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` and move it into place only on success.

    A failed or interrupted step therefore never replaces the output of an earlier good run.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; outputs should look like any file
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def sha256_file(*paths: Path) -> str:
    """sha256 of the bytes of one file (or several, concatenated): the identity of a version."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
