"""Benchmark: images/s of pneumo's ingest + preprocess against a naive single-process PIL loop.

Both read the same files in the same run; prints one JSON object.
Usage: python bench/preprocess.py [--data ../shared/data/chest_xray] [--image-size 128]
       python bench/preprocess.py --full-size [--copies 10]   # the 48 full-size originals, tiled

Users' Kermany folders hold full-size images (about 1,500 x 1,100), where DCT-scaled decoding
matters; ``--full-size`` lays out ``--copies`` copies of each shared original (each made unique by
a tag after its end marker, so ingest keeps them all) as a Kermany train/ folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pneumo.data.ingest import build_manifest
from pneumo.data.preprocess import decode_many

REPO = Path(__file__).resolve().parents[1]


def naive_loop(paths: list[Path], image_size: int) -> np.ndarray:
    """What a first script does: hash, open, convert, resize, one file at a time."""
    out = np.empty((len(paths), image_size, image_size), dtype=np.uint8)
    for i, path in enumerate(paths):
        hashlib.sha256(path.read_bytes()).hexdigest()
        with Image.open(path) as img:
            out[i] = np.asarray(img.convert("L").resize((image_size, image_size)))
    return out


def full_size_set(originals: Path, copies: int, root: Path) -> Path:
    """A Kermany-layout folder of ``copies`` distinct copies of every original."""
    for label in ("NORMAL", "PNEUMONIA"):
        folder = root / "train" / label
        folder.mkdir(parents=True)
        for path in sorted((originals / label).glob("*.jpeg")):
            data = path.read_bytes()
            for k in range(copies):
                tag = f"pneumo-bench-copy-{k}".encode()  # after the end marker: same pixels
                (folder / f"{path.stem}-copy{k}.jpeg").write_bytes(data + tag)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "chest_xray")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=0, help="0 = one per core")
    parser.add_argument("--full-size", action="store_true", help="tiled full-size originals")
    parser.add_argument(
        "--originals", type=Path, default=REPO.parent / "shared" / "data" / "originals"
    )
    parser.add_argument("--copies", type=int, default=10, help="copies of each original")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    if args.full_size:
        with tempfile.TemporaryDirectory(prefix="pneumo-bench-") as tmp:
            args.data = full_size_set(args.originals, args.copies, Path(tmp) / "chest_xray")
            run(args)
    else:
        run(args)


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the worker pools)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(step, *args):  # -> (result, wall seconds, CPU seconds)
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = step(*args)
    return result, time.perf_counter() - wall, cpu_seconds() - cpu


def run(args: argparse.Namespace) -> None:
    """Wall time is what a user waits on this machine now; CPU time is the work itself, which
    also gives the speed-up on idle cores when other jobs share the machine."""
    (manifest, _, _), ingest_s, ingest_cpu = timed(build_manifest, args.data, args.workers)
    paths = [str(args.data / p) for p in manifest["path"]]
    images, preprocess_s, preprocess_cpu = timed(decode_many, paths, args.image_size, args.workers)
    naive, naive_s, naive_cpu = timed(naive_loop, [Path(p) for p in paths], args.image_size)
    cores = args.workers or os.cpu_count() or 1
    idle = naive_cpu / (ingest_cpu + preprocess_cpu) * cores  # speed-up with every core free

    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "x.npy", images)
        array_mb = (Path(tmp) / "x.npy").stat().st_size / 1e6

    n = len(paths)
    print(
        json.dumps(
            {
                "benchmark": "ingest+preprocess" + (" full-size" if args.full_size else ""),
                "images": n,
                "image_size": args.image_size,
                "cpu_count": os.cpu_count(),
                "machine": platform.machine(),
                "pneumo": {
                    "ingest_s": round(ingest_s, 3),
                    "preprocess_s": round(preprocess_s, 3),
                    "images_per_s": round(n / (ingest_s + preprocess_s), 1),
                    "ingest_cpu_s": round(ingest_cpu, 3),
                    "preprocess_cpu_s": round(preprocess_cpu, 3),
                },
                "naive_single_process_pil": {
                    "seconds": round(naive_s, 3),
                    "images_per_s": round(n / naive_s, 1),
                    "cpu_s": round(naive_cpu, 3),
                },
                "load_average_1min": round(os.getloadavg()[0], 2),
                "speedup": round(naive_s / (ingest_s + preprocess_s), 2),
                "speedup_preprocess_only": round(naive_s / preprocess_s, 2),
                "speedup_on_idle_cores": round(idle, 2),
                "speedup_preprocess_only_on_idle_cores": round(
                    naive_cpu / preprocess_cpu * cores, 2
                ),
                "mean_abs_pixel_difference_vs_naive": round(
                    float(np.abs(images.astype(int) - naive).mean()), 3
                ),
                "array_megabytes": round(array_mb, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
