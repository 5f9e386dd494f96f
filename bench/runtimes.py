"""Benchmark: the network's forward pass in each inference runtime, on real radiographs.

torch (fp32, and bf16 autocast where the CPU computes bf16 natively), OpenVINO (fp32, bf16) and
ONNX Runtime (fp32), each exported as serving exports it (pneumo/inference/runtime.py), then timed through
:func:`pneumo.inference.predict_proba` at batch 1 and 32, without and with test-time
augmentation (6 views per image). Reports the median milliseconds per call, images/s at batch
32, and the largest probability gap to torch fp32 on the same images: the evidence for
``model.runtime`` (serving uses the fp32 exports; OpenVINO bf16 is measured, not served).
bench/serve.py includes this comparison; alone it prints one JSON object.
Usage: python bench/runtimes.py [--model models/model.pt] [--images ../shared/data/originals]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # serving/ is a folder of the repository, not an installed package

from pneumo.accel import Accelerator, configure_threads, native_bf16  # noqa: E402
from pneumo.inference import predict_proba  # noqa: E402

ENGINES = (
    ("torch", "fp32"),
    ("torch", "bf16"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
    ("onnxruntime", "fp32"),
)
BATCHES = (1, 32)
MIN_SECONDS = 0.4  # per measurement: enough calls to take a median of


def decode_originals(folder: Path, image_size: int) -> np.ndarray:
    """The full-size JPEGs decoded as the service decodes an upload."""
    from serving.inputs import read_radiograph

    files = sorted(folder.rglob("*.jpeg"))
    if not files:
        raise SystemExit(f"no .jpeg files under {folder}")
    limit = 50_000_000
    return np.stack(
        [read_radiograph(f.read_bytes(), "image/jpeg", image_size, limit, 1).pixels for f in files]
    )


def _median_ms(call: Any, seconds: float = MIN_SECONDS) -> float:
    call()  # warm-up: first-call allocations and kernel selection
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 3:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 2)


def measure(network: Any, images: np.ndarray, accel: Accelerator) -> dict[str, float]:
    """Median ms per call at each batch size, without and with TTA."""
    row: dict[str, float] = {}
    for batch in BATCHES:
        chunk = np.resize(images, (batch, *images.shape[1:]))  # repeats images when too few
        for tta in (False, True):
            key = f"batch_{batch}{'_tta' if tta else ''}_ms"
            row[key] = _median_ms(
                lambda c=chunk, t=tta: predict_proba(network, c, len(c), t, accel)
            )
    row["images_per_s_batch_32"] = round(32_000 / row["batch_32_ms"], 1)
    row["images_per_s_batch_32_tta"] = round(32_000 / row["batch_32_tta_ms"], 1)
    return row


def compare(model_path: Path, images: np.ndarray, threads: int = 0) -> dict[str, Any]:
    """Every engine of :data:`ENGINES` this machine can run, timed on ``images``."""
    from pneumo.inference.runtime import export_network
    from pneumo.models import load_model

    threads = configure_threads(threads)
    model, _ = load_model(model_path)
    reference = predict_proba(model, images, 64, False)  # torch fp32
    out: dict[str, Any] = {"torch_threads": threads, "images": len(images), "engines": {}}
    for runtime, precision in ENGINES:
        name = f"{runtime}_{precision}"
        if precision == "bf16" and not native_bf16("cpu"):
            out["engines"][name] = {"skipped": "this CPU has no native bf16"}
            continue
        accel = Accelerator("cpu", precision)  # type: ignore[arg-type]
        start = time.perf_counter()
        try:
            network = model if runtime == "torch" else export_network(model, runtime, precision)
        except Exception as exc:  # e.g. a runtime that is not installed
            out["engines"][name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            continue
        load_s = time.perf_counter() - start
        gap = np.abs(predict_proba(network, images, 64, False, accel) - reference).max()
        out["engines"][name] = {
            "load_s": round(load_s, 2),
            **measure(network, images, accel),
            "max_probability_gap_vs_torch_fp32": float(f"{gap:.2e}"),
        }
    out["loadavg_1min_after"] = round(os.getloadavg()[0], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=REPO / "models" / "model.pt")
    parser.add_argument(
        "--images", type=Path, default=REPO.parent / "shared" / "data" / "originals"
    )
    parser.add_argument("--threads", type=int, default=0, help="0 = one per available core")
    args = parser.parse_args()
    from pneumo.models import load_model

    _, metadata = load_model(args.model)
    images = decode_originals(args.images, int(metadata["image_size"]))
    print(json.dumps(compare(args.model, images, args.threads), indent=2))


if __name__ == "__main__":
    main()
