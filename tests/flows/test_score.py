"""Batch scoring on Dask: real images in chunks, the same numbers as `pneumo predict`, resumable."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.score import chunk_result, model_key, plan_chunks, score_folder
from pneumo.config import ModelSettings, ScoreSettings
from pneumo.errors import ConfigError
from pneumo.inference.predictor import Predictor, collect_images, predict_paths

PER_CLASS = 300  # 600 images in chunks of 100 on 2 Dask workers


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An untrained 64 px ResNet and a fixed threshold: cheap, deterministic, real code paths."""
    import torch

    from pneumo.models import build_model, save_model

    root = tmp_path_factory.mktemp("scorer")
    torch.manual_seed(0)
    model = build_model("resnet", 64)
    save_model(model, root / "model.pt", {"arch": "resnet", "image_size": 64, "options": {}})
    (root / "decision.json").write_text(
        json.dumps({"threshold": 0.5, "rule": "fixed", "tta": False})
    )
    return root / "model.pt", root / "decision.json"


def _folder(real_root: Path, dest: Path, per_class: int) -> Path:
    """A folder of links to the first real radiographs of each class."""
    for label in ("NORMAL", "PNEUMONIA"):
        (dest / label).mkdir(parents=True)
        for image in sorted((real_root / "train" / label).iterdir())[:per_class]:
            (dest / label / image.name).symlink_to(image)
    return dest


# bf16 is not the CPU default of a Predictor (fp32): scores that match it prove that the chunks
# ran with the workspace's model.* inference settings (emulated where the CPU lacks bf16); torch's
# runtime, as model.runtime auto would pick OpenVINO, which computes bf16 its own way.
INFERENCE = {"device": "cpu", "precision": "bf16", "runtime": "torch"}


def _workspace(tmp_path: Path, **score: object) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    sections = {
        "score": {"chunk_size": 100, "n_workers": 2, "threads_per_worker": 1, **score},
        "model": INFERENCE,
    }
    (ws / "params.yaml").write_text(json.dumps(sections))  # JSON is YAML
    return ws


@pytest.mark.slow
def test_score_folder_on_dask_matches_predict_and_resumes_one_chunk(
    prefect_harness: None, real_root: Path, tmp_path: Path, scorer: tuple[Path, Path]
) -> None:
    model, decision = scorer
    folder = _folder(real_root, tmp_path / "images", PER_CLASS)
    ws = _workspace(tmp_path)
    files = collect_images([folder])

    first = score_folder(str(folder), None, str(ws), "params.yaml", str(model), str(decision))

    assert first["images"] == len(files) == 2 * PER_CLASS
    assert (first["chunks"], first["scored_chunks"], first["reused_chunks"]) == (6, 6, 0)
    table = pd.read_parquet(ws / "scores" / "scores.parquet")
    assert table["path"].tolist() == [str(f) for f in files]  # folder order, every file once
    assert table["error"].isna().all()
    called = np.where(table["probability"] >= 0.5, "PNEUMONIA", "NORMAL")  # the fixed threshold
    assert table["predicted_label"].tolist() == called.tolist()
    assert set(table["true_label"]) == {"NORMAL", "PNEUMONIA"}

    # The same numbers as `pneumo predict` (predict_paths) with the same inference settings on a
    # sample, run here in-process; not those of the fp32 default.
    sample = files[::37]
    accel = ModelSettings(**INFERENCE).accelerator()
    expected = predict_paths(sample, Predictor.from_files(model, decision, accel), workers=1)
    scored = table.set_index("path").loc[[str(f) for f in sample]]
    np.testing.assert_allclose(scored["probability"], expected["probability"], atol=1e-5)
    fp32 = predict_paths(sample, Predictor.from_files(model, decision), workers=1)
    assert np.abs(scored["probability"].to_numpy() - fp32["probability"].to_numpy()).max() > 1e-5
    assert scored["predicted_label"].tolist() == expected["predicted_label"].tolist()
    assert scored["model"].tolist() == expected["model"].tolist()

    # Lose one chunk's result: the rerun scores that chunk only and leaves the others untouched.
    work = ws / "scores" / "chunks"
    chunks = plan_chunks(files, 100, model_key(model, decision))
    results = [chunk_result(work, c) for c in chunks]
    before = {r: r.stat().st_mtime_ns for r in results}
    results[3].unlink()

    second = score_folder(str(folder), "rescored.csv", str(ws), "params.yaml", str(model), str(decision))

    assert (second["scored_chunks"], second["reused_chunks"]) == (1, 5)
    assert results[3].is_file()
    assert all(r.stat().st_mtime_ns == before[r] for i, r in enumerate(results) if i != 3)
    again = pd.read_csv(ws / "rescored.csv")
    pd.testing.assert_series_equal(again["path"], table["path"])
    np.testing.assert_allclose(again["probability"], table["probability"], atol=1e-6)


def test_chunk_predictor_runs_with_the_model_inference_settings(scorer: tuple[Path, Path]) -> None:
    from flows.score import _predictor
    from pneumo.accel import Accelerator

    model, decision = scorer
    for precision in ("fp32", "bf16"):
        inference = ModelSettings(device="cpu", precision=precision)
        predictor = _predictor(str(model), str(decision), "key", inference)
        assert predictor.accel == Accelerator("cpu", precision)


def test_chunk_keys_follow_files_and_model(tmp_path: Path, scorer: tuple[Path, Path]) -> None:
    model, decision = scorer
    files = []
    for i in range(5):
        path = tmp_path / f"img{i}.png"
        path.write_bytes(b"x" * (i + 1))
        files.append(path)
    key = model_key(model, decision)
    chunks = plan_chunks(files, 2, key)
    assert [len(c.paths) for c in chunks] == [2, 2, 1]
    assert plan_chunks(files, 2, key) == chunks  # stable: a rerun finds its results

    os.utime(files[2], ns=(1, 1))  # a changed file invalidates its chunk only
    changed = plan_chunks(files, 2, key)
    assert [a.key == b.key for a, b in zip(chunks, changed, strict=True)] == [True, False, True]

    other_decision = tmp_path / "decision.json"
    other_decision.write_text(json.dumps({"threshold": 0.7, "rule": "fixed", "tta": False}))
    rekeyed = plan_chunks(files, 2, model_key(model, other_decision))
    assert not {c.key for c in rekeyed} & {c.key for c in chunks}  # new threshold: rescore all


def test_score_settings_reject_unknown_output_format(tmp_path: Path) -> None:
    from pneumo.config import load_settings

    assert ScoreSettings().output.suffix == ".parquet"
    params = tmp_path / "params.yaml"
    params.write_text("score:\n  output: scores.xlsx\n")
    with pytest.raises(ConfigError, match=r"score\.output.*\.parquet or \.csv"):
        load_settings(params)


def test_cli_score_command_reaches_the_flow(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import flows.score
    from pneumo.cli import main

    calls = []

    def fake_score(*args: object) -> dict:
        calls.append(args)
        return {"images": 3, "output": "x.csv", "predicted": {"NORMAL": 3}, "unreadable": 0,
                "chunks": 1, "reused_chunks": 0}  # fmt: skip

    monkeypatch.setattr(flows.score, "score_folder", fake_score)
    (tmp_path / "params.yaml").write_text("")
    assert (
        main(["--params", str(tmp_path / "params.yaml"), "score", str(tmp_path), "-o", "x.csv"])
        == 0
    )
    folder, output, workspace, params, model, decision = calls[0]
    assert (folder, workspace, params) == (str(tmp_path), str(tmp_path), "params.yaml")
    assert output.endswith("x.csv") and model is None and decision is None
