"""The Great Expectations contract on the real shared data, and on planted defects."""

from pathlib import Path

import pandas as pd
import pytest

from pneumo.config import ValidateSettings
from pneumo.data.ingest import ingest
from pneumo.data.validate import validate, validate_manifest
from pneumo.errors import ContractError
from pneumo.workspace import Workspace


@pytest.fixture(scope="module")
def real_manifest(real_root: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    ws = Workspace(tmp_path_factory.mktemp("real"))
    ingest(real_root, ws)
    return pd.read_parquet(ws.manifest)


def test_real_manifest_is_complete(real_manifest: pd.DataFrame, real_root: Path) -> None:
    files = sum(1 for p in real_root.rglob("*.jpeg"))
    # The release holds byte-identical copies of some images; ingest keeps one of each.
    assert len(real_manifest) == real_manifest["sha256"].nunique()
    assert files - 30 < len(real_manifest) <= files
    assert set(real_manifest["source_split"]) == {"train", "val"}
    assert (real_manifest[["width", "height"]] == 224).all().all()


def test_contract_passes_on_the_real_data(real_manifest: pd.DataFrame, tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    real_manifest.to_parquet(tmp_path / "manifest.parquet")
    outcome = validate(tmp_path / "manifest.parquet", ValidateSettings(), ws)
    assert outcome.success and outcome.failures == []
    assert (ws.data_docs / "index.html").is_file()
    assert '"success": true' in ws.validation.read_text()


def test_planted_duplicate_and_bad_label_fail_naming_the_expectations(
    real_manifest: pd.DataFrame, tmp_path: Path
) -> None:
    bad = real_manifest.copy()
    bad.loc[10, "sha256"] = bad.loc[20, "sha256"]
    bad.loc[30, "label"] = "PNEUMONIAA"
    outcome = validate_manifest(bad, ValidateSettings(), tmp_path / "docs")
    assert not outcome.success
    assert len(outcome.failures) == 2
    duplicate = next(
        f for f in outcome.failures if f.startswith("expect_column_values_to_be_unique(sha256)")
    )
    assert f"{bad.loc[10, 'path']} == {bad.loc[20, 'path']}" in duplicate or (
        f"{bad.loc[20, 'path']} == {bad.loc[10, 'path']}" in duplicate
    )
    label = next(
        f for f in outcome.failures if f.startswith("expect_column_values_to_be_in_set(label)")
    )
    assert "PNEUMONIAA" in label and bad.loc[30, "path"] in label


def test_bounds_from_params_fail_with_the_observed_value(
    real_manifest: pd.DataFrame, tmp_path: Path
) -> None:
    strict = ValidateSettings(max_rows=1000, min_pneumonia_fraction=0.8)
    with pytest.raises(ContractError) as info:
        real_manifest.to_parquet(tmp_path / "m.parquet")
        validate(tmp_path / "m.parquet", strict, Workspace(tmp_path))
    message = str(info.value)
    assert "expect_table_row_count_to_be_between: observed" in message
    assert "expect_column_mean_to_be_between(is_pneumonia): observed" in message


def test_missing_column_breaks_the_contract(real_manifest: pd.DataFrame, tmp_path: Path) -> None:
    outcome = validate_manifest(
        real_manifest.drop(columns=["sha256"]), ValidateSettings(), tmp_path
    )
    assert any(f.startswith("expect_table_columns_to_match_set") for f in outcome.failures)
