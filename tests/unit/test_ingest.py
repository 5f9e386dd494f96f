from pathlib import Path

import pandas as pd
import pytest

from pneumo.data.ingest import MANIFEST_COLUMNS, ingest
from pneumo.errors import DatasetError
from pneumo.workspace import Workspace
from tests.conftest import write_image


def _plant_bad_files(root: Path) -> dict[str, str]:
    """Corrupt, truncated, non-image, misplaced and duplicate files, with the reason expected."""
    good = root / "train" / "NORMAL" / "IM-0001-0001.jpeg"
    (root / "train" / "NORMAL" / "IM-0900-0001.jpeg").write_bytes(
        b"\xff\xd8\xff\xe0 not really a jpeg"
    )
    truncated = good.read_bytes()[: len(good.read_bytes()) // 2]
    (root / "train" / "PNEUMONIA" / "person90_virus_1.jpeg").write_bytes(truncated)
    (root / "train" / "PNEUMONIA" / "notes.txt").write_text("radiologist notes")
    (root / "train" / "PNEUMONIA" / "empty.png").write_bytes(b"")
    write_image(root / "train" / "PNEUMONIAA" / "person91_bacteria_1.jpeg", seed=99)
    write_image(root / "train" / "stray.jpeg", seed=98)
    (root / "train" / "NORMAL" / "IM-0001-0009.jpeg").write_bytes(good.read_bytes())
    return {
        "train/NORMAL/IM-0900-0001.jpeg": "unreadable image",
        "train/PNEUMONIA/person90_virus_1.jpeg": "unreadable image",
        "train/PNEUMONIA/notes.txt": "not an image file type",
        "train/PNEUMONIA/empty.png": "unreadable image: empty file",
        "train/PNEUMONIAA/person91_bacteria_1.jpeg": "unknown class folder 'PNEUMONIAA'",
        "train/stray.jpeg": "file outside the class folders",
        "train/NORMAL/IM-0001-0009.jpeg": "exact duplicate of train/NORMAL/IM-0001-0001.jpeg",
    }


def test_manifest_rows_and_columns(synthetic_root: Path, tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    result = ingest(synthetic_root, ws, workers=2)
    manifest = pd.read_parquet(ws.manifest)
    assert result.images == len(manifest) == 16
    assert tuple(manifest.columns) == MANIFEST_COLUMNS
    row = manifest.set_index("path").loc["train/PNEUMONIA/person1_bacteria_2.jpeg"]
    assert (row.label, row.source_split, row.patient_id, row.subtype) == (
        "PNEUMONIA",
        "train",
        "person1",
        "bacterial",
    )
    assert (row.width, row.height, row["mode"]) == (80, 72, "L")
    assert len(row.sha256) == 64 and row.bytes > 0
    assert set(manifest["source_split"]) == {"train", "test"}
    assert pd.read_csv(ws.quarantine).empty


def test_bad_files_are_quarantined_with_reasons_never_crash(
    synthetic_root: Path, tmp_path: Path
) -> None:
    expected = _plant_bad_files(synthetic_root)
    ws = Workspace(tmp_path / "ws")
    result = ingest(synthetic_root, ws, max_quarantine_fraction=0.5, workers=2)
    quarantine = pd.read_csv(ws.quarantine).set_index("path")["reason"]
    assert set(quarantine.index) == set(expected)
    for path, reason in expected.items():
        assert reason in quarantine[path], (path, quarantine[path])
    assert result.images == 16
    assert not set(expected) & set(pd.read_parquet(ws.manifest)["path"])


def test_too_many_bad_files_fail_and_keep_the_last_good_output(
    synthetic_root: Path, tmp_path: Path
) -> None:
    ws = Workspace(tmp_path / "ws")
    ingest(synthetic_root, ws, workers=1)
    before = ws.manifest.read_bytes()
    _plant_bad_files(synthetic_root)
    with pytest.raises(
        DatasetError, match=r"6 of 23 files .*ingest\.max_quarantine_fraction=0\.01"
    ):
        ingest(synthetic_root, ws, max_quarantine_fraction=0.01, workers=1)
    assert ws.manifest.read_bytes() == before
    assert ws.rejected_quarantine.is_file()


def test_ingest_quarantines_the_damaged_jpegs_serving_refuses(
    synthetic_root: Path, originals_root: Path, tmp_path: Path
) -> None:
    from tests.serving.hostile_corpus import jpeg_damage

    original = sorted(originals_root.rglob("*.jpeg"))[2]
    damaged = {c.name: c for c in jpeg_damage("x", original.read_bytes(), seed=5)}
    planted = {}
    for k, name in enumerate(("x_scan_64_flips_0", "x_ff_run_1", "x_cut_with_end_marker")):
        rel = f"train/NORMAL/IM-09{k}0-0001.jpeg"
        (synthetic_root / rel).write_bytes(damaged[name].data)
        planted[rel] = name
    intact = "train/PNEUMONIA/person95_bacteria_1.jpeg"
    (synthetic_root / intact).write_bytes(original.read_bytes())
    ws = Workspace(tmp_path / "ws")
    ingest(synthetic_root, ws, max_quarantine_fraction=0.5, workers=2)
    quarantine = pd.read_csv(ws.quarantine).set_index("path")["reason"]
    assert set(quarantine.index) == set(planted)
    assert all("JPEG data is corrupt" in reason for reason in quarantine)
    assert intact in set(pd.read_parquet(ws.manifest)["path"])


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.mkdir(), "is empty"),
        (lambda root: (root / "images").mkdir(parents=True), "not a Kermany-layout folder"),
        (
            lambda root: (root / "chest_xray" / "train").mkdir(parents=True),
            r"did you mean .*chest_xray",
        ),
    ],
)
def test_unusable_dataset_folders(tmp_path: Path, setup, message: str) -> None:
    root = tmp_path / "dataset"
    setup(root)
    with pytest.raises(DatasetError, match=message):
        ingest(root, Workspace(tmp_path / "ws"))
