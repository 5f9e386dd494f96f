"""What real users send: full-resolution radiographs of mixed sizes and colour modes."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pneumo.data.ingest import ingest
from pneumo.data.preprocess import decode_many, decode_radiograph
from pneumo.workspace import Workspace


@pytest.fixture()
def originals_as_dataset(originals_root: Path, tmp_path: Path) -> Path:
    """The 48 originals laid out as a Kermany train/ folder (symlinks, nothing copied)."""
    root = tmp_path / "chest_xray"
    for label in ("NORMAL", "PNEUMONIA"):
        (root / "train" / label).mkdir(parents=True)
        for f in (originals_root / label).iterdir():
            (root / "train" / label / f.name).symlink_to(f)
    return root


def test_ingest_full_size_mixed_modes(originals_as_dataset: Path, tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    result = ingest(originals_as_dataset, ws)
    manifest = pd.read_parquet(ws.manifest)
    assert result.images == 48 and result.quarantined == 0
    assert manifest["width"].nunique() > 10 and manifest["width"].max() > 1500
    assert (manifest["label"] == "NORMAL").sum() == 24


def test_decode_originals_at_model_size_matches_a_plain_resize(originals_root: Path) -> None:
    paths = sorted(str(p) for p in originals_root.rglob("*.jpeg"))
    images = decode_many(paths, 128, workers=2)
    assert images.shape == (48, 128, 128) and images.dtype == np.uint8
    assert images.std(axis=(1, 2)).min() > 10  # real content, not blank
    # Draft-mode decoding stays close to a full-resolution decode + resize.
    full = np.asarray(
        Image.open(paths[0]).convert("L").resize((128, 128), Image.Resampling.BILINEAR)
    )
    assert np.abs(full.astype(float) - decode_radiograph(paths[0], 128)).mean() < 4
