"""Standardisation, augmentation and the one inference function."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pneumo.config import AugmentSettings
from pneumo.data.augment import augment_batch, build_augmentation
from pneumo.data.transforms import standardize
from pneumo.inference import predict_proba
from pneumo.models import build_model


def _radiograph_like(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = 60 + 120 * np.exp(-((xx - 0.5) ** 2 + (yy - 0.5) ** 2) * 4)
    return np.clip(base + rng.normal(0, 15, (n, size, size)), 0, 255).astype(np.uint8)


def test_standardize_shapes_and_moments() -> None:
    images = _radiograph_like(4)
    for batch in (images, images[:, None]):
        x = standardize(batch)
        assert x.shape == (4, 1, 64, 64) and x.dtype == torch.float32
        assert torch.allclose(x.mean(dim=(1, 2, 3)), torch.zeros(4), atol=1e-4)
        assert torch.allclose(x.std(dim=(1, 2, 3)), torch.ones(4), atol=1e-3)


def test_standardize_removes_linear_exposure_differences() -> None:
    images = _radiograph_like(2)
    darker = (images.astype(np.float32) * 0.6 + 10).round().astype(np.uint8)
    assert (standardize(images) - standardize(darker)).abs().max() < 0.05


def test_standardize_uint8_and_unit_float_agree_and_blank_stays_finite() -> None:
    images = _radiograph_like(2)
    as_float = torch.from_numpy(images).float() / 255.0
    assert torch.allclose(standardize(images), standardize(as_float), atol=1e-5)
    assert torch.isfinite(standardize(np.zeros((1, 8, 8), np.uint8))).all()
    with pytest.raises(TypeError):
        standardize(np.zeros((1, 8, 8), np.int32))


def test_augmentation_keeps_shape_and_range_and_draws_per_image() -> None:
    augmentation = build_augmentation(AugmentSettings())
    same = torch.from_numpy(np.repeat(_radiograph_like(1), 8, axis=0)).unsqueeze(1)
    torch.manual_seed(0)
    out = augment_batch(same, augmentation)
    assert out.shape == same.shape and out.dtype == torch.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    # Eight copies of one image must come out as eight different images.
    assert len({tuple(o.flatten()[::97].tolist()) for o in out}) == 8


def test_augmentation_is_reproducible_under_a_seed() -> None:
    augmentation = build_augmentation(AugmentSettings())
    batch = torch.from_numpy(_radiograph_like(4)).unsqueeze(1)
    torch.manual_seed(3)
    first = augment_batch(batch, augmentation)
    torch.manual_seed(3)
    assert torch.equal(first, augment_batch(batch, augmentation))


def test_disabled_augmentation_only_rescales() -> None:
    batch = torch.from_numpy(_radiograph_like(2)).unsqueeze(1)
    out = augment_batch(batch, build_augmentation(AugmentSettings(enabled=False)))
    assert torch.allclose(out, batch.float() / 255.0)


@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("resnet", 64, widths=[8, 16], stem_width=8)


@pytest.mark.parametrize("tta", [False, True])
def test_predict_proba_gives_one_probability_per_image(
    tiny_model: torch.nn.Module, tta: bool
) -> None:
    images = _radiograph_like(5)
    probs = predict_proba(tiny_model, images, batch_size=2, tta=tta)
    assert probs.shape == (5,) and probs.dtype == np.float64
    assert ((probs >= 0) & (probs <= 1)).all()
    assert np.allclose(probs, predict_proba(tiny_model, images, batch_size=64, tta=tta), atol=1e-6)


def test_predict_proba_restores_training_mode(tiny_model: torch.nn.Module) -> None:
    tiny_model.train()
    predict_proba(tiny_model, _radiograph_like(2))
    assert tiny_model.training
    tiny_model.eval()


def test_predict_proba_rejects_wrong_input(tiny_model: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="image_size"):
        predict_proba(tiny_model, _radiograph_like(2, size=96))
    with pytest.raises(ValueError, match="uint8"):
        predict_proba(tiny_model, _radiograph_like(2).astype(np.float32))
    assert predict_proba(tiny_model, np.empty((0, 64, 64), np.uint8)).shape == (0,)
