"""Inputs the guard must flag, made from what ships with the packages and from the validation split.

Each kind is a list of PIL images as a client would send them (colour and aspect kept): natural
photographs (scikit-image's sample images, cropped), documents and text renderings, noise,
and radiographs made unusable: inverted, rotated by 90 degrees, heavily cropped. The guard stage
reports the share of each kind it flags beside the share of the validation split.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PHOTOGRAPHS = (
    "astronaut", "brick", "camera", "cat", "cell", "chelsea", "clock", "coffee", "coins", "grass",
    "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "moon", "retina", "rocket",
    "colorwheel", "shepp_logan_phantom", "microaneurysms",
)  # fmt: skip
WORDS = (
    "patient report chest radiograph normal findings impression lungs clear heart size within "
    "limits no acute process signed date invoice total amount page section figure table"
).split()


def _as_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    values = array.astype(np.float64)
    return (255 * (values - values.min()) / (np.ptp(values) or 1.0)).astype(np.uint8)


def photographs(count: int, rng: np.random.Generator) -> list[Image.Image]:
    """Random crops of scikit-image's bundled sample photographs (colour and grey)."""
    import skimage.data

    sources = [Image.fromarray(_as_uint8(getattr(skimage.data, name)())) for name in PHOTOGRAPHS]
    out = []
    for index in range(count):
        image = sources[index % len(sources)]
        fraction = rng.uniform(0.5, 1.0)
        w, h = round(image.width * fraction), round(image.height * fraction)
        x, y = int(rng.integers(0, image.width - w + 1)), int(rng.integers(0, image.height - h + 1))
        out.append(image.crop((x, y, x + w, y + h)))
    return out


def documents(count: int, rng: np.random.Generator) -> list[Image.Image]:
    """Pages of dark text on light paper, at several font sizes and page shapes."""
    out = []
    for _ in range(count):
        width, height = int(rng.integers(300, 700)), int(rng.integers(300, 700))
        page = Image.new("L", (width, height), int(rng.integers(200, 256)))
        draw = ImageDraw.Draw(page)
        font = ImageFont.load_default(size=int(rng.integers(10, 28)))
        y = int(rng.integers(4, 20))
        while y < height - 10:
            line = " ".join(rng.choice(WORDS, int(rng.integers(3, 9))))
            draw.text((int(rng.integers(4, 30)), y), line, fill=int(rng.integers(0, 80)), font=font)
            y += int(font.size * rng.uniform(1.2, 2.0))
        out.append(page)
    return out


def noise(count: int, rng: np.random.Generator, side: int = 256) -> list[Image.Image]:
    """Uniform, Gaussian and smooth (upsampled) noise."""
    out = []
    for index in range(count):
        if index % 3 == 0:
            pixels = rng.integers(0, 256, (side, side)).astype(np.uint8)
        elif index % 3 == 1:
            pixels = np.clip(rng.normal(128, 40, (side, side)), 0, 255).astype(np.uint8)
        else:
            coarse = Image.fromarray(rng.integers(0, 256, (8, 8)).astype(np.uint8))
            pixels = np.asarray(coarse.resize((side, side), Image.Resampling.BICUBIC))
        out.append(Image.fromarray(pixels))
    return out


def inverted(radiographs: list[np.ndarray]) -> list[Image.Image]:
    """Negatives: bone dark, air bright (a film scanned the wrong way)."""
    return [Image.fromarray(255 - r) for r in radiographs]


def rotated(radiographs: list[np.ndarray]) -> list[Image.Image]:
    """Radiographs on their side."""
    return [Image.fromarray(np.rot90(r).copy()) for r in radiographs]


def heavy_crops(radiographs: list[np.ndarray], rng: np.random.Generator) -> list[Image.Image]:
    """25-40 % of the side of a radiograph, enlarged: a detail, not a chest."""
    out = []
    for r in radiographs:
        side = r.shape[0]
        crop = round(side * rng.uniform(0.25, 0.4))
        x, y = (int(v) for v in rng.integers(0, side - crop + 1, 2))
        out.append(Image.fromarray(r[y : y + crop, x : x + crop]))
    return out


def probe_kinds(radiographs: np.ndarray, count: int, seed: int) -> dict[str, list[Image.Image]]:
    """Every kind of probe, ``count`` each; radiograph-based ones from ``radiographs``."""
    rng = np.random.default_rng(seed)
    picked = [radiographs[i] for i in rng.choice(len(radiographs), min(count, len(radiographs)),
                                                 replace=False)]  # fmt: skip
    return {
        "photographs": photographs(count, rng),
        "documents": documents(count, rng),
        "noise": noise(count, rng),
        "inverted_radiographs": inverted(picked),
        "rotated_radiographs": rotated(picked),
        "heavy_crops": heavy_crops(picked, rng),
    }


NON_RADIOGRAPHS = ("photographs", "documents", "noise")
