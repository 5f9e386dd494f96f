"""Recipes side by side: queue them as DVC experiments, then report them from `dvc exp show`.

``ablation.yaml`` names each recipe as a set of params.yaml overrides. ``queue`` runs
``dvc exp run --queue -n NAME -S key=value ...`` for each (with absolute ``data.root`` and
``tracking.uri``: queued experiments run in temporary copies of the workspace, where relative
paths would point elsewhere); ``start`` runs them one after the other, each on the code it was
queued with, each tracked in MLflow like any training. ``report`` writes ``reports/ablation.md``
(and .csv) from the experiments' metrics: the counterfactual and stress batteries, validation,
the carved test with its intervals, training minutes. Recipes are ranked by the counterfactual
battery first, then the stress battery (:data:`RANKING`); the carved test only reports.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from pneumo.errors import ConfigError, PneumoError
from pneumo.workspace import atomic_path

log = logging.getLogger(__name__)

RECIPES_FILE = "ablation.yaml"
TEST_COLUMNS = ("accuracy", "roc_auc", "sensitivity", "specificity")
STRESS_COLUMNS = ("mean_roc_auc", "worst_roc_auc", "mean_specificity", "worst_specificity")
# metrics/stress.json's counterfactual summary (pneumo/evaluation/stress.py): the classes trade looks.
COUNTERFACTUAL_COLUMNS = ("specificity", "sensitivity", "roc_auc", "balanced_accuracy",
                          "cue_effect", "abs_cue_effect")  # fmt: skip
# How recipes are ranked (column, best first is ascending?): first how far the network moves
# with the acquisition look alone (|cue effect| at severity 2: 0 for a network blind to it; on
# a nearly separable validation split the calls at the threshold rarely change, the logits do),
# then its calls when the classes trade looks, then the shifts that hit both classes alike.
RANKING: tuple[tuple[str, bool], ...] = (
    ("cf_abs_cue_effect", True),
    ("cf_balanced_accuracy", False),
    ("stress_mean_roc_auc", False),
)


def load_recipes(path: Path) -> dict[str, dict[str, Any]]:
    """name -> {overrides, why}; every key must exist in params.yaml (checked by the settings)."""
    if not path.is_file():
        raise ConfigError(f"{path} not found: list the recipes to compare there")
    recipes = yaml.safe_load(path.read_text()).get("recipes") or {}
    if not isinstance(recipes, dict) or not recipes:
        raise ConfigError(f"{path} holds no `recipes:` mapping")
    return {name: {"overrides": r.get("overrides") or {}, "why": r.get("why", "")}
            for name, r in recipes.items()}  # fmt: skip


def _dvc(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """DVC with this environment's `pneumo` on PATH (the stages' commands).

    PYTHONPATH=. makes each stage import the pneumo package of the folder it runs in: a queued
    experiment runs in a copy of the workspace as it was when queued, and must run that copy's
    code, not the (editable) installed package, which may have changed since.
    """
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
           "PYTHONPATH": "."}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=env,
                          capture_output=True, text=True)  # fmt: skip


def start(root: Path) -> str:
    """Run the queued experiments one after the other (`dvc queue start -j 1`), each on the
    code it was queued with; returns DVC's message. Progress: `dvc queue status`."""
    done = _dvc(root, "queue", "start", "-j", "1")
    if done.returncode != 0:
        raise PneumoError(f"dvc could not start the queue: {done.stderr.strip()[-500:]}")
    return done.stdout.strip()


def queue(
    root: Path, settings: Any, names: list[str] | None = None, until: str | None = None
) -> list[str]:
    """Queue the recipes (all, or ``names``) as DVC experiments; returns the queued names.
    ``until`` names the last stage to run (e.g. ``stress``: what the report reads)."""
    from pneumo.config import load_settings
    from pneumo.tracking import resolve_uri
    from pneumo.workspace import Workspace

    recipes = load_recipes(root / RECIPES_FILE)
    unknown = sorted(set(names or []) - set(recipes))
    if unknown:
        raise ConfigError(f"unknown recipe(s) {unknown}: {RECIPES_FILE} has {sorted(recipes)}")
    data_root = Workspace(root).resolve(settings.data.root).resolve()
    shared = {
        "data.root": str(data_root),
        "tracking.uri": resolve_uri(settings.tracking.uri, Workspace(root)),
    }
    queued = []
    for name, recipe in recipes.items():
        if names and name not in names:
            continue
        overrides = {**shared, **recipe["overrides"]}
        load_settings(root / "params.yaml", overrides)  # a typo fails here, not in the queue
        assignments = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                       for k, v in overrides.items()]  # fmt: skip
        args = ["exp", "run", "--queue", "-n", name, *[a for kv in assignments for a in ("-S", kv)],
                *([until] if until else [])]  # fmt: skip
        done = _dvc(root, *args)
        if done.returncode != 0:
            raise PneumoError(f"dvc could not queue {name}: {done.stderr.strip()[-500:]}")
        queued.append(name)
        log.info("queued %s: %s", name, recipe["why"])
    return queued


def _experiments(shown: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every experiment in `dvc exp show --json`, flattened to name, params and metrics."""
    found = []

    def visit(entry: dict[str, Any]) -> None:
        data = entry.get("data") or {}
        name = entry.get("name") or data.get("name")
        metrics = {
            path: (m or {}).get("data", {}) for path, m in (data.get("metrics") or {}).items()
        }
        params = ((data.get("params") or {}).get("params.yaml") or {}).get("data", {})
        # A running experiment shows the workspace's files (rev "workspace"): not its own yet.
        if name and metrics and data.get("rev") not in (None, "workspace"):
            found.append({"name": name, "rev": data["rev"], "params": params, "metrics": metrics})
        for child in entry.get("experiments") or []:
            for revision in child.get("revs", [child]):
                visit(revision)

    for entry in shown:
        visit(entry)
    return found


def _committed(root: Path, rev: str, path: str) -> str | None:
    """A file as the experiment's commit holds it (None when it has none)."""
    shown = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=root, capture_output=True,
                           text=True, check=False)  # fmt: skip
    return shown.stdout if shown.returncode == 0 else None


def _detail(root: Path, experiment: dict[str, Any], path: str) -> dict[str, Any]:
    """A stage's JSON as the experiment committed it (lists, the intervals, included), else as
    `dvc exp show` reported it among the metrics (experiments of older releases)."""
    return _committed_json(root, experiment["rev"], path) or experiment["metrics"].get(path, {})


def _committed_json(root: Path, rev: str, path: str) -> dict[str, Any]:
    text = _committed(root, rev, path)
    return json.loads(text) if text is not None else {}


def _minutes(settings_params: dict[str, Any], root: Path, rev: str) -> float:
    """Training minutes of the MLflow run whose id the experiment's commit holds (a training the
    run cache restored keeps the id, and the minutes, of the run that trained it). Only the
    experiment's tracking settings are read: its other params may be of an older release."""
    from pneumo.config import TrackingSettings
    from pneumo.tracking import client_for
    from pneumo.workspace import Workspace

    try:
        tracking = TrackingSettings.model_validate(settings_params.get("tracking") or {})
        run_id = (_committed(root, rev, "models/run_id.txt") or "").strip()
        run = client_for(tracking, Workspace(root)).get_run(run_id)
        return float(run.data.metrics["train/minutes"])
    except Exception as exc:  # noqa: BLE001 - a missing figure is shown as such, not fatal
        log.warning("no training minutes for the experiment at %s: %s", rev[:7], exc)
        return math.nan


def _cached_output(root: Path, rev: str, path: str) -> Path:
    """An output of an experiment in the DVC cache, by the md5 its commit's dvc.lock records."""
    lock = yaml.safe_load(_committed(root, rev, "dvc.lock") or "{}") or {}
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if out.get("path") == path and out.get("md5"):
                digest = out["md5"]
                cached = root / ".dvc" / "cache" / "files" / "md5" / digest[:2] / digest[2:]
                if cached.is_file():
                    return cached
    raise PneumoError(f"{path} of the experiment at {rev[:7]} is not in this DVC cache")


def rescore_counterfactual(root: Path, rev: str, params: dict[str, Any]) -> dict[str, float]:
    """The counterfactual battery of the current code on an experiment's trained model, taken
    from the DVC cache (no retraining): what keeps recipes comparable when the battery changes
    after some of them ran. Validation images come from the workspace's split."""
    import tempfile

    from pneumo.config import load_settings
    from pneumo.data.preprocess import decode_radiograph, load_arrays
    from pneumo.evaluation.shifts import working_copies
    from pneumo.evaluation.stress import counterfactual_report
    from pneumo.inference.predictor import Predictor
    from pneumo.workspace import Workspace

    settings = load_settings(root / "params.yaml")
    with tempfile.TemporaryDirectory(prefix="pneumo-rescore-") as tmp:
        decision = Path(tmp) / "decision.json"
        decision.write_text(_committed(root, rev, "models/decision.json") or "")
        predictor = Predictor.from_files(_cached_output(root, rev, "models/model.pt"), decision,
                                         settings.model.accelerator(), settings.model.runtime)  # fmt: skip
    val = load_arrays(Workspace(root).arrays("val"))
    data_root = Workspace(root).resolve(
        (params.get("data") or {}).get("root") or settings.data.root
    )
    size = predictor.image_size
    working = working_copies([str(data_root / p) for p in val["paths"]], size,
                             settings.preprocess.workers)  # fmt: skip
    clean = np.stack([decode_radiograph(Image.fromarray(image), size) for image in working])
    report = counterfactual_report(
        lambda images: predictor.probabilities(images, settings.model.batch_size),
        working, clean, val["labels"], predictor.threshold, size,
    )  # fmt: skip
    return report["summary"]


def report(root: Path, recipes_file: Path | None = None, rescore: bool = False) -> pd.DataFrame:
    """reports/ablation.md and .csv from the experiments of the recipes in ablation.yaml; with
    ``rescore``, the counterfactual columns from the current battery on each stored model."""
    recipes = load_recipes(recipes_file or root / RECIPES_FILE)
    done = _dvc(root, "exp", "show", "--json", "--all-commits")
    if done.returncode != 0:
        raise PneumoError(f"dvc exp show failed: {done.stderr.strip()[-500:]}")
    rows = []
    for experiment in _experiments(json.loads(done.stdout)):
        if experiment["name"] not in recipes:
            continue
        # The stages' detailed JSON (plain outputs; `dvc metrics show` has only the summaries),
        # as the experiment committed it; older experiments had it among their metrics.
        test = _detail(root, experiment, "metrics/metrics.json").get("test", {})
        stress = _detail(root, experiment, "metrics/stress.json").get("summary", {})
        row: dict[str, Any] = {
            "recipe": experiment["name"],
            "why": recipes[experiment["name"]]["why"],
        }
        for name in TEST_COLUMNS:
            row[f"test_{name}"] = test.get(name, math.nan)
            low, high = (test.get("ci") or {}).get(name, (math.nan, math.nan))
            row[f"test_{name}_ci"] = f"{low:.3f}-{high:.3f}" if math.isfinite(low) else ""
        row["val_roc_auc"] = _detail(root, experiment, "metrics/train.json").get(
            "val_roc_auc", math.nan
        )
        for name in STRESS_COLUMNS:
            row[f"stress_{name}"] = stress.get(name, math.nan)
        row["worst_shift"] = stress.get("worst_specificity_shift", "")
        counterfactual = (_detail(root, experiment, "metrics/stress.json")
                          .get("counterfactual", {}).get("summary", {}))  # fmt: skip
        if rescore:
            log.info("re-scoring the counterfactual battery of %s", experiment["name"])
            counterfactual = rescore_counterfactual(root, experiment["rev"], experiment["params"])
        for name in COUNTERFACTUAL_COLUMNS:
            row[f"cf_{name}"] = counterfactual.get(name, math.nan)
        row["train_minutes"] = _minutes(experiment["params"], root, experiment["rev"])
        rows.append(row)
    table = rank(pd.DataFrame(rows).drop_duplicates("recipe", keep="first"))
    _write(root, table, rescore)
    return table


def rank(table: pd.DataFrame) -> pd.DataFrame:
    """Best first by :data:`RANKING` (never by the carved test); ``rank`` 1 is the choice.
    The cue effect is compared to 0.01 logits: closer is a tie, decided by the next column."""
    keyed = table.assign(_cue=table["cf_abs_cue_effect"].round(2))
    columns = ["_cue", *[name for name, _ in RANKING[1:]]]
    ascending = [True, *[up for _, up in RANKING[1:]]]
    ranked = keyed.sort_values(columns, ascending=ascending, na_position="last").drop(columns="_cue")
    return ranked.assign(rank=range(1, len(ranked) + 1)).reset_index(drop=True)


def _write(root: Path, table: pd.DataFrame, rescored: bool = False) -> None:
    out = root / "reports" / "ablation.md"
    with atomic_path(out.with_suffix(".csv")) as tmp:
        table.to_csv(tmp, index=False)
    lines = [
        "# Recipes side by side",
        "",
        "Generated by `pneumo ablation report` from `dvc exp show`: each recipe of `ablation.yaml` "
        "ran as a DVC experiment. Ranked by the counterfactual battery first (the validation "
        "split's classes trade acquisition looks: normal radiographs get the pneumonia class's "
        "sharpness and vice versa, severity 2, at the validation threshold), then by the stress "
        "battery's mean ROC-AUC; never by the carved test (reported with patient-bootstrap 95 % "
        "intervals)."
        + (" The counterfactual columns were re-scored with the current battery on each "
           "experiment's stored model (`--rescore`)." if rescored else ""),
        "",
        "| rank | recipe | cf. spec. | cf. sens. | cf. swap AUC | cue effect (logits) | val AUC | "
        "stress mean AUC | stress worst AUC | stress mean spec. | stress worst spec. (shift) | "
        "test acc. [95 % CI] | test AUC [95 % CI] | test sens. | test spec. | train min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table.itertuples():
        lines.append(
            f"| {r.rank} | {r.recipe} | {r.cf_specificity:.3f} | {r.cf_sensitivity:.3f} | "
            f"{r.cf_roc_auc:.4f} | {r.cf_cue_effect:+.2f} | "
            f"{r.val_roc_auc:.4f} | {r.stress_mean_roc_auc:.4f} | "
            f"{r.stress_worst_roc_auc:.4f} | {r.stress_mean_specificity:.3f} | "
            f"{r.stress_worst_specificity:.3f} ({r.worst_shift}) | {r.test_accuracy:.3f} "
            f"[{r.test_accuracy_ci}] | {r.test_roc_auc:.4f} [{r.test_roc_auc_ci}] | "
            f"{r.test_sensitivity:.3f} | {r.test_specificity:.3f} | {r.train_minutes:.1f} |"
        )
    lines += ["", "What each recipe changes:", ""]
    lines += [f"- **{r.recipe}**: {r.why}" for r in table.itertuples()]
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
