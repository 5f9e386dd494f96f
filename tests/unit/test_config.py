import json
from pathlib import Path

import pytest
import yaml

from pneumo.config import load_settings
from pneumo.config.params_file import set_param
from pneumo.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_project_params_list_every_setting_and_load_to_exactly_their_values() -> None:
    """What dvc.yaml relies on: every key a stage declares is written out in params.yaml."""
    written = yaml.safe_load((REPO / "params.yaml").read_text())
    loaded = load_settings(REPO / "params.yaml").model_dump(mode="json", by_alias=True)
    assert loaded == json.loads(json.dumps(written, default=str))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_unknown_key_is_named_with_a_suggestion(tmp_path: Path) -> None:
    path = _write(tmp_path, "split:\n  val_fractoin: 0.2\n")
    with pytest.raises(
        ConfigError, match=r"unknown key 'split\.val_fractoin' \(did you mean 'val_fraction'"
    ):
        load_settings(path)


def test_unknown_section_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'preproces'"):
        load_settings(_write(tmp_path, "preproces:\n  image_size: 64\n"))


def test_invalid_value_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"invalid value for 'preprocess\.image_size'"):
        load_settings(_write(tmp_path, "preprocess:\n  image_size: 1024\n"))


def test_inverted_bounds_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="min_rows must not exceed max_rows"):
        load_settings(_write(tmp_path, "validate:\n  min_rows: 10\n  max_rows: 5\n"))


def test_broken_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(_write(tmp_path, "split: [\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml")


def test_set_param_keeps_comments_and_refuses_typos(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "# top comment\ndata:\n  root: a  # where\npreprocess:\n  image_size: 64\n"
    )
    assert set_param(path, "data.root", "/x/chest_xray") is True
    assert set_param(path, "data.root", "/x/chest_xray") is False
    text = path.read_text()
    assert "# top comment" in text and "# where" in text and "/x/chest_xray" in text
    with pytest.raises(
        ConfigError, match=r"params\.yaml: invalid value for 'preprocess\.image_size'"
    ):
        set_param(path, "preprocess.image_size", "5")
    assert "image_size: 64" in path.read_text()  # the bad value never landed
