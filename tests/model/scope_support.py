"""Stand-ins for the real out-of-scope set (which CI does not have): the mechanics, not the figures.

``adult_frontal`` stand-ins are real radiographs cropped so the chest fills the frame (what an
adult film looks like to the layout detector); ``other_body_part`` ones are grey photographs of
other things. reports/scope.md carries the figures measured on the real set.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter


def zoomed(image: np.ndarray, rng: np.random.Generator) -> Image.Image:
    size = image.shape[0]
    crop = int(size * rng.uniform(0.45, 0.6))
    top = int(rng.uniform(0.1, 0.4) * (size - crop))
    left = (size - crop) // 2
    return Image.fromarray(image[top : top + crop, left : left + crop]).resize((256, 256))


def other_things(count: int, rng: np.random.Generator) -> list[Image.Image]:
    import skimage.data

    grey = [skimage.data.camera(), skimage.data.moon(), skimage.data.coins(), skimage.data.page(),
            skimage.data.text(), (skimage.data.brick()).astype(np.uint8)]  # fmt: skip
    out = []
    for index in range(count):
        base = Image.fromarray(grey[index % len(grey)]).convert("L").rotate(float(rng.uniform(-20, 20)))
        out.append(base.resize((256, 256)).filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 2)))))
    return out


def write_standin_set(root: Path, val_images: np.ndarray, per_source: int = 30) -> Path:
    """<root>/<kind>/<source>/*.png and manifest.csv, as data/scope/README.md describes."""
    rng = np.random.default_rng(7)
    picks = rng.choice(len(val_images), 2 * per_source, replace=len(val_images) < 2 * per_source)
    sources = {
        ("adult_frontal", "standin_zoom_a"): [zoomed(val_images[i], rng) for i in picks[:per_source]],
        ("adult_frontal", "standin_zoom_b"): [zoomed(val_images[i], rng).filter(ImageFilter.SHARPEN)
                                              for i in picks[per_source:]],  # fmt: skip
        ("other_body_part", "standin_things"): other_things(per_source, rng),
    }
    rows = []
    for (kind, source), images in sources.items():
        folder = root / kind / source
        folder.mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(images):
            image.save(folder / f"{index:03d}.png")
            rows.append({"path": f"{kind}/{source}/{index:03d}.png", "kind": kind,
                         "source": source, "licence": "made by the test"})  # fmt: skip
    with (root / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["path", "kind", "source", "licence"])
        writer.writeheader()
        writer.writerows(rows)
    return root
