import numpy as np
import pandas as pd
import pytest

from pneumo.data.split import check_patient_disjoint, make_split, split_metrics
from pneumo.errors import SplitError


def synthetic_manifest(
    n_patients: int = 400, with_test: bool = False, seed: int = 0
) -> pd.DataFrame:
    """Patients with 1-4 images each, about 3 pneumonia patients to 1 normal, like Kermany."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = "PNEUMONIA" if rng.random() < 0.74 else "NORMAL"
        source = "test" if with_test and p % 7 == 0 else "train"
        for k in range(int(rng.integers(1, 5))):
            rows.append(
                {
                    "path": f"{source}/{label}/p{p}_{k}.jpeg",
                    "label": label,
                    "source_split": source,
                    "patient_id": f"p{p}",
                    "subtype": "none",
                }
            )
    return pd.DataFrame(rows)


def test_no_patient_in_two_splits_and_every_image_kept() -> None:
    manifest = synthetic_manifest()
    frame, facts = make_split(manifest, 0.15, 0.15, seed=1)
    assert frame.groupby("patient_id")["split"].nunique().max() == 1
    assert len(frame) == len(manifest)
    assert facts["test_source"].startswith("carved")
    assert split_metrics(frame, facts)["patients_in_two_splits"] == 0


def test_stratified_within_tolerance_and_sized() -> None:
    manifest = synthetic_manifest(n_patients=1000)
    frame, _ = make_split(manifest, 0.15, 0.2, seed=3)
    share = (manifest["label"] == "PNEUMONIA").mean()
    for name, fraction in (("test", 0.2), ("val", 0.15 * 0.8)):
        part = frame[frame["split"] == name]
        assert abs((part["label"] == "PNEUMONIA").mean() - share) < 0.02
        assert abs(len(part) / len(frame) - fraction) < 0.02


def test_same_seed_same_split_other_seed_other_split() -> None:
    manifest = synthetic_manifest()
    a, _ = make_split(manifest, 0.15, 0.15, seed=7)
    b, _ = make_split(manifest, 0.15, 0.15, seed=7)
    c, _ = make_split(manifest, 0.15, 0.15, seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert not a["split"].equals(c["split"])


def test_frozen_test_folder_is_kept_whole_and_untouched() -> None:
    manifest = synthetic_manifest(with_test=True)
    frame, facts = make_split(manifest, 0.15, 0.15, seed=1)
    test = frame[frame["split"] == "test"]
    assert set(test["path"]) == set(manifest.loc[manifest["source_split"] == "test", "path"])
    assert (frame.loc[frame["source_split"] != "test", "split"] != "test").all()
    assert facts["test_source"].startswith("dataset test/")


def test_training_images_of_a_test_patient_are_excluded_not_leaked() -> None:
    manifest = synthetic_manifest(with_test=True)
    leak = (
        manifest[manifest["source_split"] == "test"]
        .iloc[[0]]
        .assign(source_split="train", path="train/leak.jpeg")
    )
    frame, facts = make_split(pd.concat([manifest, leak], ignore_index=True), 0.15, 0.15, seed=1)
    assert "train/leak.jpeg" not in set(frame["path"])
    assert facts["excluded_for_test_patients"] == 1


def test_val_folder_joins_the_pool() -> None:
    manifest = synthetic_manifest()
    manifest.loc[manifest.index[:10], "source_split"] = "val"
    frame, _ = make_split(manifest, 0.15, 0.15, seed=2)
    assert set(frame.loc[frame["source_split"] == "val", "split"]) <= {"train", "val", "test"}
    assert (frame["split"] == "val").sum() > 10


def test_leak_check_and_mixed_label_patients_raise() -> None:
    frame = pd.DataFrame({"patient_id": ["a", "a"], "split": ["train", "test"]})
    with pytest.raises(SplitError, match="two splits"):
        check_patient_disjoint(frame)
    manifest = synthetic_manifest(n_patients=20)
    manifest.loc[0, "label"] = "NORMAL" if manifest.loc[0, "label"] == "PNEUMONIA" else "PNEUMONIA"
    manifest.loc[1, "patient_id"] = manifest.loc[0, "patient_id"]
    manifest.loc[1, "label"] = "PNEUMONIA" if manifest.loc[0, "label"] == "NORMAL" else "NORMAL"
    with pytest.raises(SplitError, match="both labels"):
        make_split(manifest, 0.15, 0.15, seed=0)
