"""The inference runtimes (pneumo/inference/runtime.py): OpenVINO and ONNX Runtime compute what torch does.

On a briefly trained model and real radiographs (the 48 full-size originals and validation
images, decoded by ``decode_radiograph``), with and without test-time augmentation.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pneumo.accel import Accelerator
from pneumo.config import Settings
from pneumo.data.preprocess import decode_radiograph, load_arrays
from pneumo.errors import ConfigError
from pneumo.inference import predict_proba, tta_views
from pneumo.inference.predictor import Predictor
from pneumo.inference.runtime import (
    ExportedNetwork,
    RuntimeMismatchError,
    check_network,
    compile_network,
    export_onnx,
    resolve_runtime,
)
from pneumo.models import build_model, load_model
from pneumo.workspace import Workspace

FP32 = Accelerator("cpu", "fp32")
BF16 = Accelerator("cpu", "bf16")
EQUAL = 1e-4  # the contract: an exported fp32 network answers as torch fp32 does


@pytest.fixture(scope="module")
def trained(briefly_trained: tuple[Workspace, Settings]) -> torch.nn.Module:
    model, _ = load_model(briefly_trained[0].model)
    return model


@pytest.fixture(scope="module")
def untrained_twin(briefly_trained: tuple[Workspace, Settings]) -> torch.nn.Module:
    """The same architecture with other weights."""
    _, metadata = load_model(briefly_trained[0].model)
    torch.manual_seed(1)
    return build_model(metadata["arch"], metadata["image_size"], **metadata["options"])


@pytest.fixture(scope="module")
def real_images(briefly_trained: tuple[Workspace, Settings], originals_root: Path) -> np.ndarray:
    """The originals (never trained on) and 32 validation images, at the model's 64 px."""
    workspace, settings = briefly_trained
    size = settings.preprocess.image_size
    originals = [decode_radiograph(p, size) for p in sorted(originals_root.rglob("*.jpeg"))]
    val = load_arrays(workspace.arrays("val"))["images"][:32]
    return np.concatenate([np.stack(originals), val])


@pytest.fixture(scope="module")
def exported(trained: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {
        "openvino": compile_network(trained, "openvino", FP32),
        "onnxruntime": compile_network(trained, "onnxruntime", FP32),
    }


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
@pytest.mark.parametrize("tta", [False, True])
def test_exported_fp32_equals_torch_on_real_images(
    trained: torch.nn.Module,
    exported: dict[str, torch.nn.Module],
    real_images: np.ndarray,
    runtime: str,
    tta: bool,
) -> None:
    expected = predict_proba(trained, real_images, 64, tta, FP32)
    got = predict_proba(exported[runtime], real_images, 64, tta, FP32)
    assert np.ptp(expected) > 0.3, "the model must tell these images apart for the test to bite"
    np.testing.assert_allclose(got, expected, rtol=0, atol=EQUAL)


def test_exported_answers_do_not_depend_on_the_batch(
    exported: dict[str, torch.nn.Module], real_images: np.ndarray
) -> None:
    network = exported["openvino"]
    together = predict_proba(network, real_images[:12], 12)
    alone = np.concatenate([predict_proba(network, real_images[i : i + 1], 1) for i in range(12)])
    np.testing.assert_allclose(alone, together, rtol=0, atol=1e-6)


def test_the_export_computes_in_fp32_when_bf16_is_asked(
    trained: torch.nn.Module, real_images: np.ndarray
) -> None:
    """OpenVINO's bf16 mode drifts further from fp32 than torch's autocast on real images
    (bench/runtimes.py), so without the model's evidence for it (tests/model/test_precision.py)
    an export stays fp32 whatever model.precision says."""
    reference = predict_proba(trained, real_images, 64, False, FP32)
    served = compile_network(trained, "openvino", BF16)
    got = predict_proba(served, real_images, 64, False, BF16)
    np.testing.assert_allclose(got, reference, rtol=0, atol=EQUAL)
    assert "fp32" in str(served)


def test_a_wrong_export_is_refused(
    trained: torch.nn.Module, untrained_twin: torch.nn.Module
) -> None:
    network = compile_network(untrained_twin, "onnxruntime", FP32)
    with pytest.raises(RuntimeMismatchError, match="model.runtime: torch"):
        check_network(trained, network)


def test_predictor_runs_the_export_and_keeps_torch_for_gradients(
    briefly_trained: tuple[Workspace, Settings], real_images: np.ndarray, tmp_path: Path
) -> None:
    model_path, decision = briefly_trained[0].model, tmp_path / "decision.json"
    decision.write_text(json.dumps({"threshold": 0.5, "rule": "fixed", "tta": True}))
    exported = Predictor.from_files(model_path, decision, FP32, "openvino")
    plain = Predictor.from_files(model_path, decision, FP32)
    assert isinstance(exported.network, ExportedNetwork) and plain.network is plain.model
    assert isinstance(exported.model, torch.nn.Module)  # Grad-CAM needs the torch module
    np.testing.assert_allclose(
        exported.probabilities(real_images[:8]), plain.probabilities(real_images[:8]), atol=EQUAL
    )


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_exported_guard_features_equal_torch_and_each_spread_is_the_channels_std(
    trained: torch.nn.Module, real_images: np.ndarray, runtime: str
) -> None:
    """The scope check's columns (pneumo/models/features.py) as the service computes them: each
    early block's spread is its channels' sample std over the whole map, in torch and exported."""
    from pneumo.inference import forward_pass
    from pneumo.models import conv_blocks
    from pneumo.models.features import LAYOUT_BLOCKS, LAYOUT_GRID, feature_segments

    images = real_images[:8]
    ours = forward_pass(trained, images, features=True).features
    maps: list[torch.Tensor] = []
    blocks = [block for _, block in conv_blocks(trained)][:LAYOUT_BLOCKS]
    handles = [b.register_forward_hook(lambda _m, _i, out: maps.append(out)) for b in blocks]
    try:
        forward_pass(trained, images)
    finally:
        for handle in handles:
            handle.remove()
    segments = feature_segments(trained, 64)
    for index, block_map in enumerate(maps):
        start, end = segments[f"layout{index}"]
        flat = block_map.float().numpy().reshape(*block_map.shape[:2], -1)
        cells = block_map.shape[1] * LAYOUT_GRID * LAYOUT_GRID
        spread = ours[:, start + cells : end]
        np.testing.assert_allclose(spread, flat.std(axis=2, ddof=1), rtol=1e-4, atol=1e-6)
    served = compile_network(trained, runtime, FP32, features=True)
    theirs = forward_pass(served, images, features=True).features
    np.testing.assert_allclose(theirs, ours, rtol=1e-3, atol=EQUAL)


def test_the_export_is_cached_by_weights_features_and_code(
    trained: torch.nn.Module,
    untrained_twin: torch.nn.Module,
    real_images: np.ndarray,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every stage that loads the model exports it; the second export of the same weights is
    read from the cache, and anything that changes the graph or weights exports anew."""
    monkeypatch.setenv("PNEUMO_CACHE_DIR", str(tmp_path / "cache"))
    first = export_onnx(trained, 64, True)
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 1

    def exporter_called(*args: object, **kwargs: object) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(torch.onnx, "export", exporter_called)
    assert export_onnx(trained, 64, True) == first  # from the cache
    served = compile_network(trained, "openvino", FP32, features=True)  # checked against torch
    expected = predict_proba(trained, real_images, 64, False, FP32)
    np.testing.assert_allclose(predict_proba(served, real_images, 64, False, FP32), expected,
                               rtol=0, atol=EQUAL)  # fmt: skip
    for other in ((untrained_twin, 64, True), (trained, 64, False)):
        with pytest.raises(AssertionError, match="exported again"):
            export_onnx(*other)
    monkeypatch.setenv("PNEUMO_CACHE_DIR", "off")
    with pytest.raises(AssertionError, match="exported again"):
        export_onnx(trained, 64, True)
    monkeypatch.undo()
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    monkeypatch.setenv("PNEUMO_CACHE_DIR", str(not_a_folder))  # unwritable: exports, no error
    assert len(export_onnx(trained, 64, True)) == len(first)


def test_a_cached_export_imports_no_exporter(
    briefly_trained: tuple[Workspace, Settings], tmp_path: Path
) -> None:
    """Reading the cache must not cost the exporter's import (onnxscript and torch.onnx take
    seconds in every process that loads the model); without onnxscript installed, exporting
    says what to install."""
    import subprocess

    model_file = briefly_trained[0].model
    code = (
        "import sys; from pneumo.models import load_model; "
        "from pneumo.inference.runtime import export_onnx; "
        f"model, meta = load_model({str(model_file)!r}); export_onnx(model, meta['image_size']); "
        "print(sorted(m for m in ('onnxscript', 'torch.onnx') if m in sys.modules))"
    )
    env = {**os.environ, "PNEUMO_CACHE_DIR": str(tmp_path / "cache")}
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, check=True).stdout.split("\n")[-2] for _ in range(2)]  # fmt: skip
    assert runs == ["['onnxscript', 'torch.onnx']", "[]"]  # exported, then read from the cache


def test_a_missing_exporter_says_what_to_install(
    trained: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    with pytest.raises(ConfigError, match="needs onnx and onnxscript: pip install"):
        export_onnx(trained, 64)


def test_runtime_choice() -> None:
    assert resolve_runtime("auto", FP32) == "openvino"
    assert resolve_runtime("auto", Accelerator("cuda", "bf16")) == "torch"
    assert resolve_runtime("onnxruntime", BF16) == "onnxruntime"
    with pytest.raises(ConfigError, match="runs on the CPU"):
        resolve_runtime("openvino", Accelerator("cuda", "fp32"))
    with pytest.raises(ConfigError, match="unknown model.runtime"):
        resolve_runtime("tensorrt", FP32)


def test_a_missing_runtime_package_says_what_to_install(
    trained: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now fails
    with pytest.raises(ConfigError, match="pip install openvino=="):
        compile_network(trained, "openvino", FP32)


def test_tta_views_warp_each_image_by_each_view(real_images: np.ndarray) -> None:
    """The batched views equal warping every image on its own, view-major; the first view
    (no rotation, shift or zoom) is the image itself."""
    pixels = torch.from_numpy(real_images[:5]).unsqueeze(1).float() / 255
    views = tta_views(pixels)
    count = len(views) // len(pixels)
    alone = [tta_views(pixels[i : i + 1]) for i in range(len(pixels))]
    for view in range(count):
        for i in range(len(pixels)):
            assert torch.equal(views[view * len(pixels) + i], alone[i][view])
    assert torch.allclose(views[: len(pixels)], pixels, atol=1e-6)
