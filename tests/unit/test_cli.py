"""The CLI's contract: one-line errors, non-zero exit codes, nothing earlier replaced."""

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pneumo.cli", *args], cwd=cwd, capture_output=True, text=True
    )


def _workspace(tmp_path: Path, data_root: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy(REPO / "params.yaml", ws / "params.yaml")
    run = run_cli("params", "set", f"data.root={data_root}", cwd=ws)
    assert run.returncode == 0, run.stderr
    return ws


def test_help_explains_every_step() -> None:
    out = run_cli("--help", cwd=REPO).stdout
    for command in ("ingest", "validate", "split", "preprocess", "params"):
        assert command in out


def test_missing_dataset_is_one_line_with_a_hint(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, tmp_path / "nowhere")
    run = run_cli("ingest", cwd=ws)
    assert run.returncode == 1
    assert run.stderr.strip().count("\n") == 0
    assert "does not exist" in run.stderr and "DATA=" in run.stderr


def test_params_typo_is_one_line_naming_the_key(tmp_path: Path, synthetic_root: Path) -> None:
    ws = _workspace(tmp_path, synthetic_root)
    text = (ws / "params.yaml").read_text().replace("image_size:", "image_sise:")
    (ws / "params.yaml").write_text(text)
    run = run_cli("preprocess", cwd=ws)
    assert run.returncode == 1
    assert "unknown key 'preprocess.image_sise' (did you mean 'image_size'?)" in run.stderr
    assert run.stderr.strip().count("\n") == 0


def test_steps_out_of_order_say_what_to_run(tmp_path: Path, synthetic_root: Path) -> None:
    ws = _workspace(tmp_path, synthetic_root)
    run = run_cli("split", cwd=ws)
    assert run.returncode == 1 and "run `pneumo ingest` first" in run.stderr


def test_misspelt_class_folder_fails_without_replacing_the_manifest(
    tmp_path: Path, synthetic_root: Path
) -> None:
    ws = _workspace(tmp_path, synthetic_root)
    assert run_cli("ingest", cwd=ws).returncode == 0
    manifest = (ws / "data" / "manifest.parquet").read_bytes()
    (synthetic_root / "train" / "NORMAL").rename(synthetic_root / "train" / "NORMALL")
    run = run_cli("ingest", cwd=ws)
    assert run.returncode == 1
    assert "unknown class folder 'NORMALL'" in run.stderr
    assert (ws / "data" / "manifest.parquet").read_bytes() == manifest
