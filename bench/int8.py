"""Benchmark: int8 post-training settings (NNCF) against fp32 on the stress stage's sets.

The stress stage measures one int8 network (NNCF's defaults, calibrated on
``stress.reduced_precision.calibration_images`` train images) and refuses it when it leaves that
section's bounds (models/precision.json). This measures NNCF's other post-training settings on the
very same sets (the clean validation split, every shift and severity, the counterfactual swaps)
for a workspace's model, with the same comparison (pneumo/evaluation/precision.py): the largest
probability gap, calls changed at the shipped threshold, the worst ROC-AUC drop, the cue effect's
move, each bound held or not, and the CPU milliseconds per image of each network (batch 4, about
the service's batch at 8 clients). Nothing here is served or written to the workspace: it says whether int8
is within reach for a model before anyone changes a bound or a setting.

``--accuracy-control`` adds NNCF's accuracy-controlled quantisation, its metric the probability
gap on the clean split and the counterfactual swap at severity 2, at most the gap bound: from the
first convolution and the head in fp32, it puts back in fp32 the layers the gap is most sensitive
to until the bound holds (minutes on 2 cores).
Usage: python bench/int8.py [--workspace .] [--variants default,keep_ends] [--accuracy-control]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pneumo.config import Settings, load_settings  # noqa: E402
from pneumo.workspace import Workspace  # noqa: E402

BATCH = 4
# name -> NNCF quantize() keyword arguments, given the network's first convolution and its head
# (the two layers post-training quantisation usually hurts most); "calibration" is the image count.
VARIANTS: dict[str, Callable[[Any, list[str]], dict[str, Any]]] = {
    "default": lambda nncf, ends: {},  # what the stress stage measures
    "keep_ends": lambda nncf, ends: {"ignored_scope": nncf.IgnoredScope(names=ends)},
    "mixed_preset": lambda nncf, ends: {"preset": nncf.QuantizationPreset.MIXED},
    "full_bias_correction": lambda nncf, ends: {"fast_bias_correction": False},
    "calibration_1000": lambda nncf, ends: {"calibration": 1000},
    "keep_ends_mixed_full_bc": lambda nncf, ends: {
        "ignored_scope": nncf.IgnoredScope(names=ends),
        "preset": nncf.QuantizationPreset.MIXED,
        "fast_bias_correction": False,
    },
}


def stress_sets(settings: Settings, workspace: Workspace, predictor: Any) -> tuple[dict, dict, Any]:
    """Every set the stress stage scores, its images and fp32 probabilities, and the labels."""
    from pneumo.data.preprocess import load_arrays
    from pneumo.evaluation.stress import stress_report, working_copies

    val = load_arrays(workspace.arrays("val"))
    root = workspace.resolve(settings.data.root)
    working = working_copies([str(root / p) for p in val["paths"]], predictor.image_size,
                             settings.preprocess.workers)  # fmt: skip
    images: dict[str, np.ndarray] = {}
    reference: dict[str, np.ndarray] = {}

    def keep(name: str, shown: np.ndarray, probabilities: np.ndarray) -> None:
        images[name], reference[name] = shown.copy(), probabilities

    stress_report(lambda shown: predictor.probabilities(shown, settings.model.batch_size),
                  working, val["labels"], predictor.threshold, predictor.image_size,
                  settings.stress.seed, {}, keep)  # fmt: skip
    return images, reference, val["labels"]


def calibration(settings: Settings, workspace: Workspace, count: int) -> np.ndarray:
    """The stress stage's seeded draw of the train split (the same images for the same count)."""
    from pneumo.data.preprocess import load_arrays
    from pneumo.evaluation.stress import calibration_draw

    train = load_arrays(workspace.arrays("train"))["images"]
    return calibration_draw(train, count, settings.stress.seed)


def standardised(images: np.ndarray) -> np.ndarray:
    """uint8 (N, S, S) -> the network's float input (N, 1, S, S), as every forward pass makes it."""
    from pneumo.data.transforms import standardize

    return np.ascontiguousarray(standardize(torch.from_numpy(images[:, None])).numpy())


def compiled_network(network: Any, image_size: int, name: str) -> Any:
    """An OpenVINO network as the service compiles one (fp32 kernels where not int8)."""
    from pneumo.inference.runtime import ExportedNetwork, openvino_run

    run = openvino_run(network, torch.get_num_threads())
    return ExportedNetwork(run, image_size, f"openvino {name}")


def network_ends(network: Any) -> list[str]:
    """The OpenVINO names of the first convolution and of the head's matrix product."""
    operations = [(op.get_friendly_name(), op.get_type_name()) for op in network.get_ordered_ops()]
    convolutions = [name for name, kind in operations if kind == "Convolution"]
    return [convolutions[0], *(name for name, kind in operations if kind == "MatMul")]


def variant_network(
    name: str,
    onnx: bytes,
    image_size: int,
    draw: Callable[[int], np.ndarray],
    calibration_images: int,
) -> Any:
    """The network quantised by NNCF with the variant ``name``'s settings, calibrated on
    ``draw(count)`` uint8 train images (``calibration_images`` unless the variant says)."""
    import nncf
    import openvino as ov

    from pneumo.data.transforms import standardize_one

    network = ov.Core().read_model(onnx, b"")
    options = VARIANTS[name](nncf, network_ends(network))
    count = options.pop("calibration", calibration_images)
    images = draw(count)
    dataset = nncf.Dataset(list(images), standardize_one)
    quantized = nncf.quantize(network, dataset, subset_size=len(images), **options)
    return compiled_network(quantized, image_size, f"int8 {name}")


def cpu_ms_per_image(network: Any, images: np.ndarray, calls: int = 100) -> float:
    """This process's CPU time per image, batches of BATCH standardised images."""
    pixels = standardised(images[:BATCH])
    network.run(pixels)
    before = psutil.Process().cpu_times()
    for _ in range(calls):
        network.run(pixels)
    after = psutil.Process().cpu_times()
    return 1000 * (after.user + after.system - before.user - before.system) / (calls * BATCH)


def measure(
    predictor: Any,
    network: Any,
    images: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
    labels: np.ndarray,
    bounds: Any,
) -> dict[str, Any]:
    """One int8 network against fp32 on every set, as the stress stage compares them."""
    from pneumo.evaluation.precision import compare, verdict

    candidate = dataclasses.replace(predictor, network=network)
    scored = {name: candidate.probabilities(shown, BATCH * 32) for name, shown in images.items()}
    figures = compare(reference, scored, labels, predictor.threshold)
    held = verdict(figures, bounds)
    keys = ("max_probability_gap", "flips", "flip_rate", "worst_auc_drop", "worst_auc_drop_set",
            "cue_effect_change")  # fmt: skip
    return {**{key: figures[key] for key in keys}, "within": held, "allowed": all(held.values()),
            "cpu_ms_per_image": round(cpu_ms_per_image(network, images["clean"]), 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", type=Path, default=Path("."), help="after `make run`")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, of: {', '.join(VARIANTS)}")  # fmt: skip
    parser.add_argument("--accuracy-control", action="store_true",
                        help="also NNCF's accuracy-controlled quantisation")  # fmt: skip
    args = parser.parse_args()
    unknown = sorted(set(args.variants.split(",")) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}: choose from {', '.join(VARIANTS)}")
    # NNCF prints its progress bars and notes to stdout: the JSON alone goes there.
    out, sys.stdout = sys.stdout, sys.stderr
    import openvino as ov

    from pneumo.accel import configure_threads, cpu_flags
    from pneumo.inference.predictor import Predictor
    from pneumo.inference.runtime import export_onnx

    start = time.time()
    workspace = Workspace(args.workspace.resolve())
    settings = load_settings(workspace.root / "params.yaml")
    bounds = settings.stress.reduced_precision
    configure_threads(settings.model.threads)
    predictor = Predictor.from_workspace(workspace, settings.model.accelerator(), "openvino")
    images, reference, labels = stress_sets(settings, workspace, predictor)
    onnx = export_onnx(predictor.model, predictor.image_size)
    fp32 = compiled_network(ov.Core().read_model(onnx, b""), predictor.image_size, "fp32")
    results: dict[str, Any] = {
        "fp32_cpu_ms_per_image": round(cpu_ms_per_image(fp32, images["clean"]), 2)
    }
    for name in args.variants.split(","):
        began = time.time()
        network = variant_network(name, onnx, predictor.image_size,
                                  lambda count: calibration(settings, workspace, count),
                                  bounds.calibration_images)  # fmt: skip
        results[name] = measure(predictor, network, images, reference, labels, bounds)
        results[name]["seconds"] = round(time.time() - began, 1)
        print(name, json.dumps(results[name]), file=sys.stderr, flush=True)
    if args.accuracy_control:
        results["accuracy_control"] = accuracy_controlled(
            onnx, predictor, settings, workspace, images, reference, labels
        )
    print(json.dumps({
        "benchmark": "int8 post-training settings against fp32 on the stress stage's sets",
        "workspace_model": str(workspace.model), "sets": len(images),
        "images": int(sum(len(v) for v in images.values())), "bounds": bounds.model_dump(),
        "cpu_cores": len(psutil.Process().cpu_affinity() or []),
        "cpu_flags": sorted(f for f in cpu_flags() if f.startswith(("avx2", "avx512", "amx", "avx_vnni"))),
        "results": results,
        "wall_seconds": round(time.time() - start, 1)}, indent=2), file=out)  # fmt: skip


def accuracy_controlled(onnx: bytes, predictor: Any, settings: Settings, workspace: Workspace,
                        images: dict, reference: dict, labels: np.ndarray) -> dict[str, Any]:  # fmt: skip
    """NNCF's quantize_with_accuracy_control: layers back to fp32 until the gap is in bound."""
    import nncf
    import openvino as ov

    from pneumo.data.transforms import standardize_one

    network = ov.Core().read_model(onnx, b"")
    ends = network_ends(network)  # before NNCF touches the network
    bounds = settings.stress.reduced_precision
    names = ("clean", "cf_swap@2")
    shown = np.concatenate([images[n] for n in names])
    expected = np.concatenate([reference[n] for n in names])
    batches = [standardised(shown[i : i + 64]) for i in range(0, len(shown), 64)]

    def gap(compiled: Any, items: Any) -> float:
        logits = np.concatenate([np.asarray(compiled(batch)[0]).reshape(-1) for batch in items])
        got = predictor.decision.adjust(1.0 / (1.0 + np.exp(-logits.astype(np.float64))))
        return -float(np.max(np.abs(got - expected)))

    began = time.time()
    count = bounds.calibration_images
    quantized = nncf.quantize_with_accuracy_control(
        network,
        nncf.Dataset(list(calibration(settings, workspace, count)), standardize_one),
        nncf.Dataset(batches), gap, max_drop=bounds.max_probability_gap,
        drop_type=nncf.DropType.ABSOLUTE, subset_size=count,
        ignored_scope=nncf.IgnoredScope(names=ends),
    )  # fmt: skip
    kept_int8 = sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())
    network = compiled_network(quantized, predictor.image_size, "int8 accuracy_control")
    result = measure(predictor, network, images, reference, labels, bounds)
    return {**result, "fake_quantize_ops_left": int(kept_int8),
            "seconds": round(time.time() - began, 1)}  # fmt: skip


if __name__ == "__main__":
    main()
