"""Evaluate and predict on a small model trained on real radiographs (64 px, 2 epochs)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumo.config import Settings, load_settings
from pneumo.data.ingest import ingest
from pneumo.data.preprocess import preprocess
from pneumo.data.split import split
from pneumo.evaluation.evaluate import evaluate
from pneumo.inference.predictor import Predictor, write_predictions
from pneumo.workspace import Workspace, sha256_file

REPO = Path(__file__).resolve().parents[2]


def small_settings(tmp: Path, data_root: Path) -> Settings:
    return load_settings(
        REPO / "params.yaml",
        {
            "data.root": str(data_root),
            "preprocess.image_size": 64,
            "train.epochs": 5,
            "train.threads": 2,
            # Five epochs of ~300 images: augmentation only adds seed-to-seed noise here.
            "train.augment.enabled": False,
            "evaluate.bootstrap_samples": 50,
            "validate.min_rows": 10,
            "tracking.uri": f"sqlite:///{tmp / 'mlruns.db'}",
        },
    )


@pytest.fixture(scope="module")
def trained(
    real_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Settings, Workspace]:
    tmp = tmp_path_factory.mktemp("small")
    data = tmp / "chest_xray"
    for label, count in (("NORMAL", 200), ("PNEUMONIA", 300)):
        (data / "train" / label).mkdir(parents=True)
        for f in sorted((real_root / "train" / label).iterdir())[:count]:
            shutil.copy(f, data / "train" / label / f.name)
    settings = small_settings(tmp, data)
    ws = Workspace(tmp / "ws")
    ingest(data, ws)
    split(ws.manifest, 0.2, 0.2, 0, 0.1, ws)
    preprocess(ws.split, data, 64, ws)
    from pneumo.training.train import train

    train(settings, ws)
    evaluate(settings, ws)
    return settings, ws


def test_evaluate_writes_metrics_plots_and_decision(trained: tuple[Settings, Workspace]) -> None:
    settings, ws = trained
    report = json.loads(ws.eval_metrics.read_text())
    assert {"test", "test_bacterial", "test_viral", "val", "threshold"} <= report.keys()
    for name in (
        "accuracy",
        "sensitivity",
        "specificity",
        "f1",
        "roc_auc",
        "pr_auc",
        "brier",
        "ece",
    ):
        value = report["test"][name]
        low, high = report["test"]["ci"][name]
        assert low <= value + 1e-9 and value <= high + 1e-9, name
    assert report["test"]["roc_auc"] > 0.75  # five short epochs at 64 px: clearly learning
    decision = json.loads(ws.decision.read_text())
    assert decision["rule"] == settings.evaluate.threshold_rule and 0 < decision["threshold"] < 1
    for name in ("roc.csv", "pr.csv", "calibration.csv", "test_predictions.csv", "evaluation.png"):
        assert (ws.eval_plots / name).is_file()


def test_the_run_reads_as_mlflow_users_expect(trained: tuple[Settings, Workspace]) -> None:
    """Real training + evaluation + registration: name, kind, inputs, metrics, model <-> version."""
    import mlflow

    from pneumo import tracking
    from pneumo.registry import register_and_gate

    settings, ws = trained
    client = mlflow.MlflowClient(tracking.resolve_uri(settings.tracking.uri, ws))
    run = client.get_run(ws.run_id.read_text().strip())
    run_id = run.info.run_id
    assert re.fullmatch(r"resnet-64px-[0-9a-f]{8}", run.info.run_name)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    note = run.data.tags["mlflow.note.content"]
    assert run.data.params["data.version"] in note and "git commit" in note
    # Three dataset inputs, each with the digest of its arrays file.
    inputs = {
        next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset
        for d in run.inputs.dataset_inputs
    }
    assert inputs.keys() == {"train", "val", "test"}
    assert inputs["test"].digest == sha256_file(ws.arrays("test"))[:16]
    # Slash-prefixed metrics; intervals in one table, not as flat metrics.
    report = json.loads(ws.eval_metrics.read_text())
    assert run.data.metrics["test/roc_auc"] == pytest.approx(report["test"]["roc_auc"])
    assert "test/viral/sensitivity" in run.data.metrics and "val/threshold" in run.data.metrics
    epochs = list(range(1, settings.train.epochs + 1))
    assert [m.step for m in client.get_metric_history(run_id, "val/roc_auc")] == epochs
    assert not [k for k in run.data.metrics if "ci_" in k or "/" not in k]
    artifacts = {a.path for a in client.list_artifacts(run_id, "evaluate")}
    assert {"evaluate/evaluation.png", "evaluate/metrics_with_intervals.csv"} <= artifacts
    table = pd.read_csv(client.download_artifacts(run_id, "evaluate/metrics_with_intervals.csv"))
    accuracy = table[(table["split"] == "test") & (table["metric"] == "accuracy")].iloc[0]
    assert [accuracy["ci_low"], accuracy["ci_high"]] == pytest.approx(
        report["test"]["ci"]["accuracy"]
    )
    # Registered: the logged model and the version point at each other.
    verdict = register_and_gate(settings, ws)
    version = client.get_model_version(settings.registry.model_name, str(verdict.version))
    [logged] = client.search_logged_models([run.info.experiment_id])
    assert version.source == f"models:/{logged.model_id}" and version.run_id == run_id
    linked = json.loads(client.get_logged_model(logged.model_id).tags["mlflow.modelVersions"])
    assert {"name": settings.registry.model_name, "version": str(verdict.version)} in linked
    assert f"**Gate verdict: {verdict.outcome}**" in version.description


def test_predict_folder_matches_evaluation_and_survives_bad_files(
    trained: tuple[Settings, Workspace], tmp_path: Path
) -> None:
    settings, ws = trained
    test = pd.read_csv(ws.test_predictions)
    root = Path(settings.data.root)
    folder = tmp_path / "incoming" / "PNEUMONIA"
    folder.mkdir(parents=True)
    picked = test.head(6)
    for rel in picked["path"]:
        shutil.copy(root / rel, folder / Path(rel).name)
    (folder / "broken.jpeg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "predictions.csv"
    # As `pneumo predict` and `pneumo evaluate` build it: the same runtime and precision.
    predictor = Predictor.from_workspace(ws, settings.model.accelerator(), settings.model.runtime)
    frame = write_predictions([tmp_path / "incoming"], out, predictor, workers=1)
    assert len(frame) == 7 and out.is_file()
    bad = frame[frame["path"].str.endswith("broken.jpeg")].iloc[0]
    assert bad["error"].startswith("cannot decode image") and pd.isna(bad["probability"])
    good = frame[frame["error"].isna()].set_index(
        frame[frame["error"].isna()]["path"].map(lambda p: Path(p).name)
    )
    for rel, probability in zip(picked["path"], picked["probability"], strict=True):
        # Same decode, same model, same threshold as `pneumo evaluate`.
        assert good.loc[Path(rel).name, "probability"] == pytest.approx(probability, abs=1e-5)
    assert set(good["true_label"]) == {"PNEUMONIA"}
    assert (
        good["threshold"] == json.loads(ws.decision.read_text())["threshold"].__round__(6)
    ).all()


def test_predict_full_size_originals(
    trained: tuple[Settings, Workspace], originals_root: Path
) -> None:
    _, ws = trained
    predictor = Predictor.from_workspace(ws)
    frame = write_predictions([originals_root], ws.root / "originals.csv", predictor)
    assert len(frame) == 48 and frame["error"].isna().all()
    assert frame["probability"].between(0, 1).all()
    assert set(frame["predicted_label"]) <= {"NORMAL", "PNEUMONIA"}
    assert np.isfinite(frame["probability"].to_numpy(float)).all()


def test_compare_table_has_baselines_default_model_and_published_rows(
    trained: tuple[Settings, Workspace],
) -> None:
    import mlflow

    from pneumo import tracking
    from pneumo.training.baselines import compare

    settings, ws = trained
    quick = settings.model_copy(
        update={
            "compare": settings.compare.model_copy(
                update={"paper_archs": ["paper_cnn1"], "epochs": 1}
            )
        }
    )
    table = compare(quick, ws)
    models = list(table["model"])
    assert models[:2] == ["logistic regression on pixels", "paper CNN, 1 block"]
    assert any(m.startswith("pneumo default") for m in models)
    published = table[table["source"] == "published"]
    assert published["accuracy"].tolist()[:4] == [0.8974, 0.8526, 0.9231, 0.9167]
    measured = table[table["source"] != "published"]
    assert measured["roc_auc"].between(0, 1).all() and measured["threshold"].between(0, 1).all()
    markdown = ws.comparison.read_text()
    assert "| logistic regression on pixels |" in markdown and "92.3 %" in markdown
    assert ws.comparison.with_suffix(".csv").is_file()
    client = mlflow.MlflowClient(tracking.resolve_uri(settings.tracking.uri, ws))
    runs = client.search_runs(
        [tracking.ensure_experiment(settings.tracking, ws)],
        filter_string="tags.pipeline_step = 'compare'",
    )
    assert runs and runs[0].info.status == "FINISHED" and runs[0].info.run_name == "compare"
    assert any(a.path == "comparison.md" for a in client.list_artifacts(runs[0].info.run_id))
