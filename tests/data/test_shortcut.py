"""The shortcut meter on the real release (it must see Kermany's acquisition cue) and its controls:
a planted cue must be found, a set whose classes share one acquisition must not warn."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter

from pneumo.config import ValidateSettings
from pneumo.data.ingest import ingest
from pneumo.data.kermany import parse_patient_id
from pneumo.data.shortcut import CUES, acquisition_cues, measure, shortcut_meter
from pneumo.data.validate import validate
from pneumo.workspace import Workspace


def _real_manifest(real_root: Path, per_class: int) -> pd.DataFrame:
    rows = []
    for label in ("NORMAL", "PNEUMONIA"):
        for path in sorted((real_root / "train" / label).iterdir())[:per_class]:
            with Image.open(path) as img:
                width, height = img.size
            rows.append({"path": f"train/{label}/{path.name}", "label": label,
                         "patient_id": parse_patient_id(path.stem)[0],
                         "width": width, "height": height, "bytes": path.stat().st_size})  # fmt: skip
    return pd.DataFrame(rows)


def test_the_meter_sees_the_cue_of_the_real_release(real_root: Path) -> None:
    manifest = _real_manifest(real_root, 150)
    result = measure(manifest, real_root, warn_auc=0.75, per_class=150, workers=1)
    # Measured on the whole release: ~0.91 (file size per pixel, sharpness); a sample sees it too.
    assert result["roc_auc"] >= 0.8 and result["warning"]
    assert result["per_cue"]["bytes_per_pixel"] >= 0.8
    assert set(result["per_cue"]) == set(CUES)


def _write(folder: Path, index: int, pixels: np.ndarray, sharpen: bool) -> None:
    img = Image.fromarray(pixels)
    if sharpen:
        img = img.filter(ImageFilter.UnsharpMask(radius=2, percent=250, threshold=0))
    folder.mkdir(parents=True, exist_ok=True)
    img.save(folder / f"IM-{index:04d}-0001.jpeg", quality=90)


def _dataset(root: Path, real_root: Path, planted: bool) -> Path:
    """Real radiographs for both classes (the same pool); with ``planted``, NORMAL ones are
    unsharp-masked (a scanner cue), else both classes are made alike."""
    pool = sorted((real_root / "train" / "NORMAL").iterdir())[:120]
    for index, path in enumerate(pool):
        label = "NORMAL" if index % 2 == 0 else "PNEUMONIA"
        pixels = np.asarray(Image.open(path).convert("L"))
        _write(root / "train" / label, index, pixels, sharpen=planted and label == "NORMAL")
    return root


@pytest.mark.parametrize("planted", [True, False])
def test_a_planted_cue_warns_and_a_shared_acquisition_does_not(
    tmp_path: Path, real_root: Path, planted: bool
) -> None:
    data = _dataset(tmp_path / "data", real_root, planted)
    workspace = Workspace(tmp_path / "ws")
    ingest(data, workspace, workers=1)
    settings = ValidateSettings(min_rows=10, min_pneumonia_fraction=0.1, shortcut_sample=200)
    validate(workspace.manifest, settings, workspace, data)
    meter = json.loads(workspace.shortcut_metrics.read_text())
    assert meter == json.loads(workspace.validation.read_text())["shortcut"]
    if planted:
        assert meter["warning"] and meter["roc_auc"] >= 0.9
        assert meter["strongest_cue"] in ("edge_energy", "bytes_per_pixel", "noise")
    else:
        assert not meter["warning"] and meter["roc_auc"] < 0.75
    # In the Data Docs as a warning suite beside the contract, which passed either way.
    assert (workspace.data_docs / "validations" / "acquisition_shortcut").is_dir()
    assert json.loads(workspace.validation.read_text())["success"] is True


def test_too_few_images_are_reported_not_guessed() -> None:
    cues = pd.DataFrame({name: [1.0, 2.0] for name in CUES})
    cues["label"], cues["patient_id"] = ["NORMAL", "PNEUMONIA"], ["a", "b"]
    result = shortcut_meter(cues, 0.75)
    assert np.isnan(result["roc_auc"]) and not result["warning"] and "too few" in result["note"]


def test_cues_are_read_from_the_files(tmp_path: Path) -> None:
    rows = []
    for index, quality in enumerate((95, 20)):
        path = tmp_path / f"{index}.jpeg"
        buffer = io.BytesIO()
        Image.fromarray(np.full((64, 80), 100 + index, np.uint8)).save(buffer, "JPEG",
                                                                       quality=quality)
        path.write_bytes(buffer.getvalue())
        rows.append({"path": path.name, "label": ["NORMAL", "PNEUMONIA"][index],
                     "patient_id": str(index), "width": 80, "height": 64,
                     "bytes": path.stat().st_size})  # fmt: skip
    cues = acquisition_cues(pd.DataFrame(rows), tmp_path, per_class=5, workers=1)
    assert cues["jpeg_quantisation"].iloc[1] > cues["jpeg_quantisation"].iloc[0]  # quality 20
    assert cues["aspect"].tolist() == pytest.approx([1.25, 1.25])


def test_missing_data_docs_are_rebuilt_without_touching_the_results(
    tmp_path: Path, real_root: Path
) -> None:
    """A fresh clone: validate's results are committed, its Data Docs (git-ignored) are not."""
    import shutil

    from pneumo.data.validate import build_docs

    data = _dataset(tmp_path / "data", real_root, planted=True)
    workspace = Workspace(tmp_path / "ws")
    ingest(data, workspace, workers=1)
    settings = ValidateSettings(min_rows=10, min_pneumonia_fraction=0.1, shortcut_sample=200)
    validate(workspace.manifest, settings, workspace, data)
    results = workspace.validation.read_bytes(), workspace.shortcut_metrics.read_bytes()
    shutil.rmtree(workspace.data_docs)
    index = build_docs(workspace.manifest, settings, workspace)
    assert index.is_file()
    assert (workspace.data_docs / "validations" / "acquisition_shortcut").is_dir()
    assert (workspace.validation.read_bytes(), workspace.shortcut_metrics.read_bytes()) == results
