"""Evaluate and predict on a small model trained on real radiographs (64 px, 2 epochs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumo.config import Settings, load_settings
from pneumo.data.ingest import ingest
from pneumo.data.preprocess import preprocess
from pneumo.data.split import split
from pneumo.evaluate import evaluate
from pneumo.predict import Predictor, predict
from pneumo.workspace import Workspace

REPO = Path(__file__).resolve().parents[2]


def small_settings(tmp: Path, data_root: Path) -> Settings:
    return load_settings(
        REPO / "params.yaml",
        {
            "data.root": str(data_root),
            "preprocess.image_size": 64,
            "train.epochs": 2,
            "train.threads": 2,
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
    from pneumo.train import train

    train(settings, ws)
    evaluate(settings, ws)
    return settings, ws


def test_evaluate_writes_metrics_plots_and_decision(trained: tuple[Settings, Workspace]) -> None:
    _, ws = trained
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
    assert report["test"]["roc_auc"] > 0.6  # two short epochs at 64 px: better than chance
    decision = json.loads(ws.decision.read_text())
    assert decision["rule"] == "youden" and 0 < decision["threshold"] < 1
    for name in ("roc.csv", "pr.csv", "calibration.csv", "test_predictions.csv", "evaluation.png"):
        assert (ws.eval_plots / name).is_file()


def test_evaluation_is_logged_into_the_training_run(trained: tuple[Settings, Workspace]) -> None:
    import mlflow

    settings, ws = trained
    from pneumo import tracking

    tracking.configure(settings.tracking, ws)
    run = mlflow.get_run(ws.run_id.read_text().strip())
    assert "test_roc_auc" in run.data.metrics and "test_roc_auc_ci_low" in run.data.metrics
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "evaluate")}
    assert "evaluate/evaluation.png" in artifacts


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
    predictor = Predictor.from_workspace(ws, settings.model.accelerator())
    frame = predict([tmp_path / "incoming"], out, predictor, workers=1)
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
    frame = predict([originals_root], ws.root / "originals.csv", predictor)
    assert len(frame) == 48 and frame["error"].isna().all()
    assert frame["probability"].between(0, 1).all()
    assert set(frame["predicted_label"]) <= {"NORMAL", "PNEUMONIA"}
    assert np.isfinite(frame["probability"].to_numpy(float)).all()


def test_compare_table_has_baselines_default_model_and_published_rows(
    trained: tuple[Settings, Workspace],
) -> None:
    import mlflow

    from pneumo import tracking
    from pneumo.compare import compare

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
    tracking.configure(settings.tracking, ws)
    runs = mlflow.search_runs(
        experiment_names=[settings.tracking.experiment],
        filter_string="tags.pipeline_step = 'compare'",
        output_format="list",
    )
    assert runs and any(
        a.path == "comparison.md" for a in mlflow.MlflowClient().list_artifacts(runs[0].info.run_id)
    )
