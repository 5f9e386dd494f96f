"""`pneumo ablation report` on real DVC experiments of a tiny pipeline (no training)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pneumo.evaluation import ablation

# A stage that writes the two metrics files a pneumo experiment has, from one param.
WRITE = """
import json, pathlib, yaml
knob = yaml.safe_load(open("params.yaml"))["knob"]
out = pathlib.Path("metrics"); out.mkdir(exist_ok=True)
test = {"accuracy": 0.9 + knob / 100, "roc_auc": 0.99, "sensitivity": 0.95, "specificity": 0.9,
        "ci": {"accuracy": [0.88 + knob / 100, 0.92 + knob / 100], "roc_auc": [0.98, 0.995]}}
(out / "metrics.json").write_text(json.dumps({"test": test}))
stress = {"summary": {"mean_roc_auc": 0.97 + knob / 1000, "worst_roc_auc": 0.9,
                      "mean_specificity": 0.85, "worst_specificity": 0.4,
                      "worst_specificity_shift": "collimation@2"}}
(out / "stress.json").write_text(json.dumps(stress))
"""


def _run(*command: str, cwd: Path) -> None:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for who in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{who}_NAME", "t")
        monkeypatch.setenv(f"GIT_{who}_EMAIL", "t@example.org")
    (tmp_path / "write.py").write_text(WRITE)
    (tmp_path / "params.yaml").write_text("knob: 0\n")
    stage = {"cmd": f"{sys.executable} write.py", "deps": ["write.py"], "params": ["knob"],
             "metrics": [{"metrics/metrics.json": {"cache": False}},
                         {"metrics/stress.json": {"cache": False}}]}  # fmt: skip
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"score": stage}}))
    recipes = {"two": {"why": "knob at two", "overrides": {"knob": 2}},
               "never-run": {"why": "queued, never run", "overrides": {"knob": 5}}}  # fmt: skip
    (tmp_path / "ablation.yaml").write_text(yaml.safe_dump({"recipes": recipes}))
    _run("git", "init", "-q", cwd=tmp_path)
    _run(sys.executable, "-m", "dvc", "init", "-q", cwd=tmp_path)
    _run(sys.executable, "-m", "dvc", "repro", "-q", cwd=tmp_path)
    _run("git", "add", "-A", cwd=tmp_path)
    _run("git", "commit", "-qm", "baseline", cwd=tmp_path)
    _run(sys.executable, "-m", "dvc", "exp", "run", "-q", "-n", "two", "-S", "knob=2", cwd=tmp_path)
    # Training minutes come from the experiment's MLflow run, which this pipeline has not.
    monkeypatch.setattr(ablation, "_minutes", lambda params, root, rev: 4.5)
    return tmp_path


def test_report_lists_run_recipes_with_their_intervals(project: Path) -> None:
    table = ablation.report(project)

    assert table["recipe"].tolist() == ["two"]  # a recipe without an experiment is left out
    row = table.iloc[0]
    assert row["test_accuracy"] == pytest.approx(0.92)
    assert row["test_accuracy_ci"] == "0.900-0.940"  # from the experiment's committed file
    assert row["stress_mean_roc_auc"] == pytest.approx(0.972)
    markdown = (project / "reports" / "ablation.md").read_text()
    assert "| two |" in markdown and "0.920 [0.900-0.940]" in markdown
    assert "0.400 (collimation@2)" in markdown and "| 4.5 |" in markdown
    csv = (project / "reports" / "ablation.csv").read_text()
    assert csv.splitlines()[0].startswith("recipe,why")


def test_training_minutes_come_from_the_store_the_settings_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report's client goes through resolve_uri: a workspace-relative SQLite path is the
    workspace's store wherever the command runs, and MLFLOW_TRACKING_URI (the team server)
    overrides it."""
    import mlflow

    for who in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{who}_NAME", "t")
        monkeypatch.setenv(f"GIT_{who}_EMAIL", "t@example.org")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (root / "models").mkdir(parents=True)
    elsewhere.mkdir()

    def run_with(store: Path, minutes: float) -> str:
        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
        run = client.create_run(client.create_experiment("pneumo"))
        client.log_metric(run.info.run_id, "train/minutes", minutes)
        return run.info.run_id

    local = run_with(root / "mlruns.db", 4.5)
    (root / "models" / "run_id.txt").write_text(local + "\n")
    _run("git", "init", "-q", cwd=root)
    _run("git", "add", "models/run_id.txt", cwd=root)
    _run("git", "commit", "-qm", "trained", cwd=root)
    params = {"tracking": {"uri": "sqlite:///mlruns.db"}}
    monkeypatch.chdir(elsewhere)  # a relative path must not mean ./mlruns.db here
    assert ablation._minutes(params, root, "HEAD") == 4.5
    # The team's server (here another store) wins over params.yaml, as everywhere else.
    team = elsewhere / "team.db"
    shared = run_with(team, 7.0)
    (root / "models" / "run_id.txt").write_text(shared + "\n")
    _run("git", "commit", "-qam", "trained on the team store", cwd=root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{team}")
    assert ablation._minutes(params, root, "HEAD") == 7.0
