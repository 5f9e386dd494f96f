"""Reduced precision on real radiographs: the stress stage's probe really runs bf16 and int8
networks (pneumo/evaluation/precision.py), and the served network is bf16 only where the
model's evidence and the CPU both allow it (pneumo/inference/runtime.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pneumo.accel import Accelerator, native_bf16
from pneumo.config import Settings
from pneumo.data.preprocess import load_arrays
from pneumo.evaluation.precision import PrecisionProbe, evidence
from pneumo.inference import speed
from pneumo.inference.predictor import Predictor
from pneumo.inference.runtime import RuntimeMismatchError
from pneumo.inference.speed import keep_faster_precision
from pneumo.workspace import Workspace
from serving.model_host import load_predictor, network_info

FP32, BF16 = Accelerator("cpu", "fp32"), Accelerator("cpu", "bf16")
NATIVE = native_bf16("cpu")


@pytest.fixture(scope="module")
def decision(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("decision") / "decision.json"
    path.write_text(json.dumps({"threshold": 0.5, "rule": "fixed"}))
    return path


@pytest.fixture(scope="module")
def val(briefly_trained: tuple[Workspace, Settings]) -> dict[str, np.ndarray]:
    return load_arrays(briefly_trained[0].arrays("val"))


def _evidence(tmp_path: Path, serve: str, gap: float = 0.02) -> Path:
    path = tmp_path / "precision.json"
    path.write_text(json.dumps({"serve": serve, "bounds": {"max_probability_gap": gap}}))
    return path


@pytest.fixture(scope="module")
def probed(
    briefly_trained: tuple[Workspace, Settings], val: dict[str, np.ndarray], decision: Path
) -> dict[str, Any]:
    """The stress stage's probe on two sets of real images (clean, mirrored as a stand-in swap)."""
    workspace, settings = briefly_trained
    predictor = Predictor.from_files(workspace.model, decision, FP32, "openvino")
    train = load_arrays(workspace.arrays("train"))["images"][:32]
    probe = PrecisionProbe(predictor, settings, train)
    images = {"clean": val["images"], "cf_swap@2": val["images"][:, ::-1].copy()}
    reference = {}
    for name, shown in images.items():
        reference[name] = predictor.probabilities(shown)
        probe(name, shown, reference[name])
    report = evidence(probe, reference, val["labels"], predictor.threshold,
                      settings.stress.reduced_precision)  # fmt: skip
    return {"predictor": predictor, "probe": probe, "train": train, "images": images,
            "reference": reference, "report": report}  # fmt: skip


def test_the_probe_scores_real_images_at_reduced_precision(
    probed: dict[str, Any], val: dict[str, np.ndarray]
) -> None:
    probe, report = probed["probe"], probed["report"]
    assert set(probe.candidates) == ({"bf16", "int8"} if NATIVE else {"int8"})
    for precision in probe.candidates:
        figures = report["candidates"][precision]
        assert figures["images"] == 2 * len(val["labels"])
        # Reduced precision computed something else than fp32, but the same model.
        assert 0 < figures["max_probability_gap"] < 0.5
    assert report["serve"] in ("bf16", "fp32")
    assert report["candidates"]["int8"]["servable"] is False


def test_the_int8_bench_measures_nncf_settings_as_the_stress_stage_does(
    probed: dict[str, Any],
    val: dict[str, np.ndarray],
    briefly_trained: tuple[Workspace, Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """bench/int8.py's ``default`` quantises as the stress stage does (the same NNCF call on the
    same images: NNCF's calibration is not bit-reproducible, so the calls are compared, not the
    networks); every setting is compared with fp32 by the stage's rules, its speed measured."""
    import nncf

    from bench import int8 as bench_int8
    from pneumo.inference import runtime

    calls: list[tuple[int, dict[str, Any]]] = []
    quantize = nncf.quantize

    def recorded(network: Any, dataset: Any, **options: Any) -> Any:
        calls.append((len(list(dataset.get_inference_data())), options))
        return quantize(network, dataset, **options)

    monkeypatch.setattr(nncf, "quantize", recorded)
    predictor, train = probed["predictor"], probed["train"]
    bounds = briefly_trained[1].stress.reduced_precision
    onnx = runtime.export_onnx(predictor.model, predictor.image_size)
    runtime.export_network(predictor.model, "openvino", "int8", calibration=train)
    stage_call = calls.pop()
    for variant in ("default", "keep_ends"):
        network = bench_int8.variant_network(variant, onnx, predictor.image_size,
                                             lambda count: train[:count], len(train))  # fmt: skip
        images, options = calls.pop()
        assert images == len(train)
        if variant == "default":
            assert (images, options) == stage_call
        else:  # the first convolution and the head stay fp32
            assert len(options["ignored_scope"].names) == 2
        got = bench_int8.measure(predictor, network, probed["images"], probed["reference"],
                                 val["labels"], bounds)  # fmt: skip
        assert set(got["within"]) == {"max_probability_gap", "max_flip_rate", "max_auc_drop",
                                      "max_cue_effect_change"}  # fmt: skip
        assert got["allowed"] == all(got["within"].values())
        assert 0 < got["max_probability_gap"] < 0.5  # another network, the same model
        assert got["cpu_ms_per_image"] > 0


def test_bf16_is_served_only_with_evidence_and_a_native_cpu(
    briefly_trained: tuple[Workspace, Settings],
    val: dict[str, np.ndarray],
    decision: Path,
    tmp_path: Path,
) -> None:
    workspace = briefly_trained[0]
    files = (workspace.model, decision, BF16, "openvino", workspace.guard)
    allowed = Predictor.from_files(*files, _evidence(tmp_path, "bf16"))
    assert ("bf16" in str(allowed.network)) == NATIVE
    reference = Predictor.from_files(workspace.model, decision, FP32, "openvino")
    gap = np.abs(allowed.probabilities(val["images"]) - reference.probabilities(val["images"]))
    assert gap.max() <= 0.02
    refused = tmp_path / "refused"
    refused.mkdir()
    for evidence_file in (None, _evidence(refused, "fp32")):
        assert "fp32" in str(Predictor.from_files(*files, evidence_file).network)
    # An fp32 setting wins over the evidence.
    fp32 = Predictor.from_files(workspace.model, decision, FP32, "openvino",
                                workspace.guard, _evidence(tmp_path, "bf16"))  # fmt: skip
    assert "fp32" in str(fp32.network)
    # What /metadata reports: the runtime and precision chosen at load.
    assert network_info(allowed)["runtime"] == "openvino"
    assert network_info(allowed)["precision"] == ("bf16" if NATIVE else "fp32")
    assert network_info(fp32) == {"runtime": "openvino", "precision": "fp32",
                                  "description": str(fp32.network.description)}  # fmt: skip
    in_torch = Predictor.from_files(workspace.model, decision, FP32, "torch")
    assert network_info(in_torch) == {"runtime": "torch", "precision": "fp32",
                                      "description": "torch fp32"}  # fmt: skip


def test_an_explicit_bf16_gets_fp32_where_the_cpu_has_no_native_bf16(
    briefly_trained: tuple[Workspace, Settings],
    decision: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """OpenVINO computes fp32 without native bf16 whatever it is asked: the network must say
    fp32 (what /metadata reports), and the log why, even for ``model.precision: bf16``."""
    import openvino as ov

    from pneumo.inference import runtime

    workspace = briefly_trained[0]
    monkeypatch.setattr(runtime, "native_bf16", lambda device: False)
    with caplog.at_level("INFO", logger=runtime.log.name):
        predictor = Predictor.from_files(workspace.model, decision, BF16, "openvino",
                                         workspace.guard, _evidence(tmp_path, "bf16"))  # fmt: skip
    assert network_info(predictor)["precision"] == "fp32"
    assert "this CPU has no native bf16" in caplog.text
    if not NATIVE:  # the fact the rule rests on, where this machine can show it
        capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        assert "BF16" not in capabilities


@pytest.mark.skipif(not NATIVE, reason="needs a CPU with native bf16")
def test_bf16_outside_the_evidence_bound_is_refused_at_load(
    briefly_trained: tuple[Workspace, Settings], decision: Path, tmp_path: Path
) -> None:
    workspace = briefly_trained[0]
    with pytest.raises(RuntimeMismatchError, match="allowed 1e-09"):
        Predictor.from_files(workspace.model, decision, BF16, "openvino",
                             workspace.guard, _evidence(tmp_path, "bf16", 1e-9))  # fmt: skip


def test_a_damaged_evidence_file_is_refused(
    briefly_trained: tuple[Workspace, Settings], decision: Path, tmp_path: Path
) -> None:
    workspace = briefly_trained[0]
    broken = tmp_path / "precision.json"
    broken.write_text('{"serve": "bf16"}')
    with pytest.raises(RuntimeMismatchError, match="not a precision verdict"):
        Predictor.from_files(workspace.model, decision, BF16, "openvino",
                             workspace.guard, broken)  # fmt: skip


@pytest.mark.skipif(not NATIVE, reason="needs a CPU with native bf16")
def test_bf16_is_kept_only_where_it_is_measured_faster(
    briefly_trained: tuple[Workspace, Settings],
    val: dict[str, np.ndarray],
    decision: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both exports are timed on this CPU and the faster one serves, within the evidence's bound
    of fp32 either way; /metadata names the one kept. Then each outcome, the times imposed."""
    workspace = briefly_trained[0]
    files = (workspace.model, decision, BF16, "openvino", workspace.guard,
             _evidence(tmp_path, "bf16"))  # fmt: skip
    reference = Predictor.from_files(workspace.model, decision, FP32, "openvino").probabilities(
        val["images"]
    )
    measured = Predictor.from_files(*files)
    timing = keep_faster_precision(measured)
    assert timing is not None and set(timing.ms_per_image) == {"bf16", "fp32"}
    assert all(ms > 0 for ms in timing.ms_per_image.values())
    assert timing.kept == min(timing.ms_per_image, key=timing.ms_per_image.__getitem__)
    assert network_info(measured)["precision"] == timing.kept
    assert np.abs(measured.probabilities(val["images"]) - reference).max() <= 0.02

    for slower, kept in (("bf16", "fp32"), ("fp32", "bf16")):
        predictor = Predictor.from_files(*files)
        monkeypatch.setattr(
            speed,
            "ms_per_image",
            lambda network, size, s=slower: (
                2.0 if str(network.description).startswith(f"openvino {s}") else 1.0
            ),
        )
        assert keep_faster_precision(predictor).kept == kept
        assert network_info(predictor)["precision"] == kept
        assert ("measured slower here" in predictor.network.description) == (kept == "fp32")
        # The guard's features are exported with the network as before the choice.
        assert predictor.network.features == (predictor.guard is not None)
        gap = np.abs(predictor.probabilities(val["images"][:16]) - reference[:16]).max()
        assert gap <= (1e-4 if kept == "fp32" else 0.02)


def test_there_is_no_speed_choice_without_an_allowed_bf16(
    briefly_trained: tuple[Workspace, Settings], decision: Path, tmp_path: Path
) -> None:
    """fp32 by setting or by evidence, and torch, are left as they are (nothing is timed)."""
    workspace = briefly_trained[0]
    for predictor in (
        Predictor.from_files(workspace.model, decision, FP32, "openvino", workspace.guard,
                             _evidence(tmp_path, "bf16")),
        Predictor.from_files(workspace.model, decision, BF16, "openvino", workspace.guard,
                             _evidence(tmp_path, "fp32")),
        Predictor.from_files(workspace.model, decision, FP32, "torch"),
    ):  # fmt: skip
        before = predictor.network
        assert keep_faster_precision(predictor) is None
        assert predictor.network is before


class _Stored:
    """What load_predictor reads of a bentoml.Model: its files and its tag."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files, self.tag = files, "pneumonia-model:test"

    def path_of(self, name: str) -> str:
        return str(self.files.get(name, Path("/nonexistent") / name))


def test_the_service_times_bf16_only_for_precision_auto(
    briefly_trained: tuple[Workspace, Settings],
    decision: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``model.precision: auto`` asks for the timing; an explicit bf16 or fp32 is obeyed."""
    from pneumo.stored_model import DECISION_FILE, GUARD_FILE, MODEL_FILE, PRECISION_FILE

    workspace, settings = briefly_trained
    stored = _Stored(
        {
            MODEL_FILE: workspace.model,
            DECISION_FILE: decision,
            GUARD_FILE: workspace.guard,
            PRECISION_FILE: _evidence(tmp_path, "bf16"),
        }
    )
    asked: list[str] = []
    monkeypatch.setattr(
        speed,
        "keep_faster_precision",
        lambda predictor, threads=0: asked.append(str(predictor.network)),
    )
    for precision in ("auto", "bf16", "fp32"):
        model = settings.model.model_copy(update={"precision": precision, "runtime": "openvino"})
        load_predictor(settings.model_copy(update={"model": model}), stored, 1)
    assert len(asked) == 1
