"""Benchmark: training and inference speed of the configured model, all measured in one run.

Prints one JSON object with, for fp32 and bf16 autocast (bf16 only where the CPU has it natively):
- ``ceiling_*``: forward + backward + AdamW + EMA on cached standardised tensors (no augmentation),
  in the training's deterministic mode, as every step below;
- ``step_*_per_image`` / ``step_*_batched``: pneumo's real training step (uint8 arrays in memory,
  augmentation, standardisation, forward, backward, EMA) with the torchvision v2 per-image
  reference augmentation and with the batched tensor-op augmentation; ``*_of_ceiling`` is the
  share of the compute ceiling the real step reaches;
- ``inference_*``: predict_proba with and without test-time augmentation;
- ``recipe``: seconds per epoch and minutes for ``train.epochs`` of the configured recipe;
- ``imagefolder_images_per_s``: the same step fed by torchvision ImageFolder + DataLoader,
  re-decoding the JPEGs every epoch (what a first script does).
Usage: python bench/train.py [--images 512] [--image-size 128] [--threads 0] [--workers 0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from torchvision import datasets
from torchvision.transforms import v2

from pneumo.accel import Accelerator, available_cores, configure_threads, cpu_flags, native_bf16
from pneumo.config import Settings, load_settings
from pneumo.data.augment import BatchAugmentation, augment_batch, build_augmentation
from pneumo.data.preprocess import decode_many, load_arrays
from pneumo.data.transforms import standardize
from pneumo.inference import predict_proba, prepare
from pneumo.training.optimization import batch_loss, build_optimizer, update_ema
from pneumo.training.train import build_network, deterministic
from pneumo.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "chest_xray"
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def _subset(count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` train images: from data/arrays when the pipeline ran at this size, else decoded."""
    arrays_path = Workspace(REPO).arrays("train")
    rng = np.random.default_rng(seed)
    if arrays_path.is_file():
        arrays = load_arrays(arrays_path)
        if arrays["images"].shape[1] == size:
            index = rng.choice(len(arrays["labels"]), size=count, replace=False)
            return arrays["images"][index], arrays["labels"][index]
    files = sorted(SHARED.glob("train/*/*.jpeg"))
    picked = [files[i] for i in rng.choice(len(files), size=count, replace=False)]
    labels = np.array([int(p.parent.name == "PNEUMONIA") for p in picked])
    return decode_many([str(p) for p in picked], size, desc="bench decode"), labels


class Trainer:
    """A fresh model, EMA and optimiser; ``run`` times training steps over batches."""

    def __init__(self, settings: Settings, accel: Accelerator, seed: int) -> None:
        torch.manual_seed(seed)
        self.model = prepare(build_network(settings), accel)
        self.ema = prepare(build_network(settings), accel)
        self.optimizer = build_optimizer(self.model, settings.train)
        self.settings, self.accel = settings, accel

    def run(self, batches: Batches) -> float:
        """Images per second over ``batches`` of (float pixels in [0, 1], labels), in the
        training's deterministic mode (what `pneumo train` runs)."""
        cfg = self.settings.train
        self.model.train()
        seen, start = 0, time.perf_counter()
        with deterministic():
            for step, (pixels, labels) in enumerate(batches):
                with self.accel.autocast():
                    logits = self.model(standardize(pixels))
                loss = batch_loss(logits, labels.float(), torch.ones(len(labels)),
                                  cfg.label_smoothing)  # fmt: skip
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                update_ema(self.ema, self.model, cfg.ema_decay, step)
                seen += len(labels)
        return seen / (time.perf_counter() - start)


def _rate(call: Callable[[], object], images: int) -> float:
    start = time.perf_counter()
    call()
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--images", type=int, default=512, help="images per measurement")
    parser.add_argument("--image-size", type=int, default=None, help="default: params.yaml")
    parser.add_argument("--threads", type=int, default=None, help="default: params.yaml")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--skip-imagefolder", action="store_true", help="skip the slow baseline")
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
    images, labels = _subset(args.images, size, args.seed)
    pixels, targets = torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels)
    spans = [slice(i, i + batch_size) for i in range(0, len(labels), batch_size)]
    reference = build_augmentation(settings.train.augment)
    batched = BatchAugmentation(settings.train.augment)
    generator = torch.Generator().manual_seed(args.seed)
    engines = {
        "per_image": lambda x: augment_batch(x, reference),
        "batched": lambda x: batched(x, generator),
    }
    cached = [(pixels[s].float() / 255.0, targets[s]) for s in spans]
    result: dict[str, object] = {
        "arch": settings.model.arch, "image_size": size, "batch_size": batch_size,
        "images": len(labels), "threads": threads, "cores_available": available_cores(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_bf16": sorted(cpu_flags() & {"avx512_bf16", "amx_bf16", "amx_tile", "bf16"}),
    }  # fmt: skip
    precisions = ["fp32"] + (["bf16"] if native_bf16("cpu") else [])
    for precision in precisions:
        accel = Accelerator("cpu", precision)  # type: ignore[arg-type]
        trainer = Trainer(settings, accel, args.seed)
        trainer.run(cached[:2])  # warm-up: the first steps allocate and pick kernels
        ceiling = trainer.run(cached)
        result[f"ceiling_{precision}_images_per_s"] = round(ceiling, 1)
        for engine, augment in engines.items():
            rate = trainer.run((augment(pixels[s]), targets[s]) for s in spans)
            result[f"step_{precision}_{engine}_images_per_s"] = round(rate, 1)
            result[f"step_{precision}_{engine}_of_ceiling"] = round(rate / ceiling, 3)
        model = trainer.model.eval()
        for tta in (False, True):
            name = f"inference_{precision}" + ("_tta" if tta else "")
            rate = _rate(
                lambda m=model, t=tta, a=accel: predict_proba(m, images, 128, tta=t, accel=a),
                len(images),
            )
            result[f"{name}_images_per_s"] = round(rate, 1)
    result["augment_only_images_per_s"] = {
        engine: round(_rate(lambda a=augment: [a(pixels[s]) for s in spans], len(labels)), 1)
        for engine, augment in engines.items()
    }
    chosen = precisions[-1] if settings.train.precision == "auto" else settings.train.precision
    engine = settings.train.augment.engine
    rate = float(result[f"step_{chosen}_{engine}_images_per_s"])  # type: ignore[arg-type]
    arrays = Workspace(REPO).arrays("train")
    n_train = len(load_arrays(arrays)["labels"]) if arrays.is_file() else 3761
    result["recipe"] = {
        "precision": chosen, "augment_engine": engine, "epoch_images": n_train,
        "seconds_per_epoch": round(n_train / rate, 1), "epochs": settings.train.epochs,
        "minutes": round(n_train / rate * settings.train.epochs / 60, 1),
    }  # fmt: skip
    if not args.skip_imagefolder:
        result.update(_imagefolder(settings, reference, args))
    print(json.dumps(result, indent=2))


def _imagefolder(settings: Settings, reference: v2.Transform, args: argparse.Namespace) -> dict:
    """What a first script does: decode every JPEG with ImageFolder each epoch (fp32)."""
    size, batch_size = settings.preprocess.image_size, settings.train.batch_size
    transform = v2.Compose([v2.Grayscale(1), v2.Resize((size, size)), v2.PILToTensor(), reference])
    folder = datasets.ImageFolder(str(SHARED / "train"), transform=transform)
    index = np.random.default_rng(args.seed).choice(len(folder), size=args.images, replace=False)
    loader = DataLoader(Subset(folder, index.tolist()), batch_size=batch_size, shuffle=True,
                        num_workers=args.workers)  # fmt: skip
    trainer = Trainer(settings, Accelerator("cpu", "fp32"), args.seed)
    return {
        "imagefolder_images_per_s": round(trainer.run((x, y) for x, y in loader), 1),
        "imagefolder_workers": args.workers,
    }


if __name__ == "__main__":
    main()
