import re
import subprocess
import sys

import pytest

from jaxcifar.cli import COMMANDS, main


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    # The subcommand list: "  COMMAND", then one "    NAME  help..." line (wrapped help goes on
    # lines indented further) per command, up to the blank line before the options.
    listing = out.split("\n  COMMAND\n", 1)[1].split("\n\n", 1)[0]
    names = re.findall(r"^ {4}(\S+)", listing, flags=re.MULTILINE)
    assert names == list(COMMANDS) == [
        "train", "evaluate", "predict", "data", "scratch", "bench", "speedrun"
    ]


@pytest.mark.parametrize("name", COMMANDS)
def test_each_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    assert f"jaxcifar {name}" in capsys.readouterr().out


def test_console_entry_point_runs_as_module():
    result = subprocess.run(
        [sys.executable, "-m", "jaxcifar", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout.startswith("jaxcifar ")


def test_bad_flag_is_one_line_naming_flag_and_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "info", "--dataset", "imagenet"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("jaxcifar data info: error: argument --dataset: invalid choice: 'imagenet'")


@pytest.mark.parametrize("name", ["train", "scratch", "speedrun"])
def test_unwritable_out_fails_before_the_data_is_read(name, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    out, nowhere = tmp_path / "file" / "run", tmp_path / "nowhere"
    assert main([name, "--data-dir", str(nowhere), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"jaxcifar {name}: error: --out {out}: cannot write there (Not a directory)\n"
