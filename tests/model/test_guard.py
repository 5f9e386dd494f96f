"""The input guard: the file screen, the feature detector, its calibration and where it travels."""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pneumo.config import Settings
from pneumo.data.preprocess import decode_radiograph, load_arrays
from pneumo.decision import Decision
from pneumo.errors import PipelineOrderError
from pneumo.evaluation.guard_probes import probe_kinds
from pneumo.evaluation.guard_stage import guard_stage
from pneumo.inference import forward_pass
from pneumo.inference.guard import Guard, Screening, screen_file
from pneumo.inference.predictor import Predictor, predict_paths
from pneumo.inference.scope import segment
from pneumo.models import load_model
from pneumo.workspace import Workspace


def test_screen_passes_real_radiographs_grey_or_rgb(originals_root: Path) -> None:
    files = sorted(originals_root.rglob("*.jpeg"))
    assert any(Image.open(f).mode == "RGB" for f in files)  # the release has RGB-stored ones
    assert [screen_file(f) for f in files] == [None] * len(files)


def test_screen_flags_colour_odd_aspect_and_uniform_images() -> None:
    import skimage.data

    photo = Image.fromarray(skimage.data.astronaut())
    assert "colour" in Screening.of(photo).reason(None)
    grey_as_rgb = Image.fromarray(skimage.data.camera()).convert("RGB")
    assert Screening.of(grey_as_rgb).reason(None) is None
    strip = Image.new("L", (1000, 200), 128)
    assert "aspect ratio of 5.0:1" in Screening.of(strip).reason(None)
    flat = np.full((64, 64), 100, np.uint8)
    assert "uniform" in Screening(64, 64, 0.0).reason(flat)


@pytest.fixture(scope="module")
def fitted(briefly_trained: tuple[Workspace, Settings]) -> tuple[Workspace, Settings, dict]:
    workspace, settings = briefly_trained
    report = guard_stage(settings, workspace)
    Decision(0.5, "fixed", referral_margin=0.1).save(workspace.decision)  # no test split here
    return workspace, settings, report


def test_guard_flags_at_most_the_configured_share_of_validation(
    fitted: tuple[Workspace, Settings, dict],
) -> None:
    workspace, settings, report = fitted
    assert report["val"]["flagged"] <= settings.guard.max_val_flag_rate + 1e-9
    assert workspace.guard.is_file() and workspace.guard_metrics.is_file()


def test_guard_flags_foreign_images_even_on_a_briefly_trained_network(
    fitted: tuple[Workspace, Settings, dict],
) -> None:
    _, _, report = fitted
    kinds = report["kinds"]
    assert set(kinds) == {"photographs", "documents", "noise", "inverted_radiographs",
                          "rotated_radiographs", "heavy_crops"}  # fmt: skip
    assert report["non_radiographs_flagged"] >= 0.95
    assert kinds["inverted_radiographs"]["flagged"] >= 0.9
    assert kinds["photographs"]["by_screen"] > 0.2  # the colour ones, before the network


def test_guard_file_is_weights_only_and_round_trips(
    fitted: tuple[Workspace, Settings, dict], tmp_path: Path
) -> None:
    workspace, _, _ = fitted
    loaded = Guard.load(workspace.guard)
    model, _ = load_model(workspace.model)
    images = load_arrays(workspace.arrays("val"))["images"][:16]
    features = forward_pass(model, images, features=True).features
    assert np.allclose(loaded.scores(features), Guard.load(workspace.guard).scores(features))
    evil = tmp_path / "guard.pt"
    with open(evil, "wb") as handle:  # a pickle that would run code: refused, never executed
        pickle.dump({"format_version": 1, "cutoff": Path("/")}, handle)
    with pytest.raises(PipelineOrderError, match="not a guard file"):
        Guard.load(evil)
    with pytest.raises(PipelineOrderError, match="pneumo guard"):
        Guard.load(tmp_path / "missing.pt")
    # A guard of the previous format (no pixel prior), as registered versions carry: still read.
    payload = torch.load(workspace.guard, weights_only=True)
    payload = {k: v for k, v in payload.items() if k not in ("prior", "prior_names")}
    older = tmp_path / "older.pt"
    torch.save({**payload, "format_version": 2}, older)
    assert not Guard.load(older).prior
    assert np.allclose(Guard.load(older).scores(features), loaded.scores(features))


def test_the_global_score_is_pytorch_oods_and_scoring_does_not_import_it(
    fitted: tuple[Workspace, Settings, dict],
) -> None:
    """The guard scores with pytorch-ood's Mahalanobis formula, on the centres and precision it
    fitted, without importing it (torchvision and torch._dynamo: ~3 s per serving process)."""
    from pytorch_ood.detector import Mahalanobis

    workspace, _, _ = fitted
    guard = Guard.load(workspace.guard)
    model, _ = load_model(workspace.model)
    images = load_arrays(workspace.arrays("val"))["images"][:32]
    means = segment(forward_pass(model, images, features=True).features, guard.segments, "means")
    means = np.concatenate([means, means * 3.0 + 1.0])  # and far outside the train split
    detector = Mahalanobis(None)
    detector.mu, detector.precision = guard.centres, guard.precision
    z = (torch.as_tensor(means, dtype=torch.float32) - guard.mean) / guard.scale
    expected = detector.predict_features(z).double().numpy()
    assert np.allclose(guard._global(means), expected, rtol=1e-6, atol=1e-6)
    assert expected[32:].min() > np.median(expected[:32])  # the comparison covers both ranges

    code = (
        "import sys, numpy as np\n"
        "from pneumo.inference.guard import Guard\n"
        f"guard = Guard.load({str(workspace.guard)!r})\n"
        "guard._global(np.zeros((2, len(guard.mean)), np.float32))\n"
        "assert 'pytorch_ood' not in sys.modules and 'torchvision' not in sys.modules\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]


def test_predictions_carry_the_guard_and_flagged_images_are_referred(
    fitted: tuple[Workspace, Settings, dict], tmp_path: Path, originals_root: Path
) -> None:
    workspace, _, _ = fitted
    predictor = Predictor.from_workspace(workspace)
    assert predictor.guard is not None
    folder = tmp_path / "incoming"
    folder.mkdir()
    for path in sorted(originals_root.rglob("*.jpeg"))[:4]:
        (folder / path.name).write_bytes(path.read_bytes())
    kinds = probe_kinds(load_arrays(workspace.arrays("val"))["images"], 3, seed=1)
    kinds["photographs"][0].save(folder / "photo.png")
    kinds["documents"][0].save(folder / "page.png")
    frame = predict_paths([folder], predictor, workers=1)
    names = frame["path"].map(lambda p: Path(p).name)
    foreign = frame[names.isin(["photo.png", "page.png"])]
    assert foreign["out_of_distribution"].all() and foreign["refer_to_radiologist"].all()
    assert foreign["ood_reason"].str.len().gt(10).all()
    real = frame[~names.isin(["photo.png", "page.png"])]
    assert not real["out_of_distribution"].any()
    assert real["ood_score"].notna().all()


def test_assessment_matches_plain_probabilities(fitted: tuple[Workspace, Settings, dict]) -> None:
    workspace, _, _ = fitted
    predictor = Predictor.from_workspace(workspace)
    images = load_arrays(workspace.arrays("val"))["images"][:32]
    assessed = predictor.assess(images)
    assert np.allclose(assessed.probabilities, predictor.probabilities(images))
    noise = np.random.default_rng(0).integers(0, 256, (4, *images.shape[1:])).astype(np.uint8)
    assert predictor.assess(noise).out_of_distribution.all()
    blank = np.stack([decode_radiograph(Image.new("L", (90, 90), 7), images.shape[1])])
    assert "uniform" in predictor.assess(blank).ood_reasons[0]


def test_a_guard_refuses_weights_it_was_not_fitted_on(
    fitted: tuple[Workspace, Settings, dict], tmp_path: Path
) -> None:
    """Retraining without rerunning `pneumo guard` must say so, not flag every image."""
    from pneumo.inference.guard import GuardMismatchError
    from pneumo.models import save_model
    from pneumo.workspace import sha256_file

    workspace, _, _ = fitted
    assert Guard.load(workspace.guard).weights_sha256 == sha256_file(workspace.model)
    model, metadata = load_model(workspace.model)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)  # "retrained": other weights
    other = tmp_path / "model.pt"
    save_model(model, other, metadata)
    with pytest.raises(GuardMismatchError, match="other weights.*`pneumo guard`"):
        Predictor.from_files(other, workspace.decision, guard_path=workspace.guard)
    # The model it was fitted on loads as before.
    assert Predictor.from_files(workspace.model, workspace.decision,
                                guard_path=workspace.guard).guard is not None  # fmt: skip


def test_packaging_refuses_a_guard_fitted_on_other_weights(
    fitted: tuple[Workspace, Settings, dict], tmp_path: Path
) -> None:
    """`pneumo package` after a retrain without `pneumo guard`: refused, naming the command."""
    from pneumo.inference.guard import GuardMismatchError
    from pneumo.models import save_model
    from pneumo.registry.bento import fetch_from_workspace

    workspace, _, _ = fitted
    copy = Workspace(tmp_path / "ws")
    shutil.copytree(workspace.root, copy.root)
    model, metadata = load_model(copy.model)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    save_model(model, copy.model, metadata)
    copy.eval_metrics.parent.mkdir(parents=True, exist_ok=True)
    copy.eval_metrics.write_text("{}")  # evaluated, as far as packaging asks
    (tmp_path / "staging").mkdir()
    with pytest.raises(GuardMismatchError, match="`pneumo guard`"):
        fetch_from_workspace(copy, tmp_path / "staging")


def test_the_service_warms_up_the_path_a_request_takes(
    fitted: tuple[Workspace, Settings, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading runs one blank image through the network with its features and through the
    scope check, so the first request does not pay their set-up (~1 s measured before)."""
    from pneumo.stored_model import DECISION_FILE, GUARD_FILE, MODEL_FILE
    from serving.model_host import load_predictor

    workspace, settings, _ = fitted
    files = {MODEL_FILE: workspace.model, DECISION_FILE: workspace.decision,
             GUARD_FILE: workspace.guard}  # fmt: skip

    class Stored:  # what load_predictor reads of a bentoml.Model
        tag = "pneumonia-model:test"

        def path_of(self, name: str) -> str:
            return str(files.get(name, Path("/nonexistent") / name))

    judged: list[int] = []
    judge = Guard.judge
    monkeypatch.setattr(Guard, "judge", lambda self, f: judged.append(len(f)) or judge(self, f))
    model = settings.model.model_copy(update={"precision": "fp32", "runtime": "openvino"})
    predictor = load_predictor(settings.model_copy(update={"model": model}), Stored(), 1)
    assert judged == [1] and predictor.guard is not None
