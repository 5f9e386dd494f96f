"""Benchmark: training and inference speed of the default model, all measured in one run.

Prints one JSON object with
- train_images_per_s / seconds_per_epoch: pneumo's real training step (in-memory uint8 arrays,
  per-image v2 augmentation, standardisation, forward, backward, EMA), and its projection to
  the full train split;
- compute_ceiling_images_per_s: forward + backward + step on cached standardised tensors;
- inference_images_per_s (and with TTA) through pneumo.inference.predict_proba;
- imagefolder_images_per_s: the same training step fed by torchvision ImageFolder + DataLoader,
  re-decoding the JPEGs every epoch (what a first script does).
Usage: python bench/train.py [--images 512] [--image-size 128] [--threads 0] [--workers 0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from torchvision import datasets
from torchvision.transforms import v2

from pneumo.config import load_settings
from pneumo.data.preprocess import decode_many, load_arrays
from pneumo.data.transforms import augment_batch, build_augmentation, standardize
from pneumo.inference import configure_threads, predict_proba
from pneumo.models import build_model
from pneumo.train import _batch_loss, _optimizer, _update_ema
from pneumo.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "chest_xray"


def _subset(images_dir: Path, count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` train images: from data/arrays when the pipeline ran, else decoded."""
    arrays_path = Workspace(REPO).arrays("train")
    rng = np.random.default_rng(seed)
    if arrays_path.is_file():
        arrays = load_arrays(arrays_path)
        if arrays["images"].shape[1] == size:
            index = rng.choice(len(arrays["labels"]), size=count, replace=False)
            return arrays["images"][index], arrays["labels"][index]
    files = sorted(images_dir.glob("train/*/*.jpeg"))
    picked = [files[i] for i in rng.choice(len(files), size=count, replace=False)]
    labels = np.array([int(p.parent.name == "PNEUMONIA") for p in picked])
    return decode_many([str(p) for p in picked], size, desc="bench decode"), labels


def _timed_steps(batches, model, optimizer, ema, settings) -> tuple[int, float]:  # noqa: ANN001
    """Run training steps on ``batches`` of (float pixels, labels); returns (images, seconds)."""
    cfg = settings.train
    model.train()
    seen, start = 0, time.perf_counter()
    for step, (pixels, labels) in enumerate(batches):
        targets = labels.float()
        loss = _batch_loss(model(pixels), targets, torch.ones(len(targets)), cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _update_ema(ema, model, cfg.ema_decay, step)
        seen += len(targets)
    return seen, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=SHARED, help="Kermany folder (ImageFolder)")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--images", type=int, default=512, help="images per measurement")
    parser.add_argument("--image-size", type=int, default=None, help="default: params.yaml")
    parser.add_argument("--threads", type=int, default=None, help="default: params.yaml")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")

    overrides: dict[str, object] = {}
    if args.image_size:
        overrides["preprocess.image_size"] = args.image_size
    if args.threads is not None:
        overrides["train.threads"] = args.threads
    settings = load_settings(args.params, overrides)
    size, batch_size = settings.preprocess.image_size, settings.train.batch_size
    threads = configure_threads(settings.train.threads)
    torch.manual_seed(args.seed)
    model = build_model(settings.model.arch, size, **settings.model.options())
    ema = build_model(settings.model.arch, size, **settings.model.options())
    optimizer = _optimizer(model, settings.train)
    augmentation = build_augmentation(settings.train.augment)
    images, labels = _subset(args.data, args.images, size, args.seed)
    pixels, targets = torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels)
    spans = [slice(i, i + batch_size) for i in range(0, len(labels), batch_size)]

    # Warm-up: the first steps allocate and pick kernels.
    _timed_steps([(standardize(pixels[:batch_size]), targets[:batch_size])] * 2, model, optimizer,
                 ema, settings)  # fmt: skip

    def pneumo_batches():  # noqa: ANN202
        for span in spans:
            yield standardize(augment_batch(pixels[span], augmentation)), targets[span]

    seen, pneumo_s = _timed_steps(pneumo_batches(), model, optimizer, ema, settings)
    cached = [(standardize(pixels[span]), targets[span]) for span in spans]
    _, ceiling_s = _timed_steps(cached, model, optimizer, ema, settings)

    start = time.perf_counter()
    predict_proba(model, images, batch_size=128)
    inference_s = time.perf_counter() - start
    start = time.perf_counter()
    predict_proba(model, images, batch_size=128, tta=True)
    inference_tta_s = time.perf_counter() - start

    folder_transform = v2.Compose(
        [v2.Grayscale(1), v2.Resize((size, size)), v2.PILToTensor(), augmentation]
    )
    folder = datasets.ImageFolder(str(args.data / "train"), transform=folder_transform)
    index = np.random.default_rng(args.seed).choice(len(folder), size=args.images, replace=False)
    loader = DataLoader(Subset(folder, index.tolist()), batch_size=batch_size, shuffle=True,
                        num_workers=args.workers)  # fmt: skip
    folder_batches = ((standardize(x), y) for x, y in loader)
    folder_seen, folder_s = _timed_steps(folder_batches, model, optimizer, ema, settings)

    train_arrays = Workspace(REPO).arrays("train")
    n_train = len(load_arrays(train_arrays)["labels"]) if train_arrays.is_file() else len(folder)
    rate = seen / pneumo_s
    print(
        json.dumps(
            {
                "arch": settings.model.arch,
                "image_size": size,
                "batch_size": batch_size,
                "images": seen,
                "threads": threads,
                "cpu": platform.processor() or platform.machine(),
                "cores_available": len(os.sched_getaffinity(0)),
                "train_images_per_s": round(rate, 1),
                "seconds_per_epoch": round(n_train / rate, 1),
                "epoch_images": n_train,
                "compute_ceiling_images_per_s": round(seen / ceiling_s, 1),
                "inference_images_per_s": round(len(images) / inference_s, 1),
                "inference_tta_images_per_s": round(len(images) / inference_tta_s, 1),
                "imagefolder_images_per_s": round(folder_seen / folder_s, 1),
                "imagefolder_workers": args.workers,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
