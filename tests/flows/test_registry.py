"""The model registry on a real MLflow (temporary SQLite store): gate, aliases, overrides, rollback.

Models are cheap: a tiny CNN trained for a second on synthetic 32 px arrays in which pneumonia is
a bright central patch. "good" separates the classes, "inverted" is good with its output negated
(worse than chance), "good2" is good nudged (another run, about the same metrics). Each test uses
its own registered model name, so the three logged runs are shared and the tests stay independent.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pneumo import registry, tracking
from pneumo.cli import main
from pneumo.config import Settings, load_settings
from pneumo.data.preprocess import save_arrays
from pneumo.decision import Decision
from pneumo.errors import ConfigError, PipelineOrderError
from pneumo.evaluation.evaluate import score_split
from pneumo.inference import predict_proba
from pneumo.models import build_model, save_model
from pneumo.registry import client as registry_client
from pneumo.workspace import Workspace, sha256_file
from tests.synthetic import (
    OPTIONS,
    SIZE,
    synthetic_split,
    train_tiny_model,
    write_counterfactual,
)

DECISION = {"threshold": 0.5, "rule": "fixed", "val_sensitivity": 1.0, "val_specificity": 1.0}


@dataclass
class Candidate:
    model_path: Path
    run_id: str
    report: dict[str, Any]  # shaped like evaluate's metrics.json
    counterfactual: dict[str, Any]  # stress.json's counterfactual battery, run on the test images


@dataclass
class Lab:
    root: Path
    params: Path
    arrays_dir: Path
    test_images: np.ndarray
    test_labels: np.ndarray
    candidates: dict[str, Candidate]

    def settings(self, model_name: str, **overrides: Any) -> Settings:
        values = {"registry.model_name": model_name, **overrides}
        return load_settings(self.params, values)

    def workspace(self, where: Path, name: str, **metric_overrides: float) -> Workspace:
        """A workspace whose model, run id, decision and metrics are those of one candidate."""
        workspace = Workspace(where, shared_arrays=self.arrays_dir)
        candidate = self.candidates[name]
        workspace.model.parent.mkdir(parents=True, exist_ok=True)
        workspace.eval_metrics.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(candidate.model_path, workspace.model)
        workspace.run_id.write_text(candidate.run_id + "\n")
        workspace.decision.write_text(json.dumps({**DECISION, "tta": False}))
        report = json.loads(json.dumps(candidate.report))
        report["test"].update(metric_overrides)
        workspace.eval_metrics.write_text(json.dumps(report))
        workspace.stress_metrics.write_text(json.dumps({"counterfactual": candidate.counterfactual}))
        return workspace


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    root = tmp_path_factory.mktemp("registry")
    params = root / "params.yaml"
    params.write_text(
        f"tracking:\n  uri: sqlite:///{root / 'mlruns.db'}\n  experiment: registry-tests\n"
        "model:\n  threads: 1\n  batch_size: 64\n  precision: fp32\n"
        "evaluate:\n  bootstrap_samples: 50\n"
    )
    arrays_dir = root / "arrays"
    train_images, train_frame = synthetic_split(64, seed=1)
    test_images, test_frame = synthetic_split(120, seed=2)
    save_arrays(arrays_dir / "test.npz", test_images, test_frame)
    test_labels = (test_frame["label"] == "PNEUMONIA").to_numpy(int)

    good = train_tiny_model(train_images, (train_frame["label"] == "PNEUMONIA").to_numpy(int))
    models: dict[str, torch.nn.Module] = {"good": good}
    for name, change in (("inverted", -1.0), ("good2", 1.001)):
        variant = build_model("paper_cnn1", SIZE, **OPTIONS)
        variant.load_state_dict(good.state_dict())
        with torch.no_grad():  # the last layer scales the logit: -1 flips every prediction
            variant.classifier[-1].weight.mul_(change)
            variant.classifier[-1].bias.mul_(change)
        models[name] = variant.eval()

    settings = load_settings(params)
    candidates = {}
    for name, model in models.items():
        path = root / name / "model.pt"
        save_model(model, path, {"arch": "paper_cnn1", "image_size": SIZE, "options": OPTIONS})
        probabilities = predict_proba(model, test_images)
        report = score_split(test_labels, probabilities, test_frame["patient_id"].to_numpy(),
                       Decision(**DECISION), settings.evaluate)  # fmt: skip
        with model_run(settings, Workspace(root), name) as run_id:
            tracking.log_pyfunc_model(path, test_images[:2], probabilities[:2])
        counterfactual = write_counterfactual(Workspace(root / name), model, test_images,
                                              test_labels, DECISION["threshold"])  # fmt: skip
        candidates[name] = Candidate(path, run_id, report, counterfactual)
    assert candidates["good"].report["test"]["roc_auc"] > 0.99
    assert candidates["good"].report["test"]["accuracy"] > 0.97
    assert candidates["inverted"].report["test"]["roc_auc"] < 0.1
    return Lab(root, params, arrays_dir, test_images, test_labels, candidates)


@contextmanager
def model_run(settings: Settings, workspace: Workspace, run_name: str) -> Iterator[str]:
    """A new run of the settings' experiment, with MLflow's fluent API bound to its store."""
    uri = tracking.resolve_uri(settings.tracking.uri, workspace)
    experiment_id = tracking.ensure_experiment(settings.tracking, workspace)
    with tracking.fluent_store(uri), mlflow.start_run(experiment_id=experiment_id,
                                                      run_name=run_name) as run:  # fmt: skip
        yield run.info.run_id


@pytest.fixture()
def name(request: pytest.FixtureRequest) -> str:
    """A registered model name of this test's own."""
    return "t-" + re.sub(r"[^\w.-]", "-", request.node.name)[:60]


def aliases(lab: Lab, model_name: str) -> dict[str, int]:
    client = MlflowClient(lab.settings(model_name).tracking.uri)
    return {a: int(v) for a, v in client.get_registered_model(model_name).aliases.items()}


def version_tags(lab: Lab, model_name: str, version: int) -> dict[str, str]:
    client = MlflowClient(lab.settings(model_name).tracking.uri)
    return client.get_model_version(model_name, str(version)).tags


# ---------------------------------------------------------------- the gate


def test_first_model_passing_the_floors_becomes_champion(
    lab: Lab, tmp_path: Path, name: str
) -> None:
    settings = lab.settings(name)
    ws = lab.workspace(tmp_path, "good")

    decision = registry.register_and_gate(settings, ws)

    assert decision.passed and decision.version == 1 and decision.champion_version is None
    assert aliases(lab, name) == {"champion": 1}  # the challenger alias moved to champion
    tags = version_tags(lab, name, 1)
    assert tags["validation_status"] == "passed"
    assert float(tags["test_roc_auc"]) > 0.99
    assert tags["data_test_sha256"] == sha256_file(ws.arrays("test"))
    for key in ("git_commit", "validated_at", "validation_reasons", "model_sha256", "threshold"):
        assert tags[key], key
    written = json.loads(ws.gate_verdict.read_text())
    assert written["status"] == "passed" and written["version"] == 1
    assert written["comparison"]["roc_auc"]["floor"] == 0.9
    assert "verdict: promoted" in registry.verdict_table(decision)


def test_registry_leaves_mlflow_and_the_environment_as_it_found_them(
    lab: Lab, tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No process-wide URIs: the tracking variable keeps meaning "the team server"."""
    from mlflow.tracking._tracking_service import utils as tracking_utils

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = lab.settings(name)
    with model_run(settings, Workspace(lab.root), "log_model off") as run_id:
        pass
    ws = lab.workspace(tmp_path, "good")
    ws.run_id.write_text(run_id)  # registration logs the model: the fluent API is needed
    before = (tracking_utils._tracking_uri, dict(os.environ))

    registry.register_and_gate(settings, ws)
    registry.status(settings, ws)
    registry.download_version(settings, ws, "champion", tmp_path / "out")

    assert (tracking_utils._tracking_uri, dict(os.environ)) == before


def test_better_challenger_replaces_champion_which_becomes_previous(
    lab: Lab, tmp_path: Path, name: str
) -> None:
    settings = lab.settings(name)
    rejected = registry.register_and_gate(settings, lab.workspace(tmp_path / "a", "inverted"))
    assert not rejected.passed  # far below the floors
    registry.promote(settings, lab.workspace(tmp_path / "a", "inverted"), 1, "test setup")

    decision = registry.register_and_gate(settings, lab.workspace(tmp_path / "b", "good"))

    assert decision.passed and decision.version == 2 and decision.champion_version == 1
    # The champion was re-scored with its own weights on this test split, not read from tags.
    assert decision.champion_metrics is not None and decision.champion_metrics["roc_auc"] < 0.1
    assert aliases(lab, name) == {"champion": 2, "previous": 1}


def test_worse_challenger_is_tagged_and_described_and_champion_kept(
    lab: Lab, tmp_path: Path, name: str
) -> None:
    settings = lab.settings(name)
    registry.register_and_gate(settings, lab.workspace(tmp_path / "a", "good"))
    # Above every floor, but more than the margin below the champion's re-scored ROC-AUC.
    ws = lab.workspace(tmp_path / "b", "good2", roc_auc=0.95, accuracy=0.93)

    decision = registry.register_and_gate(settings, ws)

    assert not decision.passed and decision.champion_after == 1
    assert any("roc_auc 0.9500 trails champion v1" in r for r in decision.reasons)
    assert any("accuracy 0.9300 trails" in r for r in decision.reasons)
    assert aliases(lab, name) == {"champion": 1, "challenger": 2}
    tags = version_tags(lab, name, 2)
    assert tags["validation_status"] == "failed"
    assert "more than the margin 0.01" in tags["validation_reasons"]
    assert float(tags["gate_champion_roc_auc"]) > 0.99
    assert "verdict: not promoted: champion kept (v1)" in registry.verdict_table(decision)
    client = MlflowClient(settings.tracking.uri)
    # Linked both ways, as mlflow.register_model links them: the version's source is the logged
    # model, and the logged model lists the version (the UI no longer says "Not registered").
    version = client.get_model_version(name, "2")
    assert version.source.startswith("models:/m-")
    logged = client.get_logged_model(version.source.removeprefix("models:/"))
    assert logged.source_run_id == lab.candidates["good2"].run_id
    assert {"name": name, "version": "2"} in json.loads(logged.tags["mlflow.modelVersions"])
    # The registered model says what it is and how the gate decides.
    about = client.get_registered_model(name).description
    assert "Pneumonia classifier" in about and "roc_auc >= 0.9" in about
    assert "by at most 0.01 on roc_auc, accuracy" in about
    # The version's description holds the gate's table, verdict, reasons and test intervals.
    text = version.description
    assert "**Gate verdict: not promoted: champion kept (v1)**" in text
    assert "| metric | floor | champion v1 | challenger v2 |" in text
    assert "| roc_auc | 0.9000 | " in text and "| 0.9500 |" in text
    assert decision.reasons[0] in text
    low, high = lab.candidates["good2"].report["test"]["ci"]["accuracy"]
    assert f"| accuracy | 0.9300 | {low:.4f} - {high:.4f} |" in text


def test_challenger_below_a_floor_is_not_promoted_even_without_champion(
    lab: Lab, tmp_path: Path, name: str
) -> None:
    settings = lab.settings(name)
    decision = registry.register_and_gate(
        settings, lab.workspace(tmp_path, "good", sensitivity=0.5)
    )

    assert not decision.passed
    assert decision.reasons == ["sensitivity 0.5000 is below the floor 0.8500"]
    assert aliases(lab, name) == {"challenger": 1}
    assert version_tags(lab, name, 1)["validation_status"] == "failed"


def test_champion_of_another_image_size_is_rescored_from_the_images(
    lab: Lab, tmp_path: Path, name: str
) -> None:
    from PIL import Image

    from pneumo.data.preprocess import decode_many, load_arrays

    registry.register_and_gate(lab.settings(name), lab.workspace(tmp_path / "a", "good"))  # 32 px
    # This workspace preprocessed the same test images at 40 px, so the 32 px champion cannot
    # read its arrays: the gate decodes the images again at the champion's size.
    data_root = tmp_path / "chest_xray"
    test = load_arrays(lab.arrays_dir / "test.npz")
    files = [data_root / str(p) for p in test["paths"]]
    for path, pixels in zip(files, test["images"], strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, format="PNG")
    frame = pd.DataFrame(
        {
            "label": np.where(test["labels"] == 1, "PNEUMONIA", "NORMAL"),
            "path": test["paths"],
            "patient_id": test["patient_ids"],
            "subtype": test["subtypes"],
        }
    )
    ws = lab.workspace(tmp_path / "b", "good2")
    ws = Workspace(ws.root, shared_arrays=tmp_path / "arrays40")
    save_arrays(ws.arrays("test"), decode_many([str(f) for f in files], 40, workers=1), frame)

    decision = registry.register_and_gate(lab.settings(name, **{"data.root": str(data_root)}), ws)
    assert decision.passed and decision.champion_metrics["roc_auc"] > 0.99

    shutil.rmtree(data_root)  # without the images the champion cannot be re-scored: keep it
    ws3 = lab.workspace(tmp_path / "c", "inverted", roc_auc=0.99, accuracy=0.99, sensitivity=0.99)
    ws3 = Workspace(ws3.root, shared_arrays=tmp_path / "arrays40")
    kept = registry.register_and_gate(lab.settings(name, **{"data.root": str(data_root)}), ws3)
    assert not kept.passed and kept.champion_after == 2
    assert "champion v2 could not be re-scored on this test split" in kept.reasons[0]
    assert aliases(lab, name) == {"champion": 2, "previous": 1, "challenger": 3}


# ---------------------------------------------------------------- idempotence and consistency


def test_registering_the_same_run_twice_creates_one_version(
    lab: Lab, tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = lab.settings(name)
    ws = lab.workspace(tmp_path, "good")
    first = registry.register_and_gate(settings, ws)
    again = registry.register_and_gate(settings, ws)

    assert (first.version, again.version) == (1, 1)
    assert first.newly_registered and not again.newly_registered and again.passed
    client = MlflowClient(settings.tracking.uri)
    assert len(client.search_model_versions(f"name = '{name}'")) == 1
    assert aliases(lab, name) == {"champion": 1}

    # A guard refitted since (same weights, same decision): the version is immutable and says so.
    ws.guard.write_bytes(b"a refitted guard")
    with caplog.at_level(logging.WARNING, logger="pneumo.registry.register"):
        assert registry.register_and_gate(settings, ws).version == 1
    assert "guard.pt differs from the guard registered" in caplog.text

    ws.decision.write_text(json.dumps({**DECISION, "threshold": 0.3, "tta": False}))
    with pytest.raises(registry.RegistryError, match="another decision.json"):
        registry.register_and_gate(settings, ws)


def test_metrics_of_another_test_split_are_refused(lab: Lab, tmp_path: Path, name: str) -> None:
    ws = lab.workspace(tmp_path, "good", n=7)
    with pytest.raises(PipelineOrderError, match="rerun `pneumo evaluate`"):
        registry.register_and_gate(lab.settings(name), ws)


def test_weights_that_differ_from_the_run_are_refused(lab: Lab, tmp_path: Path, name: str) -> None:
    ws = lab.workspace(tmp_path, "good")
    ws.run_id.write_text(lab.candidates["good2"].run_id)  # model.pt is not what this run logged
    with pytest.raises(registry.RegistryError, match="differs from the weights logged in run"):
        registry.register_and_gate(lab.settings(name), ws)


def test_a_run_without_logged_model_gets_one_at_registration(
    lab: Lab, tmp_path: Path, name: str
) -> None:
    settings = lab.settings(name)
    with model_run(settings, Workspace(lab.root), "log_model off") as run_id:
        pass  # as `pneumo train` with tracking.log_model: false
    ws = lab.workspace(tmp_path, "good")
    ws.run_id.write_text(run_id)

    decision = registry.register_and_gate(settings, ws)

    assert decision.passed and decision.run_id == run_id
    info = registry.download_version(settings, ws, decision.version, tmp_path / "out")
    assert sha256_file(tmp_path / "out" / "model.pt") == sha256_file(ws.model)
    assert info["run_id"] == run_id


# ---------------------------------------------------------------- all-or-nothing promotion


@pytest.mark.parametrize("fail_at", ["second_call", "champion_alias"])
def test_failed_promotion_restores_the_aliases(
    lab: Lab, tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch, fail_at: str
) -> None:
    settings = lab.settings(name)
    registry.register_and_gate(settings, lab.workspace(tmp_path / "a", "good"))
    original = MlflowClient.set_registered_model_alias
    calls: list[str] = []

    def flaky(self: MlflowClient, model: str, alias: str, version: str) -> None:
        calls.append(alias)
        # second_call: registration set "challenger", promotion fails at its first move;
        # champion_alias: "previous" has already moved when "champion" fails.
        if (fail_at == "second_call" and len(calls) == 2) or (
            fail_at == "champion_alias" and alias == "champion" and calls.count("champion") == 1
        ):
            raise MlflowException("injected registry failure")  # deterministic: not retried
        original(self, model, alias, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", flaky)
    with pytest.raises(registry.PromotionError, match="aliases were restored"):
        registry.register_and_gate(settings, lab.workspace(tmp_path / "b", "good2"))
    assert aliases(lab, name) == {"champion": 1, "challenger": 2}
    assert version_tags(lab, name, 2)["validation_status"] == "pending"

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", original)
    retried = registry.register_and_gate(settings, lab.workspace(tmp_path / "b", "good2"))
    assert retried.passed and retried.version == 2 and not retried.newly_registered
    assert aliases(lab, name) == {"champion": 2, "previous": 1}


# ---------------------------------------------------------------- deliberate changes


def test_promote_override_is_recorded(lab: Lab, tmp_path: Path, name: str) -> None:
    settings = lab.settings(name)
    ws = lab.workspace(tmp_path / "a", "good")
    registry.register_and_gate(settings, ws)
    registry.register_and_gate(settings, lab.workspace(tmp_path / "b", "inverted"))

    with pytest.raises(registry.RegistryError, match="--reason"):
        registry.promote(settings, ws, 2, "  ")
    with pytest.raises(registry.RegistryError, match="has no version 99"):
        registry.promote(settings, ws, 99, "typo")
    with pytest.raises(registry.RegistryError, match="already the champion"):
        registry.promote(settings, ws, 1, "again")

    result = registry.promote(settings, ws, 2, "radiologist review of the failures")

    assert result == {"model_name": name, "champion": 2, "previous": 1}
    assert aliases(lab, name) == {"champion": 2, "previous": 1}
    tags = version_tags(lab, name, 2)
    assert tags["validation_status"] == "overridden"
    assert tags["override_reason"] == "radiologist review of the failures"
    assert tags["override_by"] and tags["override_at"] and tags["override_replaced"] == "v1"


def test_rollback_restores_previous_and_tags_the_demoted_version(
    lab: Lab, tmp_path: Path, name: str
) -> None:
    settings = lab.settings(name)
    ws = lab.workspace(tmp_path / "a", "good")
    registry.register_and_gate(settings, ws)
    assert registry.register_and_gate(settings, lab.workspace(tmp_path / "b", "good2")).passed

    state = registry.status(settings, ws)
    assert {a: s["version"] for a, s in state["aliases"].items()} == {"champion": 2, "previous": 1}
    assert state["aliases"]["champion"]["validation_status"] == "passed"
    assert state["aliases"]["champion"]["metrics"]["roc_auc"] > 0.99

    result = registry.rollback(settings, ws, reason="drift alarm")

    assert result == {"model_name": name, "champion": 1, "demoted": 2}
    assert aliases(lab, name) == {"champion": 1}
    tags = version_tags(lab, name, 2)
    assert tags["rolled_back"] == "true" and tags["rolled_back_to"] == "v1"
    assert tags["rolled_back_reason"] == "drift alarm"
    with pytest.raises(registry.RegistryError, match="no 'previous' version"):
        registry.rollback(settings, ws)


# ---------------------------------------------------------------- what serving uses


def test_download_champion_and_predict_with_it(lab: Lab, tmp_path: Path, name: str) -> None:
    settings = lab.settings(name)
    ws = lab.workspace(tmp_path / "ws", "good")
    with pytest.raises(registry.RegistryError, match="no 'champion' alias yet"):
        registry.download_version(settings, ws, "champion", tmp_path / "out")
    registry.register_and_gate(settings, ws)

    info = registry.download_version(settings, ws, "champion", tmp_path / "out")

    assert {"name", "version", "run_id", "threshold", "metrics", "registered_at"} <= info.keys()
    assert (info["name"], info["version"], info["threshold"]) == (name, 1, 0.5)
    assert info["run_id"] == lab.candidates["good"].run_id and info["metrics"]["roc_auc"] > 0.99
    assert sha256_file(tmp_path / "out" / "model.pt") == sha256_file(ws.model)
    assert json.loads((tmp_path / "out" / "decision.json").read_text())["threshold"] == 0.5
    assert registry.download_version(settings, ws, 1, tmp_path / "by-number")["version"] == 1

    predictor = registry.champion_predictor(settings, ws)
    assert predictor.model_id.startswith(f"{name}/v1:") and predictor.threshold == 0.5
    expected = predict_proba(build_and_load(ws.model), lab.test_images[:8])
    np.testing.assert_allclose(predictor.probabilities(lab.test_images[:8]), expected, atol=1e-6)


def build_and_load(path: Path) -> torch.nn.Module:
    from pneumo.models import load_model

    return load_model(path)[0]


# ---------------------------------------------------------------- the command line


def test_cli_register_status_and_rollback(lab: Lab, tmp_path: Path, name: str, capsys) -> None:
    ws = Workspace(tmp_path)
    source = lab.workspace(tmp_path / "src", "good")
    for path in (source.model, source.run_id, source.decision, source.eval_metrics,
                 source.stress_metrics):
        target = ws.root / path.relative_to(source.root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    ws.arrays_dir.mkdir(parents=True)
    shutil.copyfile(lab.arrays_dir / "test.npz", ws.arrays("test"))
    params = tmp_path / "params.yaml"
    params.write_text(lab.params.read_text() + f"registry:\n  model_name: {name}\n")

    assert main(["--params", str(params), "registry", "register"]) == 0
    out = capsys.readouterr().out
    assert "verdict: promoted: v1 is the champion" in out
    assert ws.gate_verdict.is_file()
    assert main(["--params", str(params), "registry", "status"]) == 0
    assert re.search(r"v1\s+champion\s+passed", capsys.readouterr().out)
    assert main(["--params", str(params), "registry", "rollback"]) == 1
    assert "no 'previous' version" in capsys.readouterr().err


# ---------------------------------------------------------------- settings and failures


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("registry.margin", 1.0, "registry.margin': Value error, a margin of 1 or more"),
        ("registry.margin", -0.1, "registry.margin'"),
        ("registry.min_roc_auc", 1.0, "registry.min_roc_auc': Value error, a floor of 1.0"),
        ("registry.min_sensitivity", 1.2, "registry.min_sensitivity'"),
        ("registry.min_specificity", -0.5, "registry.min_specificity'"),
        ("registry.primary_metrics", [], "registry.primary_metrics'"),
        ("registry.primary_metrics", ["roc_auc", "roc_auc"], "list each metric once"),
        ("registry.primary_metrics", ["auc"], "registry.primary_metrics.0'"),
        ("registry.model_name", "", "registry.model_name'"),
        ("registry.min_auc", 0.9, "unknown key 'registry.min_auc' (did you mean 'min_roc_auc'?)"),
    ],
)
def test_invalid_registry_settings_name_the_key(
    lab: Lab, key: str, value: Any, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(lab.params, {key: value})
    assert message in str(caught.value)


def test_unreachable_server_fails_with_a_clear_error_after_bounded_retries(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setattr(registry_client, "RETRY_DELAY_S", 0.01)
    settings = lab.settings("unreachable", **{"tracking.uri": "http://127.0.0.1:9"})
    started = time.monotonic()
    with pytest.raises(registry.RegistryUnavailableError) as caught:
        registry.status(settings, Workspace(lab.root))
    assert f"failed {registry.RETRY_ATTEMPTS} times" in str(caught.value)
    assert "tracking.uri" in str(caught.value)
    assert time.monotonic() - started < 20


def test_only_transient_failures_are_retried() -> None:
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE

    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE)
        return "ok"

    assert registry.with_retries(flaky, "test call", "here", delay_s=0) == "ok"
    assert len(attempts) == 3

    def missing() -> None:
        attempts.append(1)
        raise MlflowException("no such model", error_code=RESOURCE_DOES_NOT_EXIST)

    attempts.clear()
    with pytest.raises(MlflowException):
        registry.with_retries(missing, "test call", "here", delay_s=0)
    assert len(attempts) == 1
    assert registry.is_transient(ConnectionError("refused"))
    assert registry.is_transient(OSError(5, "Input/output error"))
    assert not registry.is_transient(MlflowException("bug"))  # a bare 500 is MLflow's default
    assert not registry.is_transient(requests.HTTPError("404 Not Found"))  # an OSError too
    assert not registry.is_transient(FileNotFoundError("models/model.pt"))
