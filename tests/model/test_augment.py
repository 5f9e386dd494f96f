"""Batched augmentation: the reference's parameter ranges, reproducible draws, each op doing its job."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pneumo.config import AugmentSettings
from pneumo.data.augment import BatchAugmentation, augment_batch, build_augmentation
from pneumo.data.preprocess import decode_many

SIDE = 64


@pytest.fixture(scope="module")
def radiographs(real_root: Path) -> torch.Tensor:
    """64 real radiographs (both classes) at 64 px, as (N, 1, S, S) uint8."""
    files = [
        str(p)
        for label in ("NORMAL", "PNEUMONIA")
        for p in sorted((real_root / "train" / label).iterdir())[:32]
    ]
    return torch.from_numpy(decode_many(files, SIDE, workers=1)).unsqueeze(1)


def _statistics(batches: list[torch.Tensor]) -> dict[str, np.ndarray]:
    x = torch.cat(batches).squeeze(1).double()
    laplacian = (4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1]
                 - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]).abs()  # fmt: skip
    return {
        "mean": x.mean(dim=(1, 2)).numpy(),
        "std": x.std(dim=(1, 2)).numpy(),
        "dark": (x < 0.1).double().mean(dim=(1, 2)).numpy(),  # fill and dark anatomy
        "sharpness": laplacian.mean(dim=(1, 2)).numpy(),
    }


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov distance between the samples' empirical distributions."""
    grid = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def test_batched_augmentation_matches_the_reference_pixel_statistics(
    radiographs: torch.Tensor,
) -> None:
    """Same settings, many draws: the distributions of per-image statistics agree."""
    settings = AugmentSettings()
    reference, batched = build_augmentation(settings), BatchAugmentation(settings)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    rounds = 12
    ours = _statistics([batched(radiographs, generator) for _ in range(rounds)])
    theirs = _statistics([augment_batch(radiographs, reference) for _ in range(rounds)])
    plain = _statistics([radiographs.float() / 255.0])
    for name in ours:
        distance = _ks(ours[name], theirs[name])
        assert distance < 0.12, f"{name}: KS distance {distance:.3f} from the reference"
        assert np.median(ours[name]) == pytest.approx(np.median(theirs[name]), rel=0.1, abs=2e-3)
    # The augmentation really varies the images (not a no-op in either engine).
    assert _ks(ours["mean"], np.repeat(plain["mean"], rounds)) > 0.1


def test_draws_are_reproducible_and_independent_per_image(radiographs: torch.Tensor) -> None:
    augment = BatchAugmentation(AugmentSettings())
    first = augment(radiographs, torch.Generator().manual_seed(5))
    again = augment(radiographs, torch.Generator().manual_seed(5))
    other = augment(radiographs, torch.Generator().manual_seed(6))
    assert torch.equal(first, again) and not torch.equal(first, other)
    same = radiographs[:1].repeat(8, 1, 1, 1)
    out = augment(same, torch.Generator().manual_seed(0))
    assert len({tuple(o.flatten()[::97].tolist()) for o in out}) == 8
    assert out.dtype == torch.float32 and 0.0 <= out.min() and out.max() <= 1.0


def test_disabled_augmentation_only_rescales(radiographs: torch.Tensor) -> None:
    out = BatchAugmentation(AugmentSettings(enabled=False))(radiographs, torch.Generator())
    assert torch.equal(out, radiographs.float() / 255.0)


def _only(**enabled: float) -> AugmentSettings:
    """Every op off except the named ones."""
    off = dict(rotation_degrees=0.0, translate=0.0, scale_min=1.0, scale_max=1.0, gamma_min=1.0,
               gamma_max=1.0, brightness=0.0, contrast=0.0, equalize_p=0.0, blur_p=0.0,
               noise_p=0.0)  # fmt: skip
    return AugmentSettings(**{**off, **enabled})


def test_identity_settings_leave_pixels_unchanged(radiographs: torch.Tensor) -> None:
    out = BatchAugmentation(_only())(radiographs, torch.Generator().manual_seed(0))
    assert torch.allclose(out, radiographs.float() / 255.0, atol=1e-5)


def test_resampling_and_jpeg_remove_fine_detail(radiographs: torch.Tensor) -> None:
    plain = _statistics([radiographs.float() / 255.0])["sharpness"]
    for settings in (
        _only(resample_p=1.0, resample_scale_min=0.3),
        _only(jpeg_p=1.0, jpeg_quality_min=5, jpeg_quality_max=10),
    ):
        out = BatchAugmentation(settings)(radiographs, torch.Generator().manual_seed(0))
        degraded = _statistics([out])["sharpness"]
        changed = np.abs(degraded - plain) / plain
        assert np.median(changed) > 0.1, settings


def test_aspect_stretches_width_and_height_within_the_range() -> None:
    square = torch.zeros(64, 1, SIDE, SIDE, dtype=torch.uint8)
    square[:, :, 16:48, 16:48] = 255  # a centred 32 px square
    out = BatchAugmentation(_only(aspect_max=1.4))(square, torch.Generator().manual_seed(0))
    bright = out.squeeze(1) > 0.5
    widths = bright.any(dim=1).sum(dim=1).double()
    heights = bright.any(dim=2).sum(dim=1).double()
    ratios = (widths / heights).numpy()
    assert ratios.min() >= 1 / 1.4 - 0.1 and ratios.max() <= 1.4 + 0.1
    assert ratios.max() - ratios.min() > 0.4  # really drawn over the range, both ways


def test_borders_blacken_each_side_up_to_the_stated_width() -> None:
    bright = torch.full((64, 1, SIDE, SIDE), 200, dtype=torch.uint8)
    out = BatchAugmentation(_only(border_p=1.0, border_max=0.2))(bright, torch.Generator())
    dark = out.squeeze(1) == 0
    middle = SIDE // 2
    left = (~dark[:, middle, :]).int().argmax(dim=1)  # dark columns before the first bright one
    top = (~dark[:, :, middle]).int().argmax(dim=1)
    assert left.max() <= round(0.2 * SIDE) and top.max() <= round(0.2 * SIDE)
    assert len(set(left.tolist())) > 5  # drawn anew for every image
    assert dark[:, SIDE // 2, SIDE // 2].sum() == 0  # the centre stays
    assert dark.float().mean() > 0.05  # bars were drawn
