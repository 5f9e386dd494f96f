"""Grad-CAM and activation maps: correct shapes for every architecture, real localisation on a
blob-finding task, no hooks or mode changes left behind, and deterministic report figures."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pneumo.config import ModelSettings
from pneumo.data.preprocess import decode_radiograph
from pneumo.data.transforms import standardize
from pneumo.decision import Decision
from pneumo.evaluation.explain_stage import explain, select_examples
from pneumo.inference import predict_proba
from pneumo.inference.gradcam import (
    activation_maps,
    find_target_layer,
    gradcam,
    overlay,
    overlay_png,
)
from pneumo.models import ARCHITECTURES, build_model, conv_blocks

SIZE = 64
_YY, _XX = np.mgrid[0:SIZE, 0:SIZE]

HALF = Decision(0.5, "fixed")  # the operating point the examples are sorted by


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the tiny nets gain nothing from more, and a shared CPU stays usable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(arch: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(arch, SIZE, **ModelSettings(arch=arch).options())


def _noise(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = 40 * np.sin(_XX / 9.0 + seed) * np.cos(_YY / 13.0)
    return np.clip(110 + smooth + rng.normal(0, 25, (n, SIZE, SIZE)), 0, 255).astype(np.uint8)


def _bump(cy: float, cx: float, sigma: float) -> np.ndarray:
    return np.exp(-((_YY - cy) ** 2 + (_XX - cx) ** 2) / (2 * sigma**2))


def _blob_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positives: a small bright blob in a random quadrant; negatives: a broad faint bump.

    The bump carries the same energy as the blob, so both classes have the same pixel statistics
    after per-image standardisation: otherwise a network learns "the background got darker"
    instead of finding the blob, and Grad-CAM rightly shows the background.
    """
    labels, quadrants = rng.integers(0, 2, n), rng.integers(0, 4, n)
    images = np.empty((n, SIZE, SIZE), dtype=np.uint8)
    half = SIZE // 2
    for i in range(n):
        tilt_x, tilt_y = rng.uniform(-1.5, 1.5, 2)
        background = tilt_x * (_XX / SIZE - 0.5) + tilt_y * (_YY / SIZE - 0.5)
        background = background + rng.normal(0, 1, (SIZE, SIZE))
        background = (background - background.mean()) / background.std()
        row, column = divmod(int(quadrants[i]), 2)
        blob = 4 * _bump(row * half + rng.uniform(8, 24), column * half + rng.uniform(8, 24), 3)
        if not labels[i]:
            broad = _bump(*rng.uniform(0, SIZE, 2), 16.0)
            scale = np.sqrt(((blob - blob.mean()) ** 2).sum() / ((broad - broad.mean()) ** 2).sum())
            blob = scale * broad
        images[i] = np.clip(110 + 25 * (background + blob), 0, 255)
    return images, labels, quadrants


@pytest.fixture(scope="module")
def blob_model() -> torch.nn.Module:
    """A tiny residual net trained for 100 steps (about 2 s) to find the blob."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = build_model("resnet", SIZE, widths=(8, 16), stem_width=8, dropout=0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(100):
        images, labels, _ = _blob_images(32, rng)
        logits = model(standardize(images))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, torch.as_tensor(labels, dtype=torch.float32)
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def _hooks(model: torch.nn.Module) -> list[str]:
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return [
        f"{name or 'model'}.{kind}"
        for name, module in model.named_modules()
        for kind in kinds
        if getattr(module, kind)
    ]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_gradcam_has_image_shape_and_range_for_every_architecture(arch: str) -> None:
    model = _model(arch)
    images = _noise(3)
    maps = {target: gradcam(model, images, target=target) for target in ("pneumonia", "normal")}
    for heatmaps in maps.values():
        assert heatmaps.shape == images.shape
        assert heatmaps.dtype == np.float32
        assert np.isfinite(heatmaps).all()
        assert heatmaps.min() >= 0.0 and heatmaps.max() <= 1.0
    # An untrained net may see no evidence at all for one class (an all-zero map), never for both.
    for i in range(len(images)):
        assert max(np.ptp(maps["pneumonia"][i]), np.ptp(maps["normal"][i])) > 0.1, i


def test_gradcam_same_for_channels_last_and_contiguous_models() -> None:
    model = _model("paper_cnn2")
    images = _noise(2, seed=3)
    channels_last = gradcam(model, images, target="normal")
    contiguous = gradcam(model.to(memory_format=torch.contiguous_format), images, target="normal")
    np.testing.assert_allclose(channels_last, contiguous, atol=1e-4)


def test_gradcam_does_not_depend_on_batching() -> None:
    model = _model("resnet")
    images = _noise(5, seed=2)
    np.testing.assert_allclose(
        gradcam(model, images, target="normal", batch_size=2),
        gradcam(model, images, target="normal"),
        atol=1e-4,
    )


def test_target_layer_is_the_last_feature_map_before_pooling() -> None:
    assert find_target_layer(_model("paper_cnn3"), SIZE)[0] == "features"
    model = _model("resnet")
    assert find_target_layer(model, SIZE) == ("stages", model.stages)


def test_gradcam_localises_the_evidence(blob_model: torch.nn.Module) -> None:
    images, labels, quadrants = _blob_images(96, np.random.default_rng(123))
    accuracy = ((predict_proba(blob_model, images) >= 0.5) == labels).mean()
    assert accuracy >= 0.85, f"the tiny model did not learn the blob task ({accuracy:.2f})"
    positives = labels == 1
    heatmaps = gradcam(blob_model, images[positives])
    half = SIZE // 2
    mass = np.stack(
        [
            heatmaps[:, :half, :half].sum((1, 2)),
            heatmaps[:, :half, half:].sum((1, 2)),
            heatmaps[:, half:, :half].sum((1, 2)),
            heatmaps[:, half:, half:].sum((1, 2)),
        ],
        axis=1,
    )
    assert (np.ptp(heatmaps, axis=(1, 2)) > 0).all(), "a positive got a constant heatmap"
    hits = (mass.argmax(1) == quadrants[positives]).mean()
    assert hits >= 0.75, f"heatmap peaked in the blob's quadrant for only {hits:.0%} of positives"


def test_explaining_leaves_no_hooks_grads_or_mode_changes() -> None:
    model = _model("resnet")
    model.train()
    model.stem.eval()  # a frozen part must stay frozen
    running_mean = model.stem[1].running_mean.clone()
    images = _noise(2)

    gradcam(model, images)
    with torch.no_grad():
        gradcam(model, images, target="normal")  # callers inside no_grad still get gradients
    with torch.inference_mode():
        gradcam(model, images)
    activation_maps(model, images[0])

    assert _hooks(model) == []
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert model.training and all(m.training for m in model.stages.modules())
    assert not any(m.training for m in model.stem.modules())
    torch.testing.assert_close(model.stem[1].running_mean, running_mean)


def test_hooks_removed_when_the_layer_is_unusable() -> None:
    model = _model("paper_cnn2")
    with pytest.raises(ValueError, match="not a 4-D feature map"):
        gradcam(model, _noise(1), layer=model.classifier[1])
    assert _hooks(model) == []
    with pytest.raises(ValueError, match="not a submodule"):
        gradcam(model, _noise(1), layer=torch.nn.Conv2d(1, 1, 3))


def test_layer_override_uses_that_layer() -> None:
    model = _model("paper_cnn2")
    heatmaps = gradcam(model, _noise(2), target="normal", layer=model.features[0])
    assert heatmaps.shape == (2, SIZE, SIZE) and np.isfinite(heatmaps).all()
    assert not np.allclose(heatmaps, gradcam(model, _noise(2), target="normal"))


def test_gradcam_rejects_wrong_input() -> None:
    model = _model("paper_cnn1")
    with pytest.raises(ValueError, match="uint8"):
        gradcam(model, _noise(1).astype(np.float32))
    with pytest.raises(ValueError, match="64x64"):
        gradcam(model, np.zeros((1, 32, 32), dtype=np.uint8))
    with pytest.raises(ValueError, match="unknown target"):
        gradcam(model, _noise(1), target="viral")


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("paper_cnn3", [("features.0", (32, 32, 32)), ("features.1", (64, 16, 16)),
                        ("features.2", (128, 8, 8))]),
        ("resnet", [("stem", (24, 32, 32)), ("stages.0.0", (32, 16, 16)),
                    ("stages.1.0", (64, 8, 8)), ("stages.2.0", (128, 4, 4)),
                    ("stages.3.0", (256, 2, 2))]),
    ],
)  # fmt: skip
def test_activation_maps_one_per_conv_block(arch: str, expected: list) -> None:
    model = _model(arch)
    maps = activation_maps(model, _noise(1)[0])
    assert [(name, a.shape) for name, a in maps] == expected
    assert [name for name, _ in conv_blocks(model)] == [name for name, _ in expected]
    assert all(a.dtype == np.float32 and np.isfinite(a).all() for _, a in maps)
    assert _hooks(model) == []


def test_overlay_png_decodes_to_rgb_image() -> None:
    image = _noise(1)[0]
    heatmap = np.linspace(0, 1, SIZE * SIZE, dtype=np.float32).reshape(SIZE, SIZE)
    data = overlay_png(image, heatmap, alpha=0.4)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(data)) as decoded:
        pixels = np.asarray(decoded.convert("RGB"))
        assert decoded.format == "PNG"
    assert pixels.shape == (SIZE, SIZE, 3)
    np.testing.assert_array_equal(pixels, overlay(image, heatmap, 0.4))
    # alpha 0 is the radiograph itself, in grey.
    np.testing.assert_array_equal(overlay(image, heatmap, 0.0), np.repeat(image[..., None], 3, -1))
    with pytest.raises(ValueError, match="differs"):
        overlay(image, heatmap[:32])


def test_select_examples_is_seeded_and_skips_empty_groups() -> None:
    labels = np.array([1] * 10 + [0] * 10)
    probabilities = np.array([0.9] * 8 + [0.1] * 2 + [0.2] * 10)  # no false positives
    chosen = select_examples(labels, probabilities, HALF, n_per_group=4, seed=1)
    assert list(chosen) == ["TP", "TN", "FN"]
    assert [len(v) for v in chosen.values()] == [4, 4, 2]
    assert set(chosen["TP"]) <= set(range(8)) and set(chosen["FN"]) == {8, 9}
    again = select_examples(labels, probabilities, HALF, n_per_group=4, seed=1)
    assert all(np.array_equal(chosen[k], again[k]) for k in chosen)
    other = select_examples(labels, probabilities, HALF, n_per_group=4, seed=2)
    assert any(not np.array_equal(chosen[k], other[k]) for k in chosen)


def test_explain_writes_deterministic_figures(tmp_path: Path) -> None:
    model = build_model("resnet", SIZE, widths=(8, 16), stem_width=8)
    images = _noise(12, seed=5)
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0])
    probabilities = np.array([0.9, 0.8, 0.7, 0.95, 0.1, 0.2, 0.3, 0.05, 0.2, 0.4, 0.6, 0.9])
    paths = [f"data/PNEUMONIA/person{i}_bacteria_{i}.jpeg" for i in range(12)]

    written = {
        run: explain(model, images, labels, probabilities, HALF, paths, tmp_path / run, 2, seed=7)
        for run in ("a", "b")
    }
    assert set(written["a"]) == {"gradcam_grid", "activation_maps"}
    for key, path in written["a"].items():
        assert path == tmp_path / "a" / f"{key}.png"
        with Image.open(path) as figure:
            assert figure.format == "PNG" and min(figure.size) > 300
        assert path.read_bytes() == written["b"][key].read_bytes(), key
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "activation_maps.png",
        "gradcam_grid.png",
    ]  # no temporary files left behind
    assert _hooks(model) == []


def test_gradcam_on_real_radiographs(originals_root: Path) -> None:
    files = sorted((originals_root / "NORMAL").glob("*.jpeg"))[:4]
    files += sorted((originals_root / "PNEUMONIA").glob("*.jpeg"))[:4]
    assert len(files) == 8, f"expected 4 + 4 radiographs under {originals_root}"
    images = np.stack([decode_radiograph(path, SIZE) for path in files])
    for arch in ("resnet", "paper_cnn2"):
        model = _model(arch)
        maps = [gradcam(model, images, target=target) for target in ("pneumonia", "normal")]
        for heatmaps in maps:
            assert heatmaps.shape == images.shape and np.isfinite(heatmaps).all()
            assert heatmaps.min() >= 0.0 and heatmaps.max() <= 1.0
        # Untrained: evidence may point all one way, but some map must show where it lies.
        spread = np.maximum(*(np.ptp(heatmaps, axis=(1, 2)) for heatmaps in maps))
        assert (spread > 0.1).all(), spread
