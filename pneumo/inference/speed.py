"""bf16 only where it is also faster: a CPU flag says the arithmetic exists, not that it wins.

``model.precision: auto`` compiles the served network in bf16 where the model's evidence allows it
and the CPU has native bf16 (pneumo/inference/runtime.py). On an AMD EPYC that doubled the
champion's network; on a Xeon with AVX512-BF16 but no AMX exposed (a cloud VM), the same bf16
network ran at 1,228-1,308 images/s against 1,823-2,001 in fp32 (batch 32, bench/serve.py).
So the service times both exports on the probe images at the batch sizes it serves and keeps
the faster one. The network is timed alone (its runtime call): the only part the precision
changes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pneumo.inference.predictor import Predictor

log = logging.getLogger(__name__)

BATCHES = (1, 8)  # what the service calls at low and at moderate load (adaptive batching)
ROUNDS = 15  # timed calls per batch size and precision; the median is kept


@dataclass(frozen=True)
class PrecisionTiming:
    """Milliseconds per image of each candidate export, and the one kept."""

    ms_per_image: dict[str, float]
    kept: str

    def summary(self) -> str:
        times = ", ".join(f"{name} {ms:.3f}" for name, ms in self.ms_per_image.items())
        return f"{self.kept} kept: ms per image {times}"


def ms_per_image(network: Any, image_size: int, batches: tuple[int, ...] = BATCHES,
                 rounds: int = ROUNDS) -> float:  # fmt: skip
    """The median milliseconds per image of ``network``'s runtime call (an ExportedNetwork),
    averaged over the ``batches`` sizes, after one warm-up call each."""
    from pneumo.inference.runtime import probe_images

    probes = probe_images(image_size).astype(np.float32)[:, None] / 255.0
    total = 0.0
    for batch in batches:
        pixels = np.ascontiguousarray(np.resize(probes, (batch, *probes.shape[1:])))
        network.run(pixels)
        calls = []
        for _ in range(rounds):
            start = time.perf_counter()
            network.run(pixels)
            calls.append(time.perf_counter() - start)
        total += 1000 * float(np.median(calls)) / batch
    return total / len(batches)


def keep_faster_precision(predictor: Predictor, threads: int = 0) -> PrecisionTiming | None:
    """Where ``predictor`` runs an OpenVINO bf16 export, time it against its fp32 export (checked
    against torch like every export) and keep the faster; None where there is no choice."""
    from pneumo.inference.runtime import check_network, export_network

    network = predictor.network
    if network is predictor.model or not str(network.description).startswith("openvino bf16"):
        return None
    features = bool(network.features)
    fp32 = export_network(predictor.model, "openvino", "fp32", threads, features)
    check_network(predictor.model, fp32)
    size = predictor.image_size
    times = {"bf16": ms_per_image(network, size), "fp32": ms_per_image(fp32, size)}
    kept = min(times, key=times.__getitem__)
    timing = PrecisionTiming({k: round(v, 4) for k, v in times.items()}, kept)
    if kept == "fp32":
        fp32.description = f"{fp32.description}; bf16 allowed, measured slower here"
        predictor.network = fp32
    log.info("bf16 or fp32 for the network, by speed on this CPU: %s", timing.summary())
    return timing
