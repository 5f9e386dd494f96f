"""The CLI's contract: one-line errors, non-zero exit codes, nothing earlier replaced."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


# ------------------------------------------------------------------ the command table


def test_every_command_module_declares_the_command_it_is_named_after() -> None:
    from pneumo.cli import command_names, load_command

    names = command_names()
    assert {"ingest", "validate", "split", "preprocess", "train", "evaluate", "explain"} <= set(
        names
    )
    for name in names:
        command = load_command(name)
        assert command.name == name and command.help
        assert command.handler is not None or command.actions, name


def test_a_command_imports_only_its_own_module(tmp_path: Path) -> None:
    """What keeps dvc.yaml's per-stage deps short: `pneumo split` never loads `pneumo train`."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    script = (
        "import sys\nfrom pneumo.cli import main\n"
        "main(['params', 'show'])\n"
        "print(sorted(m for m in sys.modules if m.startswith('pneumo.cli.')), file=sys.stderr)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr.strip().splitlines()[-1] == "['pneumo.cli.params']"


def test_a_new_module_is_a_new_sub_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The docstring's recipe: one file with a COMMAND entry, including a one_of group."""
    import pneumo.cli

    (tmp_path / "frobnicate.py").write_text(
        "from pneumo.cli import Command, arg, one_of\n"
        "def run(args):\n"
        "    print(f'frobnicate {args.severity} alias={args.alias} version={args.version}')\n"
        "    return 0\n"
        "COMMAND = Command('frobnicate', help='shifted test split', handler=run, arguments=(\n"
        "    arg('--severity', type=int, default=3),\n"
        "    one_of(arg('--alias'), arg('--version', type=int)),\n"
        "))\n"
    )
    monkeypatch.setattr(pneumo.cli, "__path__", [*pneumo.cli.__path__, str(tmp_path)])
    monkeypatch.setitem(sys.modules, "pneumo.cli.frobnicate", None)  # restored (removed) afterwards
    del sys.modules["pneumo.cli.frobnicate"]
    assert "frobnicate" in pneumo.cli.command_names()
    assert pneumo.cli.main(["frobnicate", "--severity", "5", "--version", "2"]) == 0
    assert capsys.readouterr().out.strip() == "frobnicate 5 alias=None version=2"
    with pytest.raises(SystemExit):
        pneumo.cli.main(["frobnicate", "--alias", "champion", "--version", "2"])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pneumo.cli.main(["--help"])
    assert "frobnicate" in capsys.readouterr().out


def test_a_mistyped_command_gets_a_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    from pneumo.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["predcit", "x.jpeg"])
    assert stopped.value.code == 2
    assert "unknown command 'predcit'; did you mean predict?" in capsys.readouterr().err
