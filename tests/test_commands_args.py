"""Flags shared by several commands (`jaxcifar.commands.arguments`): each bad value is refused
as one line naming the flag, before any data is read or any work done."""

import argparse
import os
import re

import pytest

from jaxcifar.cli import build_parser, main
from jaxcifar.commands import arguments
from jaxcifar.config import SEED_MAX
from jaxcifar.errors import ConfigError


def refused(argv, capsys) -> str:
    """The one-line error `argv` exits 2 with at parse time."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    return err


@pytest.mark.parametrize("command", [["train"], ["scratch"], ["speedrun"], ["data", "show"]])
@pytest.mark.parametrize("seed", [-1, SEED_MAX + 1, 99999999999])
def test_every_commands_seed_takes_trains_range(command, seed, tmp_path, capsys):
    # Before: NumPy's "expected non-negative integer" traceback, or a seed train refuses.
    argv = [*command, "--data-dir", str(tmp_path), "--out", str(tmp_path / "x.png")]
    err = refused([*argv, "--seed", str(seed)], capsys)
    assert err.startswith(
        f"jaxcifar {' '.join(command)}: error: argument --seed: expected an integer in "
        f"0..{SEED_MAX}, got {seed}"
    )


def test_seed_range_ends_are_accepted():
    assert [arguments.seed_int(text) for text in ("0", str(SEED_MAX))] == [0, SEED_MAX]


@pytest.mark.parametrize(
    "command",
    [["train"], ["scratch"], ["speedrun"], ["data", "info"], ["evaluate", "--checkpoint", "c"]],
)
def test_an_empty_data_dir_is_refused_not_read_as_the_current_folder(command, capsys):
    err = refused([*command, "--data-dir", ""], capsys)
    assert "error: argument --data-dir: expected a folder or archive path, got ''" in err


@pytest.mark.parametrize("command", [["evaluate"], ["predict", "image.png"]])
def test_an_empty_checkpoint_is_refused_not_read_as_the_current_folder(command, capsys):
    # It was searched, and called "checkpoint.msgpack: no checkpoint there".
    err = refused([*command, "--checkpoint="], capsys)
    assert "error: argument --checkpoint: expected a checkpoint file or folder, got ''" in err


def test_a_data_dir_from_the_variable_is_named_as_such_in_errors(monkeypatch, tmp_path, capsys):
    # `JAXCIFAR_DATA_DIR=/nonexist jaxcifar data info` said "data dir /nonexist does not
    # exist", to a user who had passed no path. The flag's default is None: `load` reads
    # the variable (an empty one counts as unset: the official release, not this folder).
    monkeypatch.setenv("JAXCIFAR_DATA_DIR", str(tmp_path / "gone"))
    assert build_parser().parse_args(["data", "info"]).data_dir is None
    assert main(["data", "info"]) == 2
    assert capsys.readouterr().err == (
        f"jaxcifar data info: error: $JAXCIFAR_DATA_DIR: data dir {tmp_path / 'gone'} does not "
        "exist\n"
    )
    assert main(["data", "info", "--data-dir", str(tmp_path / "gone")]) == 2
    assert capsys.readouterr().err == (
        f"jaxcifar data info: error: data dir {tmp_path / 'gone'} does not exist\n"
    )
    # Empty, it counts as unset: the official release, not the current folder.
    monkeypatch.setenv("JAXCIFAR_DATA_DIR", "")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("jaxcifar.data.download.fetch", lambda name, offline_help: pytest.fail(
        f"downloads {name}"))  # fmt: skip
    with pytest.raises(pytest.fail.Exception, match="downloads cifar10"):
        main(["data", "info"])


@pytest.mark.parametrize("command", ["train", "speedrun"])
def test_compile_cache_must_be_a_folder_or_none(command, tmp_path, capsys):
    err = refused([command, "--compile-cache", ""], capsys)
    assert "error: argument --compile-cache: expected a folder, or 'none' to turn the cache " in err
    assert "off; got ''" in err
    (tmp_path / "file").write_text("")
    err = refused([command, "--compile-cache", str(tmp_path / "file")], capsys)
    assert f"argument --compile-cache: {tmp_path / 'file'} is a file; expected a folder" in err
    err = refused([command, "--compile-cache", str(tmp_path / "file" / "xla")], capsys)
    assert (f"argument --compile-cache: {tmp_path / 'file' / 'xla'}: cannot write there (Not a "
            "directory); expected a folder that can be written, or 'none'") in err  # fmt: skip
    for value in ("none", str(tmp_path / "new"), str(tmp_path)):
        assert build_parser().parse_args([command, "--compile-cache", value]).compile_cache == value


@pytest.mark.parametrize("name", ["", ".hidden", "../../escape", "sub/name"])
def test_file_stem_refuses_paths_and_hidden_names(name):
    with pytest.raises(argparse.ArgumentTypeError, match="expected a plain file name stem"):
        arguments.file_stem(name)
    assert arguments.file_stem("cpu-2026-11-29.v2") == "cpu-2026-11-29.v2"


def test_file_stem_refuses_a_name_too_long_for_its_files():
    assert arguments.file_stem("é" * 125) == "é" * 125  # 250 bytes: NAME.json is 255
    with pytest.raises(argparse.ArgumentTypeError, match="at most 250 bytes, got one of 251"):
        arguments.file_stem("é" * 125 + "x")


def test_writable_file_checks_name_the_file_and_its_folder(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    for path, message in [
        (afile / "g.png", f"--out {afile / 'g.png'}: {afile} is a file, not a folder"),
        (afile / "sub" / "g.png", f"--out {afile / 'sub' / 'g.png'}: cannot write in "
                                  f"{afile / 'sub'} (Not a directory)"),
        (tmp_path, f"--out {tmp_path} is a folder; expected a file name"),
        # Found once the work was done: `data show` drew its grid, then failed with exit 1.
        (tmp_path / "new" / f"{'b' * 252}.png", f"--out {tmp_path / 'new' / ('b' * 252)}.png: "
                                                "cannot write there (File name too long)"),
    ]:  # fmt: skip
        with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
            arguments.check_writable_file(path)
    arguments.check_writable_file(tmp_path / "new" / "g.png")  # can be made: no error
    assert not (tmp_path / "new").exists()  # made by the write, not by the check


def test_evaluate_checks_out_before_evaluating(tmp_path, capsys):
    # Before: the whole evaluation ran, then "File exists". Here the checkpoint does not even
    # exist: --out is refused first.
    (tmp_path / "afile").write_text("")
    argv = ["evaluate", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "afile")]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"jaxcifar evaluate: error: --out {tmp_path / 'afile'} is a file; expected a folder "
        "(or a path to create one)\n"
    )


def _subparsers(parser):
    """Every (sub-)command parser under `parser`, by name."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {inner}", p) for inner, p in _subparsers(sub))


def test_help_strings_leave_defaults_to_the_formatter():
    # The parsers append "(default: ...)" themselves (ArgumentDefaultsHelpFormatter) unless the
    # default is SUPPRESS: a help string that states one too shows two.
    twice = []
    for name, sub in _subparsers(build_parser()):
        formatter = sub._get_formatter()
        for action in sub._actions:
            appended = formatter._get_help_string(action) != action.help
            if appended and re.search(r"\(default|defaults? to", action.help or ""):
                twice.append(f"{name} {'/'.join(action.option_strings)}: {action.help}")
    assert twice == []


def test_predict_help_names_the_formats_pillow_reads(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "image files Pillow reads: PNG, JPEG, GIF, WebP, BMP, TIFF" in out


@pytest.mark.parametrize("below", [False, True])
def test_an_out_through_a_symbolic_link_to_nothing_is_refused_before_the_work(tmp_path, below):
    # Making the folder failed after the work: "error: File exists: dang", exit 1.
    os.symlink(tmp_path / "nowhere", tmp_path / "dang")
    out = tmp_path / "dang" / "run" if below else tmp_path / "dang"
    with pytest.raises(ConfigError) as refused_out:
        arguments.check_writable_folder(out)
    assert str(refused_out.value) == (
        f"--out {out}: cannot write there (a symbolic link to {tmp_path / 'nowhere'}, which "
        "leads to nothing)"
    )
    os.mkdir(tmp_path / "nowhere")  # the link now leads to a folder: an --out like any
    arguments.check_writable_folder(out)


def test_a_file_out_linked_into_a_folder_that_does_not_exist_is_refused_before_the_work(
    tmp_path,
):
    # data show made the link's target's missing folders, wherever the link pointed.
    link, chain = tmp_path / "grid.png", tmp_path / "chain.png"
    link.symlink_to(tmp_path / "nowhere" / "grid.png")
    # Named by its final target, through a chain of links; a file where its folder should be.
    (tmp_path / "afile").write_text("")
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "hop.png").symlink_to(tmp_path / "afile" / "grid.png")
    chain.symlink_to(tmp_path / "real" / "hop.png")
    for out, target, reason in ((link, "nowhere", "No such file or directory"),
                                (chain, "afile", "Not a directory")):  # fmt: skip
        with pytest.raises(ConfigError) as refused:
            arguments.check_writable_file(out)
        assert str(refused.value) == (
            f"--out {out}: cannot write there (a symbolic link to {tmp_path / target}/grid.png: "
            f"{reason})"
        )
    (tmp_path / "nowhere").mkdir()  # its target is then a file still to make, as open makes
    arguments.check_writable_file(link)


@pytest.mark.parametrize(
    "command",
    [
        ["evaluate", "--checkpoint", "{tmp}/no-checkpoint", "--out", "{tmp}/new/reports"],
        ["data", "show", "--data-dir", "{tmp}/no-data", "--out", "{tmp}/new/deep/grid.png"],
        ["scratch", "--data-dir", "{tmp}/no-data", "--out", "{tmp}/new/scratch"],
    ],
)
def test_a_command_failing_on_another_input_leaves_no_empty_out_folder(command, tmp_path):
    # --out is checked before the work, in the folder it would be made in: not made early.
    assert main([part.format(tmp=tmp_path) for part in command]) == 2
    assert not (tmp_path / "new").exists()


def test_explicit_flags_override_the_recipe_or_the_saved_configuration():
    from jaxcifar.commands.train import config_from_args
    from jaxcifar.config import RECIPES, RunConfig

    def parsed(*flags):
        return build_parser().parse_args(["train", *flags])

    given = ("--lr", "0.02", "--momentum", "0.8", "--weight-decay", "0")
    fast = RECIPES["fast"]
    assert config_from_args(parsed("--recipe", "fast", *given)) == RunConfig(
        batch_size=fast.batch_size, optimizer=fast.optimizer, lr=0.02, momentum=0.8,
        weight_decay=0.0, schedule=fast.schedule,
    )  # fmt: skip
    assert config_from_args(parsed("--recipe", "fast")) == fast
    assert config_from_args(parsed()) == RECIPES["seed"]
    saved = RunConfig(optimizer="adam", lr=0.003, epochs=4)
    assert config_from_args(parsed(), saved) == saved  # a resume keeps what it saved
    assert config_from_args(parsed("--momentum", "0.5"), saved) == RunConfig(
        optimizer="adam", lr=0.003, epochs=4, momentum=0.5
    )
    assert config_from_args(parsed("--recipe", "seed"), saved) == RECIPES["seed"]


@pytest.mark.parametrize("flags, message", [
    (["--recipe", "fast", "--momentum", "0"],
     "--optimizer nesterov needs --momentum > 0; at 0 it is plain sgd"),
    (["--weight-decay", "1e39"], "--weight-decay must be >= 0 and at most float32's 3.4e+38; "),
    (["--lr", "1e-45"], "--lr must be positive and within float32's normal range, "),
])  # fmt: skip
def test_train_names_the_flags_of_a_configuration_it_refuses(flags, message, tmp_path, capsys):
    # RunConfig's own words ("weight_decay must be ...") named fields, not the flags given.
    assert main(["train", *flags, "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.startswith(f"jaxcifar train: error: {message}")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value, shown", [("1", "1.0"), ("-0.5", "-0.5"), ("nan", "nan"),
                                          ("x", "'x'")])  # fmt: skip
def test_momentum_is_a_number_in_0_to_1(value, shown, capsys):
    err = refused(["train", "--momentum", value], capsys)
    assert f"argument --momentum: expected a number in [0, 1), got {shown} (see" in err
    assert build_parser().parse_args(["train", "--momentum", "0"]).momentum == 0.0


def test_mlp_flags_are_refused_for_the_cnn(tmp_path, capsys):
    # Else ignored, yet kept in the configuration: a resume would later see them as a change.
    assert main(["train", "--mlp-hidden", "64", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == (
        "jaxcifar train: error: --mlp-hidden: for --model mlp; this run's model is cnn\n"
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_momentum_is_refused_for_the_adam_optimizers(optimizer, tmp_path, capsys):
    # Ignored without a word: --momentum 0.5 trained with Adam's b1 of 0.9.
    argv = ["train", "--optimizer", optimizer, "--momentum", "0.5", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        "jaxcifar train: error: --momentum: for --optimizer sgd or nesterov; this run's "
        f"optimizer, {optimizer}, uses optax's betas (0.9, 0.999)\n"
    )
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("value", ["inf", "nan"])
@pytest.mark.parametrize("command, flag", [("scratch", "--lr"), ("speedrun", "--epochs"),
                                           ("bench", "--seconds-per-case")])  # fmt: skip
def test_float_flags_refuse_infinity_and_nan(command, flag, value, capsys):
    # An infinite or NaN rate trains to NaN; an infinite time budget never ends.
    err = refused([command, flag, value], capsys)
    assert f"error: argument {flag}: expected a " in err and "finite number" in err
    assert f", got {value} (see" in err


def test_flags_that_may_be_zero_take_zero():
    args = build_parser().parse_args(["bench", "--warmup", "0", "--seconds-per-case", "0"])
    assert (args.warmup, args.seconds_per_case) == (0, 0.0)


@pytest.mark.parametrize("command, flag", [("train", "--epochs"), ("train", "--limit-test"),
                                           ("speedrun", "--limit-train"), ("scratch", "--hidden"),
                                           ("bench", "--batch-sizes")])  # fmt: skip
def test_integer_flags_stop_at_int32s_largest(command, flag, capsys):
    # 2**64 epochs passed, trained an epoch, then failed to save the checkpoint (msgpack).
    args = build_parser().parse_args([command, flag, str(2**31 - 1)])
    parsed = getattr(args, flag[2:].replace("-", "_"))
    assert parsed in (2**31 - 1, [2**31 - 1])  # --hidden and --batch-sizes take lists
    err = refused([command, flag, str(2**64)], capsys)
    assert f"error: argument {flag}: expected a positive integer up to 2,147,483,647, got " in err


@pytest.mark.parametrize("command", ["train", "scratch", "speedrun", "bench", "evaluate"])
def test_an_empty_out_is_refused_not_read_as_the_current_folder(command, capsys):
    # Path("") is ".": the run's files landed beside whatever the user had there.
    err = refused([command, "--out", ""], capsys)
    assert "error: argument --out: expected a folder; got ''" in err


def test_a_name_too_long_for_the_file_system_is_a_flag_error_before_any_work(tmp_path, capsys):
    # Found only when the folder was made: a traceback for --compile-cache (checked while
    # parsing), exit 1 naming no flag for --out.
    long = tmp_path / ("a" * 300)
    err = refused(["train", "--compile-cache", str(long)], capsys)
    assert err.startswith(f"jaxcifar train: error: argument --compile-cache: {long}: cannot "
                          "write there (File name too long); ")  # fmt: skip
    assert main(["scratch", "--out", str(long / "run")]) == 2
    assert capsys.readouterr().err == (
        f"jaxcifar scratch: error: --out {long / 'run'}: cannot write there (File name too long)\n"
    )


def test_the_variable_and_the_flag_come_before_a_checkpoints_recorded_data(tmp_path,
                                                                          monkeypatch):  # fmt: skip
    recorded = {"source": str(tmp_path)}  # exists
    monkeypatch.delenv("JAXCIFAR_DATA_DIR", raising=False)
    choice = arguments.data_dir_or_recorded
    assert choice(None, recorded) == (str(tmp_path), "recorded in the checkpoint", True)
    assert choice(None, recorded, "the speedrun model") == (
        str(tmp_path), "recorded in the speedrun model", True
    )  # fmt: skip
    assert choice("/given", recorded) == ("/given", "--data-dir", False)
    gone = {"source": str(tmp_path / "gone")}
    assert choice(None, gone) == (None, "the official release", False)
    assert choice(None, None) == (None, "the official release", False)
    monkeypatch.setenv("JAXCIFAR_DATA_DIR", "/from/the/variable")  # load reads it then
    assert choice(None, recorded) == (None, "$JAXCIFAR_DATA_DIR", False)
    assert choice("/given", recorded) == ("/given", "--data-dir", False)
