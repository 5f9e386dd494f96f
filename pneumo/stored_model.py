"""What a packaged model holds in the BentoML model store: the one list of its file names.

`pneumo package` (pneumo/registry/bento.py) writes these files into the model store; the service and its
model card (serving/) read them back. Both import the names from here, as every step imports the
workspace's layout from pneumo/workspace.py.
"""

from __future__ import annotations

from pathlib import Path

from pneumo.workspace import sha256_file

MODEL_FILE = "model.pt"  # weights + metadata, loaded weights-only
DECISION_FILE = "decision.json"  # the decision threshold and referral band
GUARD_FILE = "guard.pt"  # the out-of-distribution guard fitted on the model's features
# What precision the network may run at, and the stress stage's evidence for it (absent: fp32).
PRECISION_FILE = "precision.json"
METRICS_FILE = "metrics.json"  # the evaluation metrics (a registry model: its headline numbers)
# What the model card shows besides metrics.json, carried only when present and when the
# workspace's evaluation is of the packaged weights.
SPLIT_FILE = "split.json"
ROC_FILE = "roc.csv"
COMPARISON_FILE = "comparison.csv"
STRESS_FILE = "stress.json"  # the stress and counterfactual batteries (validation split)
SHORTCUT_FILE = "shortcut.json"  # the data's shortcut meter (validate)
# The full evaluation report (intervals, confusion) of a registry model.
EVALUATION_FILE = "evaluation.json"
# The alias under which a Bento names its model: the service loads the model of this alias.
CHAMPION_ALIAS = "champion"
# Bento arguments for one `pneumo serve` (JSON): BentoML 1.4 loads a Bento's recorded arguments
# over `bentoml serve --arg`, so serving/service.py reads these overrides from the environment.
SERVE_ARGS_ENV = "PNEUMO_SERVE_ARGS"


def model_digest(model: Path, decision: Path, guard: Path | None = None) -> str:
    """The served model's identity: sha256 of its weights, decision and guard (when it has one).
    The model store's tags, the prediction log's rows and the monitor's reference carry it."""
    return sha256_file(model, decision, *([guard] if guard is not None and guard.is_file() else []))
