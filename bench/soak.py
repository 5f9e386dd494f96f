"""Benchmark: does the service's memory level off under steady load? (issue 22)

Serves a model with `bentoml serve` on a free 127.0.0.1 port (the default configuration, the
prediction log on), sends the full-size JPEGs of ../shared/data/originals from ``--clients``
clients without pause for ``--minutes``, and samples the resident memory (RSS) of the server's
whole process tree every ``--every`` seconds. Prints one JSON object: the samples, requests and
errors, and a verdict: the RSS growth over the second half of the run, per minute, against the
first half's; ``levels_off`` is true when the second half grows by less than
``LEVEL_MB_PER_MIN``, and ``flat_after_warmup`` when everything after the first minute does.

Usage: python bench/soak.py [--minutes 10] [--clients 8] [--every 10] [--from-workspace DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.serve import bench_workspace  # noqa: E402
from bench.servers import start_server, stop_server  # noqa: E402
from pneumo.config import load_settings  # noqa: E402
from pneumo.config.params_file import set_param  # noqa: E402
from pneumo.workspace import Workspace  # noqa: E402

LEVEL_MB_PER_MIN = 2.0  # below this in the second half: memory has levelled off
WARMUP_MIN = 1.0  # minutes of start-up growth (first requests, lazy imports) not held against it


def tree_rss_mb(pid: int) -> float:
    total = 0
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


async def load(url: str, images: list[bytes], clients: int, stop_at: float) -> dict[str, int]:
    counts = {"requests": 0, "errors": 0}

    async def client(index: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            i = index
            while time.monotonic() < stop_at:
                try:
                    response = await http.post("/predict", content=images[i % len(images)],
                                               headers={"content-type": "image/jpeg"})  # fmt: skip
                    counts["errors"] += response.status_code != 200
                except httpx.HTTPError:
                    counts["errors"] += 1
                counts["requests"] += 1
                i += clients

    await asyncio.gather(*(client(i) for i in range(clients)))
    return counts


async def sample(pid: int, every: float, stop_at: float, start: float) -> list[dict[str, float]]:
    samples = []
    while time.monotonic() < stop_at:
        samples.append(
            {"t_s": round(time.monotonic() - start, 1), "rss_mb": round(tree_rss_mb(pid), 1)}
        )
        await asyncio.sleep(every)
    samples.append(
        {"t_s": round(time.monotonic() - start, 1), "rss_mb": round(tree_rss_mb(pid), 1)}
    )
    return samples


def verdict(samples: list[dict[str, float]]) -> dict[str, Any]:
    """Growth per minute (least squares) in each half of the run, and after the first minute.

    ``levels_off`` looks at the second half only: a server that grew for five minutes and then
    stopped passed it (BentoML's request timers held every request for ``traffic.timeout``, 300
    s: +440 MB). ``flat_after_warmup`` asks more: no growth from the first minute on."""
    t = np.array([s["t_s"] for s in samples]) / 60
    rss = np.array([s["rss_mb"] for s in samples])
    half = len(t) // 2
    slope = lambda a, b: float(np.polyfit(t[a:b], rss[a:b], 1)[0]) if b - a >= 3 else float("nan")  # noqa: E731
    first, second = slope(0, half), slope(half, len(t))
    warm = int(np.searchsorted(t, WARMUP_MIN))
    after = slope(warm, len(t))
    return {"rss_start_mb": float(rss[0]), "rss_end_mb": float(rss[-1]),
            "growth_mb_per_min_first_half": round(first, 2),
            "growth_mb_per_min_second_half": round(second, 2),
            "levels_off": bool(second < LEVEL_MB_PER_MIN),
            "growth_mb_after_warmup": round(float(rss[-1] - rss[min(warm, len(t) - 1)]), 1),
            "growth_mb_per_min_after_warmup": round(after, 2),
            "flat_after_warmup": bool(after < LEVEL_MB_PER_MIN)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--from-workspace", type=Path, default=None)
    parser.add_argument(
        "--originals", type=Path, default=REPO.parent / "shared" / "data" / "originals"
    )
    args = parser.parse_args()
    from pneumo.registry.bento import import_champion

    images = [p.read_bytes() for p in sorted(args.originals.rglob("*.jpeg"))]
    if not images:
        sys.exit(f"no .jpeg files under {args.originals}: pass --originals")
    with tempfile.TemporaryDirectory(prefix="pneumo-soak-") as tmp:
        root = Path(tmp)
        params = root / "params.yaml"
        shutil.copyfile(args.params, params)
        set_param(params, "serve.bentoml_home", str(root / ".bentoml"))
        set_param(params, "monitor.store_url", f"sqlite:///{root / 'predictions.db'}")
        settings = load_settings(params)
        source = Workspace(args.from_workspace) if args.from_workspace else None
        workspace = bench_workspace(root / "ws", settings, source, tta=False)
        tag, _, _ = import_champion(settings, workspace, from_workspace=True)
        process, url = start_server(params, root / ".bentoml", tag, root / "server.log", 240)
        try:
            start = time.monotonic()
            stop_at = start + args.minutes * 60

            async def run() -> tuple[dict[str, int], list[dict[str, float]]]:
                return await asyncio.gather(load(url, images, args.clients, stop_at),
                                            sample(process.pid, args.every, stop_at, start))  # fmt: skip

            counts, samples = asyncio.run(run())
        finally:
            stop_server(process)
    model = {"arch": settings.model.arch, "trained": source is not None}
    print(json.dumps({"minutes": args.minutes, "clients": args.clients, "model": model, **counts,
                      "samples": samples, "verdict": verdict(samples)}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
