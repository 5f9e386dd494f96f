"""Benchmark: time to champion, `make run` on a fresh clone, and each stage's minutes.

Clones this repository (its last commit) into a temporary folder with ``../shared`` beside it, as
CI does, and runs `pneumo retrain` there: the command `make run` runs once the environment is
installed (installing the Python stack is not counted: `make run` installs it only when
pyproject.toml changes). Nothing is cached: no DVC cache, no MLflow store, no Bento store, an
empty ONNX export cache (``PNEUMO_CACHE_DIR``, filled as the stages run), so every
stage runs, the model is registered and promoted, and the Bento is built. Prints one JSON object:
the wall time, the minutes of every stage (what the Prefect run's summary artifact shows, from
``metrics/timing/stages.json``), the training's own figures (``metrics/timing/train.json``) and
the model's validation and carved-test headline, so a faster pipeline is seen to train the same
model. Usage: python bench/pipeline.py [--keep] > bench/results/pipeline.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TARGET_MINUTES = 10.0  # issue 26: time to champion on 2 cores with the default recipe


def fresh_clone(parent: Path) -> Path:
    """A clone of the last commit, with ``../shared`` (the data) beside it as in CI."""
    clone = parent / "pneumo"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    (parent / "shared").symlink_to((REPO.parent / "shared").resolve())
    return clone


def run_retrain(clone: Path, log: Path) -> float:
    """`pneumo retrain` in ``clone`` with this environment's commands; its wall seconds."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "TQDM_DISABLE": "1", "PNEUMO_CACHE_DIR": str(clone.parent / "cache")}  # fmt: skip
    started = time.monotonic()
    with log.open("w") as out:
        done = subprocess.run(["pneumo", "retrain"], cwd=clone, env=env, stdout=out,
                              stderr=subprocess.STDOUT, check=False)  # fmt: skip
    seconds = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"`pneumo retrain` failed ({done.returncode}); its log: {log}")
    return seconds


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keep", action="store_true", help="keep the clone (its path is printed)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    parent = Path(tempfile.mkdtemp(prefix="pneumo-bench-pipeline-"))
    try:
        clone = fresh_clone(parent)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone,
                                capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        seconds = run_retrain(clone, parent / "retrain.log")
        stages = read_json(clone / "metrics" / "timing" / "stages.json")
        training = read_json(clone / "metrics" / "timing" / "train.json")
        evaluation = read_json(clone / "metrics" / "metrics.json")
        minutes = seconds / 60
        result = {
            "benchmark": "time to champion: `pneumo retrain` (make run) on a fresh clone",
            "commit": commit,
            "cpu_cores": len(os.sched_getaffinity(0)),
            "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "wall_minutes": round(minutes, 2),
            "stage_minutes": stages.get("minutes", {}),
            "stages_total_minutes": stages.get("total_minutes"),
            "outside_stages_minutes": round(minutes - (stages.get("total_minutes") or 0), 2),
            "training": {
                k: training[k] for k in sorted(training) if not isinstance(training[k], dict)
            },
            "model": {
                split: {
                    k: evaluation.get(split, {}).get(k)
                    for k in ("accuracy", "roc_auc", "sensitivity", "specificity")
                }
                for split in ("val", "test")
                if split in evaluation
            },  # fmt: skip
            "target": {"wall_minutes": TARGET_MINUTES, "met": minutes <= TARGET_MINUTES},
        }
        if args.keep:
            result["clone"] = str(clone)
        print(json.dumps(result, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(parent, ignore_errors=True)


if __name__ == "__main__":
    main()
