"""Tiny synthetic radiographs and a model trained on them in a second, for registry/serving tests.

Pneumonia is a bright central patch, so a paper_cnn1 learns it in 15 steps and passes the gate.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch

from pneumo.data.transforms import standardize
from pneumo.models import build_model
from pneumo.workspace import Workspace

SIZE = 32
OPTIONS = {"hidden_units": 8, "dropout": 0.0}


def synthetic_split(n: int, seed: int) -> tuple[np.ndarray, pd.DataFrame]:
    """(images, frame) shaped like a preprocessed split: alternating labels, one patient each."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    pixels = rng.normal(110.0, 25.0, (n, SIZE, SIZE))
    pixels[labels == 1, 10:22, 10:22] += 70.0  # a bright central "opacity"
    images = np.clip(pixels, 0, 255).astype(np.uint8)
    names = np.where(labels == 1, "PNEUMONIA", "NORMAL")
    frame = pd.DataFrame(
        {
            "label": names,
            "path": [f"test/{name}/img{i}.jpeg" for i, name in enumerate(names)],
            "patient_id": [f"p{i}" for i in range(n)],
            "subtype": np.where(labels == 1, "bacterial", "none"),
        }
    )
    return images, frame


def train_tiny_model(images: np.ndarray, labels: np.ndarray) -> torch.nn.Module:
    """A seeded paper_cnn1 at SIZE px after 15 full-batch Adam steps, in eval mode."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: extra threads only contend on a shared CPU
    model = build_model("paper_cnn1", SIZE, **OPTIONS)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = standardize(images), torch.as_tensor(labels, dtype=torch.float32)
    for _ in range(15):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    return model.eval()


def write_counterfactual(
    workspace: Workspace, model: torch.nn.Module, images: np.ndarray, labels: np.ndarray,
    threshold: float,
) -> dict:
    """Run the counterfactual battery for real on ``images`` and write it where the gate reads
    it (metrics/stress.json), as the stress stage would."""
    from PIL import Image

    from pneumo.data.preprocess import decode_radiograph
    from pneumo.evaluation.stress import counterfactual_report
    from pneumo.inference import predict_proba

    side = images.shape[1]
    working = np.stack([np.asarray(Image.fromarray(i).resize((2 * side, 2 * side))) for i in images])
    clean = np.stack([decode_radiograph(Image.fromarray(i), side) for i in working])
    report = counterfactual_report(lambda x: predict_proba(model, x), working, clean, labels,
                                   threshold, side)  # fmt: skip
    workspace.stress_metrics.parent.mkdir(parents=True, exist_ok=True)
    workspace.stress_metrics.write_text(json.dumps({"counterfactual": report}))
    return report
