"""The scope check (pneumo/inference/scope.py): fitted with a real-like out-of-scope set, it names what an
image is, every source is measured held out, and it travels in the exported networks.

Stand-ins here (tests/model/scope_support.py); reports/scope.md has the real set's figures.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pneumo.config import Settings
from pneumo.data.preprocess import load_arrays
from pneumo.decision import Decision
from pneumo.evaluation.guard_stage import guard_stage
from pneumo.inference.guard import Guard
from pneumo.inference.predictor import Predictor
from pneumo.inference.scope import KIND_REASONS, load_scope_set
from pneumo.models import load_model
from pneumo.models.features import feature_segments
from pneumo.workspace import Workspace
from tests.model.scope_support import write_standin_set


@pytest.fixture(scope="module")
def scoped(
    briefly_trained: tuple[Workspace, Settings], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Workspace, Settings, dict, Path]:
    trained, settings = briefly_trained
    root = tmp_path_factory.mktemp("scoped")
    shutil.copytree(trained.root, root, dirs_exist_ok=True)
    workspace = Workspace(root)
    scope_root = write_standin_set(root / "scope", load_arrays(workspace.arrays("val"))["images"])
    report = guard_stage(settings, workspace, scope_root)
    Decision(0.5, "fixed", referral_margin=0.1).save(workspace.decision)  # no test split here
    return workspace, settings, report, scope_root


def test_every_source_is_measured_with_the_classifier_fitted_without_it(scoped) -> None:  # noqa: ANN001
    workspace, settings, report, _ = scoped
    assert report["detectors"] == ["global", "layout", "kinds"]
    assert report["val"]["flagged"] <= settings.guard.max_val_flag_rate + 1e-9
    sources = report["scope"]["sources"]
    assert set(sources) == {"standin_zoom_a", "standin_zoom_b", "standin_things"}
    for row in sources.values():
        assert {"flagged_one_class", "flagged_held_out", "flagged_or_called_normal",
                "called_pneumonia_unflagged", "licence", "n"} <= set(row)  # fmt: skip
        assert row["flagged_or_called_normal"] >= row["flagged_held_out"]
    assert sources["standin_things"]["flagged_held_out"] >= 0.9
    # the zoomed chests of one source are recognised from the other source's
    assert sources["standin_zoom_a"]["flagged_held_out"] >= 0.6
    assert json.loads(workspace.guard_metrics.read_text())["scope"]["n"] == 90
    text = (workspace.root / "reports" / "scope.md").read_text()
    assert "standin_things" in text and "made by the test" in text


def test_flagged_images_are_named_by_kind(scoped) -> None:  # noqa: ANN001
    workspace, _, _, scope_root = scoped
    guard = Guard.load(workspace.guard)
    assert guard.kind_names == ["in_scope", "adult_frontal", "other_body_part"]
    predictor = Predictor.from_workspace(workspace)
    scope = load_scope_set(scope_root, predictor.image_size)
    assessed = predictor.assess(scope.images)
    things = assessed.ood_reasons[-30:]
    named = [r == KIND_REASONS["other_body_part"] for r in things]
    assert np.mean(named) >= 0.8, things
    val = load_arrays(workspace.arrays("val"))["images"]
    assert np.mean(predictor.assess(val).out_of_distribution) <= 0.05


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_the_exported_network_carries_the_scope_check(scoped, runtime: str) -> None:  # noqa: ANN001
    """model.runtime exports compute the layout columns too: the same verdicts as torch."""
    workspace, _, _, scope_root = scoped
    torch_side = Predictor.from_workspace(workspace)
    exported = Predictor.from_workspace(workspace, runtime=runtime)
    model, metadata = load_model(workspace.model)
    size = int(metadata["image_size"])
    images = load_scope_set(scope_root, size).images
    segments = feature_segments(model, size)
    from pneumo.inference import forward_pass

    features = forward_pass(exported.network, images[:4], features=True).features
    assert features.shape[1] == max(end for _, end in segments.values())
    ours, theirs = torch_side.assess(images), exported.assess(images)
    assert np.mean(ours.out_of_distribution == theirs.out_of_distribution) >= 0.95
    assert sum(
        a == b for a, b in zip(ours.ood_reasons, theirs.ood_reasons, strict=True)
    ) >= 0.9 * len(images)


def test_without_a_set_the_check_is_one_class_and_says_so(
    briefly_trained: tuple[Workspace, Settings], tmp_path: Path
) -> None:
    trained, settings = briefly_trained
    shutil.copytree(trained.root, tmp_path, dirs_exist_ok=True)
    workspace = Workspace(tmp_path)
    report = guard_stage(settings, workspace, tmp_path / "no-such-folder")
    assert report["detectors"] == ["global", "layout"]
    assert report["scope"]["n"] == 0 and "one-class" in report["scope"]["note"]
    guard = Guard.load(workspace.guard)
    assert not guard.kinds and guard.layout
    assert not (tmp_path / "reports" / "scope.md").exists()


def test_a_pixel_prior_ships_the_kinds_without_the_images(scoped, tmp_path: Path) -> None:  # noqa: ANN001
    """`pneumo scope-fit` writes prior.json (coefficients, no pixels); a clone that has only it
    still flags and names the out-of-scope kinds."""
    from pneumo.inference.scope import PRIOR_FILE, fit_prior_file

    trained, settings, _, standins = scoped
    root = tmp_path / "with-set"
    shutil.copytree(trained.root, root, dirs_exist_ok=True)
    scope_root = root / "scope"  # the stand-in set, copied with the workspace
    workspace = Workspace(root)
    here = settings.model_copy(update={"data": settings.data.model_copy(
        update={"scope_root": scope_root})})  # fmt: skip
    fitted = fit_prior_file(here, workspace)
    prior = json.loads((scope_root / PRIOR_FILE).read_text())
    assert fitted["out_of_scope"] == 90 and prior["set"]["n"] == 90
    assert prior["names"] == ["in_scope", "adult_frontal", "other_body_part"]
    assert (scope_root / PRIOR_FILE).stat().st_size < 200_000  # coefficients, not images
    report = guard_stage(here, workspace, scope_root)
    assert report["detectors"] == ["global", "layout", "kinds", "prior"]
    for row in report["scope"]["sources"].values():  # the prior refitted without each source too
        assert {"flagged_without_set", "called_pneumonia_unflagged_without_set"} <= set(row)
    assert report["scope"]["sources"]["standin_things"]["flagged_without_set"] >= 0.9
    # A clone: the folder holds prior.json and nothing else.
    clone = tmp_path / "clone-scope"
    clone.mkdir()
    shutil.copyfile(scope_root / PRIOR_FILE, clone / PRIOR_FILE)
    report = guard_stage(here, workspace, clone)
    assert report["detectors"] == ["global", "layout", "prior"]
    assert report["val"]["flagged"] <= settings.guard.max_val_flag_rate + 1e-9
    guard = Guard.load(workspace.guard)
    assert guard.prior and not guard.kinds
    predictor = Predictor.from_workspace(workspace)
    things = predictor.assess(load_scope_set(standins, predictor.image_size).images[-30:])
    named = [r == KIND_REASONS["other_body_part"] for r in things.ood_reasons]
    assert np.mean(named) >= 0.8, things.ood_reasons


def test_the_committed_prior_reads_the_pixels_the_model_sees() -> None:
    """data/scope/prior.json (fitted on the real set) matches today's pixel features."""
    from pneumo.config import load_settings
    from pneumo.inference.scope import PRIOR_FILE, load_prior, pixel_features

    repo = Path(__file__).resolve().parents[2]
    settings = load_settings(repo / "params.yaml")
    size = settings.preprocess.image_size
    prior, names, fitted_on = load_prior(repo / settings.data.scope_root / PRIOR_FILE, size)
    assert names[0] == "in_scope" and {"adult_frontal", "lateral", "other_body_part"} <= set(names)
    assert prior["coef"].shape == (
        len(names),
        pixel_features(np.zeros((1, size, size), np.uint8)).shape[1],
    )
    assert fitted_on["n"] >= 500 and len(fitted_on["sources"]) >= 6


def test_pixel_histogram_counts_each_grey_level_where_the_float_pixels_put_it() -> None:
    """The grey histogram of the pixel prior (a table lookup and one count for the batch) puts
    every level where the model's float32 pixels x / 255 put it: bin floor(16 x), 1.0 in the
    last; counted per image."""
    from pneumo.inference.scope import PIXEL_BINS, PIXEL_GRID, pixel_features

    side = 8 * PIXEL_GRID
    every_level = np.resize(np.arange(256, dtype=np.uint8), (side, side))
    noise = np.random.default_rng(0).integers(0, 256, (3, side, side), dtype=np.uint8)
    images = np.concatenate([every_level[None], noise, np.full((1, side, side), 255, np.uint8)])
    grid = PIXEL_GRID * PIXEL_GRID
    histograms = pixel_features(images)[:, grid : grid + PIXEL_BINS]
    for image, histogram in zip(images, histograms, strict=True):
        x = image.astype(np.float32) / np.float32(255.0)
        bins = np.minimum(np.floor(x * PIXEL_BINS).astype(int), PIXEL_BINS - 1)
        expected = np.bincount(bins.ravel(), minlength=PIXEL_BINS) / image.size
        np.testing.assert_array_equal(histogram, expected.astype(np.float32))
    assert histograms[-1, -1] == 1.0  # white is in the last bin
