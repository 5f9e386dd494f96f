"""Benchmark: /predict requests/s and latency of the BentoML service, next to in-process inference.

Serves a model with `bentoml serve` on a free 127.0.0.1 port, once with adaptive batching on and
once off, and sends the full-size JPEGs of ../shared/data/originals at concurrency 1, 8 and 32.
Every level is bounded in requests and seconds, and the whole run in time; servers are stopped by
PID. The in-process row decodes (the service's own upload path) and predicts the same images in
this process, in one batch. Prints one JSON object.

By default the model is an untrained network of the architecture and image size in params.yaml
(the same arithmetic as a trained one); --from-workspace DIR serves the evaluated model of DIR.
Client and server share this machine's cores: on a small machine the client's own work counts.
Usage: python bench/serve.py [--requests 240] [--seconds 30] [--time-limit 900]

--prediction-log adds the cost of the prediction log (monitor.enabled on vs off, everything else
equal): servers with and without it, alternated over --log-rounds rounds at concurrency 8, and
the throughput lost in per cent (the target is at most 5 %).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # serving/ is a folder of the repository, not an installed package

from pneumo.config import load_settings  # noqa: E402
from pneumo.params_file import set_param  # noqa: E402
from pneumo.workspace import Workspace  # noqa: E402

CONCURRENCY = (1, 8, 32)


def make_workspace(root: Path, params: Path) -> Workspace:
    """An untrained model of the configured architecture, with a decision and metrics."""
    import torch

    from pneumo.models import build_model, save_model

    settings = load_settings(params)
    workspace = Workspace(root)
    torch.manual_seed(0)
    size, arch, options = (
        settings.preprocess.image_size,
        settings.model.arch,
        settings.model.options(),
    )
    model = build_model(arch, size, **options)
    save_model(model, workspace.model, {"arch": arch, "image_size": size, "options": options})
    workspace.decision.write_text(json.dumps({"threshold": 0.5, "rule": "fixed", "tta": False}))
    workspace.eval_metrics.parent.mkdir(parents=True, exist_ok=True)
    workspace.eval_metrics.write_text(json.dumps({"test": {"note": "untrained benchmark model"}}))
    return workspace


def in_process(images: list[bytes], workspace: Workspace, settings: Any) -> dict[str, Any]:
    """Decode with the service's upload path and predict all images in one call, here."""
    from pneumo.accel import configure_threads
    from pneumo.predict import Predictor
    from serving.inputs import read_radiograph

    predictor = Predictor.from_workspace(workspace)
    threads = configure_threads(0)
    serve = settings.serve
    predictor.probabilities(np.zeros((1, predictor.image_size, predictor.image_size), np.uint8))
    start = time.perf_counter()
    decoded = [
        read_radiograph(data, "image/jpeg", predictor.image_size, serve.max_pixels, serve.min_side)
        for data in images
    ]
    decode_s = time.perf_counter() - start
    pixels = np.stack([d.pixels for d in decoded])
    start = time.perf_counter()
    predictor.probabilities(pixels, batch_size=len(pixels))
    infer_s = time.perf_counter() - start
    n = len(images)
    return {
        "torch_threads": threads,
        "decode_images_per_s": round(n / decode_s, 1),
        "inference_images_per_s": round(n / infer_s, 1),
        "decode_plus_inference_images_per_s": round(n / (decode_s + infer_s), 1),
        "ms_per_image": round(1000 * (decode_s + infer_s) / n, 2),
    }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(
    params: Path, home: Path, model_tag: str, log: Path, timeout: float
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "BENTOML_HOME": str(home),
        "PNEUMO_PARAMS": str(params),
        "PNEUMO_MODEL_TAG": model_tag,
        "BENTOML_DO_NOT_TRACK": "true",
    }
    from serving.service import ServiceArguments

    command = [sys.executable, "-m", "bentoml", "serve", "serving.service:PneumoniaService"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--working-dir", str(REPO)]
    command += ServiceArguments.command_line(load_settings(params).serve)  # batching on or off
    with log.open("wb") as handle:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {process.returncode}; see {log}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    stop_server(process)
    raise RuntimeError(f"bentoml serve not ready after {timeout:.0f} s; see {log}")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


async def load(
    url: str, images: list[bytes], concurrency: int, requests: int, seconds: float
) -> dict[str, Any]:
    """``requests`` POST /predict at ``concurrency``, stopping early after ``seconds``."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    next_index = 0
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal next_index
        while next_index < requests and time.monotonic() < deadline:
            data = images[next_index % len(images)]
            next_index += 1
            start = time.perf_counter()
            try:
                response = await client.post(
                    "/predict", content=data, headers={"content-type": "image/jpeg"}
                )
                key = None if response.status_code == 200 else str(response.status_code)
            except httpx.HTTPError as exc:
                key = type(exc).__name__
            if key is None:
                latencies.append(time.perf_counter() - start)
            else:
                errors[key] = errors.get(key, 0) + 1

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    return {
        "concurrency": concurrency,
        "requests_ok": len(latencies),
        "errors": errors,
        "requests_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
        "p95_ms": round(float(np.percentile(ms, 95)), 1) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None,
        "seconds": round(wall, 1),
    }


def prediction_log_cost(
    params: Path, home: Path, model_tag: str, images: list[bytes], args: argparse.Namespace
) -> dict[str, Any]:
    """/predict requests/s with the prediction log on and off, alternated to share the noise."""
    rates: dict[str, list[float]] = {"on": [], "off": []}
    for round_index in range(args.log_rounds):
        for state in ("on", "off") if round_index % 2 == 0 else ("off", "on"):
            set_param(params, "monitor.enabled", "true" if state == "on" else "false")
            log = params.parent / f"prediction-log-{state}-{round_index}.log"
            process, url = start_server(params, home, model_tag, log, timeout=180)
            try:
                asyncio.run(load(url, images, 4, 16, 20))
                level = asyncio.run(load(url, images, 8, args.requests, args.seconds))
                rates[state].append(level["requests_per_s"])
            finally:
                stop_server(process)
    on, off = float(np.median(rates["on"])), float(np.median(rates["off"]))
    return {
        "concurrency": 8,
        "requests_per_s_log_on": rates["on"],
        "requests_per_s_log_off": rates["off"],
        "median_on": on,
        "median_off": off,
        "cost_percent": round(100 * (off - on) / off, 1) if off else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--images", type=Path, default=REPO.parent / "shared" / "data" / "originals"
    )
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--from-workspace", type=Path, help="serve this workspace's model")
    parser.add_argument("--requests", type=int, default=240, help="per concurrency level")
    parser.add_argument("--seconds", type=float, default=30.0, help="per concurrency level")
    parser.add_argument("--time-limit", type=float, default=900.0, help="whole run, seconds")
    parser.add_argument(
        "--prediction-log", action="store_true", help="also: throughput with the log on and off"
    )
    parser.add_argument("--log-rounds", type=int, default=2, help="on/off pairs (--prediction-log)")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    started = time.monotonic()
    images = [p.read_bytes() for p in sorted(args.images.rglob("*.jpeg"))]
    if not images:
        sys.exit(f"no .jpeg files under {args.images}")

    from pneumo.package import import_champion

    with tempfile.TemporaryDirectory(prefix="pneumo-bench-serve-") as tmp:
        root = Path(tmp)
        params = root / "params.yaml"
        shutil.copyfile(args.params, params)
        set_param(params, "serve.bentoml_home", str(root / ".bentoml"))
        workspace = (
            Workspace(args.from_workspace) if args.from_workspace else make_workspace(root, params)
        )
        settings = load_settings(params)
        model_tag, metadata, _ = import_champion(settings, workspace, from_workspace=True)
        baseline = in_process(images, workspace, settings)
        servers: dict[str, Any] = {}
        for batching in (True, False):
            name = "adaptive_batching_on" if batching else "adaptive_batching_off"
            set_param(params, "serve.adaptive_batching", str(batching).lower())
            remaining = args.time_limit - (time.monotonic() - started)
            if remaining < 60:
                servers[name] = {"skipped": "time limit reached"}
                continue
            log = root / f"{name}.log"
            process, url = start_server(params, root / ".bentoml", model_tag, log, timeout=180)
            try:
                asyncio.run(load(url, images, 4, 16, 20))  # warm-up: the batcher learns its costs
                levels = []
                for concurrency in CONCURRENCY:
                    left = args.time_limit - (time.monotonic() - started)
                    if left < 5:
                        levels.append({"concurrency": concurrency, "skipped": "time limit reached"})
                        continue
                    seconds = min(args.seconds, left - 5)
                    levels.append(
                        asyncio.run(load(url, images, concurrency, args.requests, seconds))
                    )
                servers[name] = {"levels": levels}
            finally:
                stop_server(process)
        if args.prediction_log:
            set_param(params, "serve.adaptive_batching", "true")
            servers["prediction_log"] = prediction_log_cost(
                params, root / ".bentoml", model_tag, images, args
            )
    print(
        json.dumps(
            {
                "benchmark": "serve /predict (full-size JPEG radiographs)",
                "images": len(images),
                "mean_jpeg_kb": round(sum(map(len, images)) / len(images) / 1024, 1),
                "model": {
                    "arch": metadata["arch"],
                    "image_size": metadata["image_size"],
                    "trained": bool(args.from_workspace),
                },
                "cpu_cores": len(os.sched_getaffinity(0)),
                "machine": platform.machine(),
                "serve": {
                    "workers": settings.serve.workers,
                    "max_batch_size": settings.serve.max_batch_size,
                    "max_latency_ms": settings.serve.max_latency_ms,
                },
                "in_process": baseline,
                "server": servers,
                "wall_seconds": round(time.monotonic() - started, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
