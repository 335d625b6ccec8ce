import gc
import importlib.util
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from jaxcifar.cli import COMMANDS, main
from data_files import write_idx_set


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
    assert err.startswith(
        "jaxcifar data info: error: argument --dataset: invalid choice: 'imagenet'"
    )


@pytest.mark.parametrize(
    "argv, prefix, extra",
    [
        (["train", "--bogus"], "jaxcifar train", "--bogus"),
        (["data", "info", "--bogus", "x"], "jaxcifar data info", "--bogus x"),
        (["evaluate", "--checkpoint", "run", "extra"], "jaxcifar evaluate", "extra"),
    ],
)
def test_an_unknown_flag_is_named_with_its_command(argv, prefix, extra, capsys):
    # argparse's own error came from the root parser: `jaxcifar: error: ...`, pointing at
    # `jaxcifar --help`, which lists no command's flags.
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"{prefix}: error: unrecognized arguments: {extra} (see `{prefix} --help`)\n"
    )


@pytest.mark.parametrize("name", ["train", "scratch", "speedrun"])
def test_unwritable_out_fails_before_the_data_is_read(name, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    out, nowhere = tmp_path / "file" / "run", tmp_path / "nowhere"
    assert main([name, "--data-dir", str(nowhere), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"jaxcifar {name}: error: --out {out}: cannot write there (Not a directory)\n"


def _interrupted_in_a_gc_callback(seconds_after: float):
    """A command whose Ctrl-C arrives while the garbage collector runs a callback, as JAX's
    `_xla_gc_callback` can receive it; then it runs on for `seconds_after`."""

    def run(args):
        def callback(phase, info):
            gc.callbacks.remove(callback)
            raise KeyboardInterrupt

        gc.callbacks.append(callback)
        gc.collect()
        time.sleep(seconds_after)  # where the resent SIGINT lands, if it has time to
        return 0

    return run


@pytest.mark.parametrize("seconds_after", [5, 0])
def test_ctrl_c_inside_a_garbage_collector_callback_still_interrupts(
    seconds_after, monkeypatch, capsys
):
    # Python drops an exception raised in a gc callback ("Exception ignored in ..."): without
    # sending it again, `evaluate` ran on to the end after Ctrl-C and exited 0. A command
    # that ends before the resend is due gets it as it ends, not its caller after `main`.
    run = _interrupted_in_a_gc_callback(seconds_after)
    monkeypatch.setattr("jaxcifar.commands.data.run", run)
    # Resent to the main thread: sent to the process, the kernel may hand it to the timer
    # thread, and a main thread blocked in a system call (the sleep) runs on to its end.
    sent, pthread_kill = [], signal.pthread_kill
    monkeypatch.setattr(signal, "pthread_kill",
                        lambda thread, signum: (sent.append((thread, signum)),
                                                pthread_kill(thread, signum)))  # fmt: skip
    status = main(["data", "info"])
    time.sleep(0.05)  # no stray SIGINT from a timer left running: it would raise here
    # (More than once where the resent signal lands in a gc callback again: JAX's, while a
    # large heap's collection outlasts the resend's 10 ms.)
    assert status == 130 and sent and set(sent) == {(threading.get_ident(), signal.SIGINT)}
    err = capsys.readouterr().err
    assert err == "jaxcifar data info: interrupted by SIGINT\n"
    assert "resend" not in repr(sys.unraisablehook)  # the hook is Python's (or pytest's) again


def test_running_out_of_memory_is_one_line(monkeypatch, capsys):
    def too_big(args):
        import numpy as np

        return np.zeros((2**22, 2**22))  # 128 TiB: NumPy raises its MemoryError before allocating

    monkeypatch.setattr("jaxcifar.commands.scratch.run", too_big)
    assert main(["scratch"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("jaxcifar scratch: error: out of memory (Unable to allocate ")
    assert err.endswith("; try a smaller batch, smaller layers or fewer images\n")
    assert err.count("\n") == 1


def test_running_out_of_device_memory_is_one_line(monkeypatch, capsys):
    import jax
    import jax.numpy as jnp

    def too_big(args):
        return jnp.zeros((2**40,), jnp.float32).block_until_ready()

    monkeypatch.setattr("jaxcifar.commands.scratch.run", too_big)
    try:
        code = main(["scratch"])
    except jax.errors.JaxRuntimeError as error:  # pragma: no cover - the failure's message
        raise AssertionError(f"traceback instead of one line: {error}") from None
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("jaxcifar scratch: error: out of memory (RESOURCE_EXHAUSTED")
    assert err.count("\n") == 1


def test_a_multi_line_device_out_of_memory_error_shows_its_first_line_only(monkeypatch, capsys):
    # XLA's RESOURCE_EXHAUSTED messages run on for lines (buffer assignment dumps).
    import jax

    def too_big(args):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory\nBufferAssignment...")

    monkeypatch.setattr("jaxcifar.commands.scratch.run", too_big)
    assert main(["scratch"]) == 1
    err = capsys.readouterr().err
    expected = "jaxcifar scratch: error: out of memory (RESOURCE_EXHAUSTED: Out of memory); "
    assert err.startswith(expected)
    assert err.count("\n") == 1


def test_an_os_error_about_two_paths_names_both(monkeypatch, capsys):
    def rename_failed(args):
        # (OSError's fourth argument is Windows' error code, the fifth the second path.)
        raise OSError(18, "Invalid cross-device link", "cache/run.partial", None, "runs/run")

    monkeypatch.setattr("jaxcifar.commands.data.run", rename_failed)
    assert main(["data", "info"]) == 1
    err = capsys.readouterr().err
    expected = "jaxcifar data info: error: Invalid cross-device link: cache/run.partial: runs/run"
    assert err == expected + "\n"


def test_the_cpu_clients_out_of_memory_error_is_one_line_too(monkeypatch, capsys):
    # XLA:CPU says "Out of memory allocating N bytes", without RESOURCE_EXHAUSTED.
    import jax

    def too_big(args):
        raise jax.errors.JaxRuntimeError(
            "INTERNAL: Error dispatching computation: Out of memory allocating 3136 bytes."
        )

    monkeypatch.setattr("jaxcifar.commands.scratch.run", too_big)
    assert main(["scratch"]) == 1
    assert capsys.readouterr().err == (
        "jaxcifar scratch: error: out of memory (INTERNAL: Error dispatching computation: Out of "
        "memory allocating 3136 bytes.); try a smaller batch, smaller layers or fewer images\n"
    )


def test_a_jax_platform_that_cannot_start_is_one_line(tmp_path):
    # JAX_PLATFORMS naming a platform JAX does not know: its RuntimeError was a traceback.
    write_idx_set(tmp_path / "mnist", n_train=8, n_test=4, shape=(4, 4))
    result = subprocess.run(
        [sys.executable, "-m", "jaxcifar", "train", "--dataset", "mnist", "--model", "mlp",
         "--data-dir", str(tmp_path / "mnist"), "--out", str(tmp_path / "run")],
        capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "nosuchplatform"},
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith(
        "jaxcifar train: error: JAX could not start JAX_PLATFORMS='nosuchplatform' (Unable to "
        "initialize backend 'nosuchplatform': "
    )
    assert result.stderr.endswith(
        "; run where that platform's device and JAX plugin are, or unset JAX_PLATFORMS\n"
    )
    assert result.stderr.count("\n") == 1 and not (tmp_path / "run").exists()


def test_a_backend_that_cannot_start_with_the_runs_other_processes_says_so(monkeypatch, capsys):
    # A process whose peers are missing or were started with other flags: JAX's backend
    # start-up times out, which once read as a platform that could not start.
    import types

    distributed = types.SimpleNamespace(is_initialized=lambda: True)
    monkeypatch.setitem(sys.modules, "jax.distributed", distributed)

    def no_peers(args):
        raise RuntimeError("Unable to initialize backend 'cpu': Getting local topologies "
                           "failed: GetKeyValue() timed out\nmore lines")  # fmt: skip

    monkeypatch.setattr("jaxcifar.commands.scratch.run", no_peers)
    assert main(["scratch"]) == 2
    assert capsys.readouterr().err == (
        "jaxcifar scratch: error: JAX could not start its backend with the run's other processes "
        "(Unable to initialize backend 'cpu': Getting local topologies failed: GetKeyValue() "
        "timed out); start every process, with the same flags, and check that each reaches the "
        "coordinator\n"
    )


def test_a_known_platform_without_its_plugin_is_one_line_too(monkeypatch, capsys):
    # JAX_PLATFORMS=cuda where no NVIDIA device is visible (JAX skips the platform): an
    # AssertionError inside JAX's backend setup (jax/_src/xla_bridge.py), raised here from
    # code of that file name.
    in_backend_setup = os.path.join("site-packages", "jax", "_src", "xla_bridge.py")

    def no_plugin(args):
        exec(compile("assert False", in_backend_setup, "exec"))

    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    monkeypatch.setattr("jaxcifar.commands.scratch.run", no_plugin)
    assert main(["scratch"]) == 2
    assert capsys.readouterr().err == (
        "jaxcifar scratch: error: JAX could not start JAX_PLATFORMS='cuda' (no device of it "
        "found); run where that platform's device and JAX plugin are, or unset JAX_PLATFORMS\n"
    )
    monkeypatch.delenv("JAX_PLATFORMS")  # a plugin that fails by itself: no advice to unset
    assert main(["scratch"]) == 2
    assert capsys.readouterr().err == (
        "jaxcifar scratch: error: JAX could not start a platform (no device of it found)\n"
    )

    def a_bug(args):
        assert False, "our own assertion"

    monkeypatch.setattr("jaxcifar.commands.scratch.run", a_bug)
    with pytest.raises(AssertionError, match="our own assertion"):
        main(["scratch"])  # any other assertion is a bug, and keeps its traceback


@pytest.mark.skipif(any(importlib.util.find_spec(f"jax_cuda{v}_plugin") for v in (12, 13)),
                    reason="JAX's CUDA plugin is installed: JAX_PLATFORMS=cuda may start")
def test_a_platform_without_its_plugin_is_one_line_where_the_first_jax_call_computes(
    tmp_path, capsys
):
    # predict's (and evaluate's) first JAX call draws a key: the AssertionError then came
    # from JAX's dispatch, not its backend setup, and was a traceback.
    from PIL import Image

    write_idx_set(tmp_path / "data", n_train=8, n_test=4, shape=(4, 4))
    assert main(["train", "--dataset", "mnist", "--model", "mlp", "--mlp-hidden", "4",
                 "--batch-size", "4", "--epochs", "1", "--data-dir", str(tmp_path / "data"),
                 "--compile-cache", "none", "--quiet", "--out", str(tmp_path / "run")]) == 0
    Image.new("L", (4, 4)).save(tmp_path / "digit.png")
    ran = subprocess.run(
        [sys.executable, "-m", "jaxcifar", "predict", "--checkpoint", str(tmp_path / "run"),
         str(tmp_path / "digit.png")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cuda"},
    )  # fmt: skip
    assert (ran.returncode, ran.stderr) == (2, (
        "jaxcifar predict: error: JAX could not start JAX_PLATFORMS='cuda' (no device of it "
        "found); run where that platform's device and JAX plugin are, or unset JAX_PLATFORMS\n"
    ))


class ExitedAtOnce(Exception):
    """Raised by the `exits` fixture's stand-in for os._exit, which never returns."""


@pytest.fixture
def exits(monkeypatch) -> list:
    """The statuses `cli.run_program` passes to os._exit, in order, each call raising
    ExitedAtOnce; a test may add its own events to the list."""
    from jaxcifar import cli

    calls = []

    def exit_now(status):
        calls.append(status)
        raise ExitedAtOnce(status)

    monkeypatch.setattr(cli.os, "_exit", exit_now)
    return calls


@pytest.mark.parametrize("code, exits_at_once", [(0, False), (2, False), (130, True), (143, True)])
def test_the_program_skips_pythons_shutdown_only_after_a_signal(
    monkeypatch, exits, code, exits_at_once
):
    # After a signal, XLA may still be compiling on its own threads: tearing the interpreter
    # down under them crashed the process (SIGSEGV) after its "interrupted" line.
    from jaxcifar import cli

    monkeypatch.setattr(cli, "main", lambda argv: code)
    with pytest.raises(ExitedAtOnce if exits_at_once else SystemExit) as exited:
        cli.run_program([])
    if exits_at_once:
        assert exits == [code]
    else:
        assert exited.value.code == code and exits == []


def test_a_reader_that_closes_stdout_early_stops_the_command_quietly(tmp_path):
    # `jaxcifar data info | head -1`: "error: Broken pipe", exit 1; or, with the output
    # buffered, a traceback in Python's shutdown. Now no word, and SIGPIPE's status.
    write_idx_set(tmp_path / "mnist", n_train=8, n_test=4, shape=(4, 4))
    command = [sys.executable, "-m", "jaxcifar", "data", "info", "--dataset", "mnist",
               "--data-dir", str(tmp_path / "mnist")]  # fmt: skip
    reader = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader.stdout.close()  # before the command prints: its start takes a tenth of a second
    assert reader.wait(timeout=60) == 141
    assert reader.stderr.read() == b""


def test_an_interrupted_run_exits_at_once_though_its_stdout_reader_has_gone(monkeypatch, exits):
    # `jaxcifar train | tee log` and Ctrl-C: tee dies of the same SIGINT, so the last flush
    # fails; the status stays the signal's, and Python's shutdown is still skipped.
    from jaxcifar import cli

    def broken_flush():
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "main", lambda argv: 130)
    monkeypatch.setattr(cli.sys.stdout, "flush", broken_flush)
    with pytest.raises(ExitedAtOnce):
        cli.run_program([])
    assert exits == [130]


def test_a_stdout_that_cannot_be_written_is_named_in_the_error(tmp_path):
    # `jaxcifar data info > /dev/full` (or onto a full disk) said only "error: No space left
    # on device", naming no file.
    write_idx_set(tmp_path / "mnist", n_train=8, n_test=4, shape=(4, 4))
    command = [sys.executable, "-m", "jaxcifar", "data", "info", "--dataset", "mnist",
               "--data-dir", str(tmp_path / "mnist")]  # fmt: skip
    with open("/dev/full", "w") as full:
        ran = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert ran.returncode == 1
    assert ran.stderr == "jaxcifar data info: error: No space left on device: <stdout>\n"


def test_a_closed_stdout_fails_the_first_write_naming_it(tmp_path):
    # `jaxcifar data info >&-`: Python holds a stdout closed at its start as None, and the
    # command ended with an AttributeError traceback after its work.
    write_idx_set(tmp_path / "mnist", n_train=8, n_test=4, shape=(4, 4))
    command = ("import os, sys; os.close(1); os.execv(sys.executable, [sys.executable, '-m', "
               f"'jaxcifar', 'data', 'info', '--dataset', 'mnist', '--data-dir', "
               f"{str(tmp_path / 'mnist')!r}])")  # fmt: skip
    ran = subprocess.run([sys.executable, "-c", command], stderr=subprocess.PIPE, text=True,
                         timeout=60)  # fmt: skip
    assert (ran.returncode, ran.stderr) == (
        1, "jaxcifar data info: error: Bad file descriptor: <stdout>\n"
    )


def test_main_runs_in_another_thread_than_the_main_one(tmp_path, capsys):
    # Only the main thread may set signal handlers: main called from another one failed with
    # "ValueError: signal only works in main thread" once every command handled SIGTERM.
    write_idx_set(tmp_path, n_train=8, n_test=4, shape=(4, 4))
    codes = []
    argv = ["data", "info", "--dataset", "mnist", "--data-dir", str(tmp_path)]
    worker = threading.Thread(target=lambda: codes.append(main(argv)))
    worker.start()
    worker.join(timeout=60)
    assert codes == [0]
    assert capsys.readouterr().out.splitlines()[-1].split() == ["total", "8", "4"]


def test_a_signal_the_process_was_started_to_ignore_stays_ignored(monkeypatch, capsys):
    # A script's background job starts with SIGINT ignored, so that a Ctrl-C meant for the
    # script spares it; `nohup` ignores SIGHUP. Handling every signal stopped such a job.
    def signalled(args):
        for signum in (signal.SIGINT, signal.SIGHUP):
            os.kill(os.getpid(), signum)
        time.sleep(0.2)  # where a handled signal would land
        print("done")

    monkeypatch.setattr("jaxcifar.commands.data.run", signalled)
    ignored = {signum: signal.signal(signum, signal.SIG_IGN)
               for signum in (signal.SIGINT, signal.SIGHUP)}  # fmt: skip
    try:
        assert main(["data", "info"]) == 0
    finally:
        for signum, handler in ignored.items():
            signal.signal(signum, handler)
    assert capsys.readouterr() == ("done\n", "")


def test_a_signal_dropped_in_a_finaliser_as_the_command_ends_still_stops_it():
    # Resent after the command, the SIGTERM found the default handler back and killed the
    # process without a word (exit -15): the handlers now outlast the resending.
    script = """if True:
        import os, signal
        from jaxcifar import cli
        import jaxcifar.commands.data as data

        class SignalledWhenCollected:
            def __del__(self):
                os.kill(os.getpid(), signal.SIGTERM)  # its exception is dropped in __del__

        def run(args):
            SignalledWhenCollected()
            return 0

        data.run = run
        cli.run_program(["data", "info"])
    """
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert (ran.returncode, ran.stderr) == (143, "jaxcifar data info: interrupted by SIGTERM\n")


def test_output_held_back_when_a_command_failed_is_named_if_stdout_cannot_take_it(
    monkeypatch, capsys
):
    # The last flush, after main: its error was a traceback.
    from jaxcifar import cli

    def full_disk():
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli, "main", lambda argv: 0)
    monkeypatch.setattr(cli.sys.stdout, "flush", full_disk)
    with pytest.raises(SystemExit) as exited:
        cli.run_program([])
    monkeypatch.undo()  # before capsys reads (and flushes) what was written
    assert exited.value.code == 1
    assert capsys.readouterr().err == "jaxcifar: error: No space left on device: <stdout>\n"


def test_a_broken_pipe_of_another_file_than_stdout_is_an_error_naming_it(monkeypatch, capsys):
    # Only stdout's reader going is quiet: any other broken pipe (a FIFO, a socket) is an I/O
    # error like the others, and stdout is left as it was.
    def fifo_reader_gone(args):
        raise BrokenPipeError(32, "Broken pipe", "/runs/x/fifo")

    monkeypatch.setattr("jaxcifar.commands.data.run", fifo_reader_gone)
    assert main(["data", "info"]) == 1
    assert capsys.readouterr().err == "jaxcifar data info: error: Broken pipe: /runs/x/fifo\n"


def test_a_process_of_a_multi_process_run_leaves_it_before_exiting_at_once(monkeypatch, exits):
    # JAX's exit handler tells the other processes; os._exit skips it, and without it they
    # aborted (the coordinator gone) or waited out a heartbeat timeout of 100 s.
    import types

    from jaxcifar import cli

    distributed = types.SimpleNamespace(
        is_initialized=lambda: True, shutdown=lambda: exits.append("shutdown")
    )
    monkeypatch.setitem(sys.modules, "jax.distributed", distributed)
    monkeypatch.setattr(cli, "main", lambda argv: 143)
    with pytest.raises(ExitedAtOnce):
        cli.run_program([])
    assert exits == ["shutdown", 143]


def test_a_multi_process_variable_set_for_another_command_than_train_is_warned_of(
    tmp_path, monkeypatch, capsys
):
    # Set for a whole cluster, it would have run one whole command on every host, unseen.
    write_idx_set(tmp_path, n_train=8, n_test=4, shape=(4, 4))
    monkeypatch.setenv("JAXCIFAR_COORDINATOR", "10.0.0.1:1234")
    monkeypatch.setenv("JAXCIFAR_PROCESS_ID", "1")
    assert main(["data", "info", "--dataset", "mnist", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().err == (
        "jaxcifar data info: warning: $JAXCIFAR_COORDINATOR, $JAXCIFAR_PROCESS_ID set, but "
        "jaxcifar data runs as one process: only jaxcifar train joins a multi-process run\n"
    )


def test_an_error_naming_a_path_with_a_newline_stays_one_line(tmp_path, capsys):
    # The path's newline split the error line, and predict's own per-image error lines.
    nowhere = tmp_path / "two\nlines"
    assert main(["train", "--data-dir", str(nowhere), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err == f"jaxcifar train: error: data dir {tmp_path}/two\\nlines does not exist\n"


def test_a_path_that_is_not_utf8_prints_escaped_where_stdout_is_strict_utf8(shared_data, tmp_path):
    # data info's source line (evaluate's score line too) failed with UnicodeEncodeError after
    # the work where stdout is strict UTF-8 (PYTHONIOENCODING=utf-8).
    link = tmp_path / os.fsdecode(b"fm\xe9")  # a lone surrogate in Python: \udce9
    link.symlink_to(shared_data / "fashion-mnist")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    result = subprocess.run(
        [sys.executable, "-m", "jaxcifar", "data", "info", "--dataset", "fashion_mnist",
         "--data-dir", os.fsencode(link)],
        env=env, capture_output=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"{tmp_path}/fm\\udce9".encode() in result.stdout
