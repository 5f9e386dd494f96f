"""Network definitions, the model file format, and params that cannot build a model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pneumo.errors import ConfigError
from pneumo.models import (
    ARCHITECTURES,
    ModelFileError,
    build_model,
    load_model,
    min_image_size,
    save_model,
)
from tests.model.realdata import fast_settings


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("size", [64, 128])
def test_every_architecture_gives_one_logit_per_image(arch: str, size: int) -> None:
    model = build_model(arch, size).eval()
    with torch.no_grad():
        logits = model(torch.randn(3, 1, size, size))
    assert logits.shape == (3,)
    assert torch.isfinite(logits).all()


def test_paper_family_uses_dropout_only_from_two_blocks() -> None:
    def has_dropout(arch: str) -> bool:
        return any(isinstance(m, torch.nn.Dropout) for m in build_model(arch, 64).modules())

    assert not has_dropout("paper_cnn1")
    assert all(has_dropout(f"paper_cnn{blocks}") for blocks in (2, 3, 4))


def test_unknown_architecture_names_the_key() -> None:
    with pytest.raises(ConfigError, match="model.arch"):
        build_model("vgg16", 128)


def test_image_too_small_for_depth_names_the_key() -> None:
    with pytest.raises(ConfigError, match="preprocess.image_size"):
        build_model("resnet", min_image_size("resnet") - 1)


def test_unknown_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="resnet"):
        build_model("resnet", 64, hidden_units=3)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"train.epochs": 0}, "train.epochs"),
        ({"model.arch": "alexnet"}, "model.arch"),
        ({"preprocess.image_size": 32}, "preprocess.image_size"),
        ({"train.optimizer": "adam"}, "train.optimizer"),
        ({"train.augment.rotation_degree": 5}, "rotation_degrees"),
        ({"train.warmup_epochs": 5, "train.epochs": 5}, "warmup_epochs"),
    ],
)
def test_params_that_cannot_train_fail_at_load(overrides: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        fast_settings(**overrides)


def test_shallow_paper_model_accepts_small_images() -> None:
    settings = fast_settings(**{"model.arch": "paper_cnn2", "preprocess.image_size": 32})
    assert settings.model.options()["hidden_units"] > 0


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("resnet", 64, widths=[8, 16], stem_width=8).eval()
    metadata = {"arch": "resnet", "image_size": 64, "options": {"widths": [8, 16], "stem_width": 8}}
    save_model(model, tmp_path / "model.pt", metadata)
    loaded, loaded_metadata = load_model(tmp_path / "model.pt")
    assert loaded_metadata == metadata
    assert not loaded.training
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_model_file_never_unpickles_code(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    # A whole pickled module (code) instead of tensors + JSON: must be refused, not executed.
    torch.save({"format_version": 1, "metadata": "{}", "state_dict": torch.nn.Linear(2, 1)}, path)
    with pytest.raises(ModelFileError, match="not a pneumo model file"):
        load_model(path)


def test_metadata_must_be_json_and_complete(tmp_path: Path) -> None:
    model = build_model("paper_cnn1", 32)
    with pytest.raises(ValueError, match="arch"):
        save_model(model, tmp_path / "m.pt", {"image_size": 32, "options": {}})
    with pytest.raises(TypeError, match="JSON"):
        save_model(model, tmp_path / "m.pt", {"arch": "x", "image_size": 32, "options": {1j: 2}})
    assert not (tmp_path / "m.pt").exists()


def test_missing_model_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="pneumo train"):
        load_model(tmp_path / "absent.pt")


def test_metadata_is_stored_as_json_text(tmp_path: Path) -> None:
    save_model(build_model("paper_cnn1", 32), tmp_path / "m.pt",
               {"arch": "paper_cnn1", "image_size": 32, "options": {}})  # fmt: skip
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    assert json.loads(payload["metadata"])["arch"] == "paper_cnn1"


def test_an_ensemble_trains_each_member_and_predicts_their_mean(tmp_path: Path) -> None:
    from pneumo.inference import forward_pass
    from pneumo.inference.gradcam import gradcam
    from pneumo.training.optimization import batch_loss

    options = {"widths": [8, 16], "stem_width": 8, "dropout": 0.0}
    ensemble = build_model("resnet", 64, members=3, **options)
    x = torch.randn(4, 1, 64, 64)
    ensemble.train()
    per_member = ensemble(x)
    assert per_member.shape == (4, 3)
    assert not torch.allclose(per_member[:, 0], per_member[:, 1])  # different initialisations
    loss = batch_loss(per_member, torch.tensor([0.0, 1, 0, 1]), torch.ones(4), 0.0)
    loss.backward()
    assert all(m.stem[0].weight.grad is not None for m in ensemble.members)
    ensemble.eval()
    members = torch.stack([member(x) for member in ensemble.members], dim=1)
    assert torch.allclose(ensemble(x), members.mean(dim=1), atol=1e-5)
    save_model(ensemble, tmp_path / "e.pt", {"arch": "resnet", "image_size": 64,
                                             "options": options, "members": 3})  # fmt: skip
    loaded, metadata = load_model(tmp_path / "e.pt")
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64)).astype(np.uint8)
    first, again = forward_pass(ensemble, images, features=True), forward_pass(loaded, images)
    assert np.allclose(first.probabilities, again.probabilities, atol=1e-6)
    single = build_model("resnet", 64, **options)
    single_features = forward_pass(single, images, features=True).features
    # The guard reads the first member's blocks (pneumo/models/features.py: guard_view).
    assert first.features.shape[1] == single_features.shape[1]
    member_features = forward_pass(ensemble.members[0], images, features=True).features
    assert np.allclose(first.features, member_features, atol=1e-5)
    assert gradcam(loaded, images).shape == (2, 64, 64)


def test_the_same_weights_are_the_same_bytes(tmp_path: Path) -> None:
    """A rerun that computes the same weights leaves the same file (DVC's hash and the
    registry's model_sha256 then still agree): no temporary name inside the archive."""
    from pneumo.models import build_model, save_model

    model = build_model("resnet", 64, widths=[8, 16, 32, 64], stem_width=8)
    metadata = {"arch": "resnet", "image_size": 64,
                "options": {"widths": [8, 16, 32, 64], "stem_width": 8}}  # fmt: skip
    save_model(model, tmp_path / "a.pt", metadata)
    save_model(model, tmp_path / "b.pt", metadata)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
