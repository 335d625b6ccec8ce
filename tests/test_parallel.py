"""Data parallelism: 8 virtual CPU devices train like 1, two processes train like one.

The device count of a JAX process is fixed when it first touches a backend, so the
multi-device runs happen in subprocesses (`WORKER`), started together by one module
fixture: one process with 8 virtual devices, and a two-process run of 2 devices each that
joins through `jax.distributed` on a localhost coordinator (CPU collectives: gloo).
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxcifar import parallel, train
from jaxcifar.commands import arguments
from jaxcifar.commands.train import add_arguments
from jaxcifar.config import RunConfig
from jaxcifar.data.dataset import Dataset
from jaxcifar.errors import ConfigError
from data_files import write_idx_set

# Runs in a subprocess: `python -c WORKER ROLE [PROCESS_ID]`; prints one JSON line of results.
WORKER = r"""
import json, os, sys
import numpy as np

role = sys.argv[1]
devices = 8 if role == "eight" else 2
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"

import argparse
import jax
from jaxcifar import checkpoint, epochs, parallel, train
from jaxcifar.commands import arguments
from jaxcifar.config import RunConfig
from jaxcifar.data.dataset import Dataset
from jaxcifar.errors import ConfigError

if role == "process":  # the coordinator and count come from flags, the id from its variable
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    arguments.add_distributed_arguments(parser)
    args = parser.parse_args(sys.argv[2:])
    assert arguments.initialize_from_args(args)


def tiny_dataset(n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n).astype(np.int32)
    base = np.array([40, 128, 215])[labels][:, None, None, None]
    images = (base + rng.integers(-30, 31, (n, 8, 8, 1))).astype(np.uint8)
    return Dataset(images, labels, ("dark", "mid", "light"), source="synthetic")


# Augmented (random crops and flips): the draws must not depend on how the batch is split.
# 10 steps of 16 per epoch; 37 test examples pad the last eval batch on any device count.
# The MLP, as the CNN triples the compile time of this file.
config = RunConfig(model="mlp", dataset="mnist", mlp_hidden=(16,), mlp_activation="relu",
                   batch_size=16, epochs=2, lr=0.05, augment=True)
train_set, test_set = tiny_dataset(160, 0), tiny_dataset(37, 1)


# One initial state for every run (fit replicates it onto each mesh): saves compiles.
state = train.init_state(config, train.build_setup(config, train_set))


def run(mesh, mode, **kwargs):
    result = train.fit(config, train_set, test_set, state=state, epoch_mode=mode, progress=False,
                       log=lambda line: None, mesh=mesh, **kwargs)
    return {
        "train_loss": [record["train_loss"] for record in result.history],
        "test_loss": result.test.loss,
        "predictions": result.test.predictions.tolist(),
        "params": jax.tree.map(lambda leaf: np.asarray(leaf).ravel().tolist(), result.state.params),
        "shardings": sorted({str(leaf.sharding.spec) for leaf in jax.tree.leaves(result.state)}),
        "mesh_size": mesh.size,
    }


out = {"devices": train.describe_devices()}
if role == "eight":
    out["one"] = run(parallel.data_mesh(jax.devices()[:1]), "loop")
    out["eight"] = run(parallel.data_mesh(), "loop")
    out["eight_chunk"] = run(parallel.data_mesh(), "chunk")
    try:
        epochs.EpochRunner(None, train_set, RunConfig(batch_size=12), "loop")
    except ConfigError as error:
        out["error"] = str(error)
    # The fused path takes one of the 8 devices by itself.
    fused = train.fit(RunConfig(dataset="mnist", epochs=1), tiny_dataset(40, 2), test_set,
                      epoch_mode="fused", progress=False, log=lambda line: None)
    out["fused_devices"] = sorted({len(leaf.devices()) for leaf in jax.tree.leaves(fused.state)})
    out["fused_described"] = train.describe_devices("fused")["device_count"]
    out["fused_loss_finite"] = bool(np.isfinite(fused.history[0]["train_loss"]))
else:
    from jaxcifar.fused.epoch import FusedRunner

    try:
        FusedRunner(RunConfig(dataset="mnist"), train_set)
    except ConfigError as error:
        out["fused_error"] = str(error)
    saves = []

    def on_epoch_end(state, history):
        saves.append(len(history))
        checkpoint.save(args.out, state, config, input_shape=(8, 8, 1),
                        class_names=train_set.class_names, history=history)

    out["auto_mode"] = epochs.pick_epoch_mode("auto", train_set)  # asks its own device
    out["two_processes"] = run(parallel.data_mesh(), "loop", on_epoch_end=on_epoch_end)
    out["saves"] = saves
    out["rows"] = [parallel.process_rows(parallel.data_mesh(), 16).start,
                   parallel.process_rows(parallel.data_mesh(), 16).stop]
print(json.dumps(out))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Results of the 8-device process and of both processes of the two-process run."""
    env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
    coordinator = f"localhost:{_free_port()}"
    folders = [tmp_path_factory.mktemp(f"process{i}") for i in range(2)]
    commands = {"eight": ([sys.executable, "-c", WORKER, "eight"], env)}
    for i, folder in enumerate(folders):
        argv = ["process", "--coordinator", coordinator, "--num-processes", "2",
                "--out", str(folder)]  # fmt: skip
        commands[i] = (
            [sys.executable, "-c", WORKER, *argv],
            {**env, "JAXCIFAR_PROCESS_ID": str(i)},
        )
    started = {}
    results = {}
    try:
        for name, (argv, env) in commands.items():
            started[name] = subprocess.Popen(
                argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        for name, process in started.items():
            stdout, stderr = process.communicate(timeout=300)
            assert process.returncode == 0, f"worker {name} failed:\n{stderr[-3000:]}"
            results[name] = json.loads(stdout.strip().splitlines()[-1])
    finally:
        # A worker that failed or timed out leaves the others running (its partner may wait
        # for it forever at the coordinator): kill and reap every one still running.
        for process in started.values():
            if process.poll() is None:
                process.kill()
            process.wait()
            for stream in (process.stdout, process.stderr):
                stream.close()
    results["folders"] = folders
    return results


def assert_same_run(got, want):
    """Same loss curve, test loss, predictions and parameters, up to float summation order."""
    np.testing.assert_allclose(got["train_loss"], want["train_loss"], rtol=1e-5)
    assert got["test_loss"] == pytest.approx(want["test_loss"], rel=1e-5)
    assert got["predictions"] == want["predictions"]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 got["params"], want["params"])  # fmt: skip


def test_eight_devices_train_like_one(runs):
    one, eight = runs["eight"]["one"], runs["eight"]["eight"]
    assert (one["mesh_size"], eight["mesh_size"]) == (1, 8)
    assert runs["eight"]["devices"] == {"platform": "cpu", "device_kind": "cpu", "device_count": 8,
                                        "process_count": 1}  # fmt: skip
    assert eight["shardings"] == ["P()"]  # state stays replicated
    assert one["train_loss"][1] < one["train_loss"][0]  # it trains: the curve means something
    assert len(eight["predictions"]) == 37  # every test example once, despite padding to 40
    assert_same_run(eight, one)
    assert_same_run(runs["eight"]["eight_chunk"], one)  # dataset on the devices, lax.scan


def test_batch_size_must_split_over_the_devices(runs):
    assert (
        runs["eight"]["error"]
        == "--batch-size 12 does not split evenly over 8 devices; use a multiple of 8"
    )
    with pytest.raises(ConfigError, match=r"^--batch-size 6 does not split evenly over 4 devices"):
        parallel.check_batch_size(6, 4)
    parallel.check_batch_size(8, 4)


def test_the_fused_path_takes_one_device_and_refuses_several_processes(runs):
    assert runs["eight"]["fused_devices"] == [1] and runs["eight"]["fused_loss_finite"]
    assert runs["eight"]["fused_described"] == 1  # what metrics.json records
    for process in (0, 1):
        assert runs[process]["fused_error"].startswith(
            "the fused path trains on one device in one process; this run has 1 device(s) "
            "in 2 process(es)"
        )


def test_two_processes_train_like_one(runs):
    first, second = runs[0], runs[1]
    assert first["devices"]["process_count"] == 2 and first["devices"]["device_count"] == 4
    assert (first["rows"], second["rows"]) == ([0, 8], [8, 16])  # each feeds its own half
    # Process 1 asked the memory of process 0's device: "MemoryStats is only supported for
    # addressable PjRt devices", a traceback at the start of every `train` without --epoch-mode.
    assert first["auto_mode"] == second["auto_mode"] == "chunk"
    assert_same_run(first["two_processes"], runs["eight"]["one"])
    assert second["two_processes"] == first["two_processes"]
    # Only process 0 checkpoints, and what it wrote is the whole replicated state.
    assert (first["saves"], second["saves"]) == ([1, 2], [])
    assert (runs["folders"][0] / "checkpoint.msgpack").is_file()
    assert not (runs["folders"][1] / "checkpoint.msgpack").exists()


def test_bfloat16_step_computes_in_bfloat16_but_keeps_float32_state_and_loss():
    config = RunConfig(model="mlp", dataset="mnist", mlp_hidden=(16,), batch_size=4,
                       dtype="bfloat16", optimizer="adam", lr=0.01)  # fmt: skip
    images = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 1), dtype=np.uint8)
    labels = np.arange(8, dtype=np.int32) % 3
    setup = train.build_setup(config, Dataset(images, labels, ("a", "b", "c"), source="synthetic"))
    state = train.init_state(config, setup)
    step = train.make_train_step(setup, dtype="bfloat16")
    args = (state, (images[:4], labels[:4]), jax.random.key(0))
    assert "bf16[4,16]" in str(jax.make_jaxpr(step)(*args))  # the hidden layer's activations
    new_state, out = step(*args)
    leaves = jax.tree.leaves((new_state.params, new_state.opt_state))
    assert {leaf.dtype for leaf in leaves if leaf.ndim} == {np.dtype(np.float32)}
    assert out["loss"].dtype == np.float32 and np.isfinite(float(out["loss"]))
    changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), state.params, new_state.params)
    assert all(jax.tree.leaves(changed))


def parse(argv):
    """`argv` parsed by `jaxcifar train`'s parser (flag defaults read the environment)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture
def no_distributed_variables(monkeypatch):
    """$JAXCIFAR_COORDINATOR, $JAXCIFAR_NUM_PROCESSES and $JAXCIFAR_PROCESS_ID unset."""
    for name in ("JAXCIFAR_COORDINATOR", "JAXCIFAR_NUM_PROCESSES", "JAXCIFAR_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)


def test_distributed_flags_and_variables_reach_jax(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *args: calls.append(args))
    args = parse(["--coordinator", "10.0.0.1:1234", "--num-processes", "4", "--process-id", "3"])
    assert arguments.initialize_from_args(args) is True
    for name, value in (("COORDINATOR", "host:99"), ("NUM_PROCESSES", "2"), ("PROCESS_ID", "1")):
        monkeypatch.setenv(f"JAXCIFAR_{name}", value)
    assert arguments.initialize_from_args(parse([])) is True
    assert calls == [("10.0.0.1:1234", 4, 3), ("host:99", 2, 1)]


@pytest.mark.usefixtures("no_distributed_variables")
def test_no_distributed_flags_and_no_cluster_stays_one_process(monkeypatch):
    for name in ("SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda *args: pytest.fail("initialized"))
    assert arguments.initialize_from_args(parse([])) is False


@pytest.mark.usefixtures("no_distributed_variables")
def test_cluster_detection_missing_from_jax_warns_and_stays_one_process(monkeypatch):
    monkeypatch.setitem(sys.modules, "jax._src.clusters", None)  # the import now fails
    monkeypatch.setattr(jax.distributed, "initialize", lambda *args: pytest.fail("initialized"))
    with pytest.warns(UserWarning, match="cluster detection is off: this JAX"):
        assert arguments.initialize_from_args(parse([])) is False


@pytest.mark.parametrize(
    "variable, text, message",
    [
        ("JAXCIFAR_NUM_PROCESSES", "0", "argument --num-processes: $JAXCIFAR_NUM_PROCESSES='0': "
         "expected a positive integer, got 0"),
        ("JAXCIFAR_PROCESS_ID", "x", "argument --process-id: $JAXCIFAR_PROCESS_ID='x': not an "
         "integer"),
    ],
)  # fmt: skip
def test_a_bad_variable_is_named_not_only_the_flag_it_stands_for(
    monkeypatch, capsys, variable, text, message
):
    monkeypatch.setenv(variable, text)
    with pytest.raises(SystemExit):
        parse([])
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"error: {message}")
    monkeypatch.delenv(variable)
    flag = "--" + variable.removeprefix("JAXCIFAR_").lower().replace("_", "-")
    with pytest.raises(SystemExit):
        parse([flag, text])  # typed: the flag alone, as argparse says it
    assert "$JAXCIFAR" not in capsys.readouterr().err


def test_a_bad_typed_flag_keeps_argparses_own_message(capsys, monkeypatch):
    # argparse names a failed type by its __name__: "invalid int value", as for any int flag.
    monkeypatch.delenv("JAXCIFAR_PROCESS_ID", raising=False)
    with pytest.raises(SystemExit):
        parse(["--process-id", "x"])
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.endswith("error: argument --process-id: invalid int value: 'x'")


@pytest.mark.usefixtures("no_distributed_variables")
def test_cluster_detection_finding_none_of_its_detectors_in_jax_warns(monkeypatch):
    # A JAX release that renames them must not leave every cluster undetected in silence.
    from jax._src.clusters import ClusterEnv

    others = [env for env in ClusterEnv._cluster_types
              if env.__name__ not in parallel.DETECTED_CLUSTERS]  # fmt: skip
    monkeypatch.setattr(ClusterEnv, "_cluster_types", others)
    monkeypatch.setattr(jax.distributed, "initialize", lambda *args: pytest.fail("initialized"))
    with pytest.warns(UserWarning, match="cluster detection is off: .* holds none of"):
        assert arguments.initialize_from_args(parse([])) is False


NEEDS_ALL = (
    "multi-process training needs --coordinator/$JAXCIFAR_COORDINATOR, "
    "--num-processes/$JAXCIFAR_NUM_PROCESSES and --process-id/$JAXCIFAR_PROCESS_ID together; "
)


@pytest.mark.parametrize(
    "argv, environment, message",
    [
        (["--coordinator", "h:1"], {},
         NEEDS_ALL + "missing --num-processes/$JAXCIFAR_NUM_PROCESSES, "
         "--process-id/$JAXCIFAR_PROCESS_ID"),
        # Only a variable set: the message names it, not just flags the user never typed.
        ([], {"JAXCIFAR_COORDINATOR": "h:1", "JAXCIFAR_PROCESS_ID": ""},
         NEEDS_ALL + "missing --num-processes/$JAXCIFAR_NUM_PROCESSES, "
         "--process-id/$JAXCIFAR_PROCESS_ID"),
        (["--coordinator", "h", "--num-processes", "2", "--process-id", "0"], {},
         "--coordinator/$JAXCIFAR_COORDINATOR must be HOST:PORT, PORT in 1..65535; got 'h'"),
        (["--coordinator", ":", "--num-processes", "1", "--process-id", "0"], {},
         "--coordinator/$JAXCIFAR_COORDINATOR must be HOST:PORT, PORT in 1..65535; got ':'"),
        (["--coordinator", "h:99999", "--num-processes", "1", "--process-id", "0"], {},
         "--coordinator/$JAXCIFAR_COORDINATOR must be HOST:PORT, PORT in 1..65535; got "
         "'h:99999'"),
        (["--coordinator", "h:65536", "--num-processes", "1", "--process-id", "0"], {},
         "--coordinator/$JAXCIFAR_COORDINATOR must be HOST:PORT, PORT in 1..65535; got "
         "'h:65536'"),
        (["--coordinator", "h:0", "--num-processes", "1", "--process-id", "0"], {},
         "--coordinator/$JAXCIFAR_COORDINATOR must be HOST:PORT, PORT in 1..65535; got 'h:0'"),
        (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"], {},
         "--process-id/$JAXCIFAR_PROCESS_ID must be in 0..1; got 2"),
        (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "-1"], {},
         "--process-id/$JAXCIFAR_PROCESS_ID must be in 0..1; got -1"),
    ],
)  # fmt: skip
@pytest.mark.usefixtures("no_distributed_variables")
def test_bad_distributed_flags_are_config_errors(monkeypatch, argv, environment, message):
    for name, value in environment.items():  # an empty variable counts as unset
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(jax.distributed, "initialize", lambda *args: pytest.fail("initialized"))
    with pytest.raises(ConfigError) as error:
        arguments.initialize_from_args(parse(argv))
    assert str(error.value) == message


@pytest.mark.parametrize("port", ["1", "65535"])
@pytest.mark.usefixtures("no_distributed_variables")
def test_the_ports_at_the_ends_of_the_range_are_taken(monkeypatch, port):
    joined = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *args: joined.append(args))
    argv = ["--coordinator", f"h:{port}", "--num-processes", "2", "--process-id", "1"]
    assert arguments.initialize_from_args(parse(argv)) is True
    assert joined == [(f"h:{port}", 2, 1)]


def test_process_rows_cover_the_batch_on_one_process():
    mesh = parallel.data_mesh()
    assert parallel.process_rows(mesh, 8) == slice(0, 8)
    images = np.arange(8 * 2, dtype=np.uint8).reshape(8, 2)
    (placed,) = parallel.shard_batch((images,), mesh, 8)
    assert placed.sharding == parallel.batch_sharding(mesh)
    np.testing.assert_array_equal(np.asarray(placed), images)


@pytest.mark.usefixtures("no_distributed_variables")
def test_an_opt_in_cluster_is_not_joined_unasked(monkeypatch):
    # JAX joins an opt-in cluster (mpi4py) only when asked; so must a run with no flags.
    from jax._src.clusters import ClusterEnv

    opt_in = [env for env in ClusterEnv._cluster_types if env.opt_in_only_method]
    assert opt_in
    present = classmethod(lambda cls: cls in opt_in)
    for env in ClusterEnv._cluster_types:
        monkeypatch.setattr(env, "is_env_present", present)
    monkeypatch.setattr(jax.distributed, "initialize", lambda *args: pytest.fail("initialized"))
    assert arguments.initialize_from_args(parse([])) is False


@pytest.mark.parametrize("present, joined", [("K8sCluster", False), ("SlurmCluster", True)])
@pytest.mark.usefixtures("no_distributed_variables")
def test_only_the_clusters_the_help_names_are_joined_without_flags(monkeypatch, present, joined):
    # Any Kubernetes pod looks like JAX's K8sCluster: a one-process run there must not try to
    # join a job (it failed on a missing HOSTNAME, or warned to install jax[k8s]).
    from jax._src.clusters import ClusterEnv

    assert parallel.DETECTED_CLUSTERS < {env.__name__ for env in ClusterEnv._cluster_types}
    for env in ClusterEnv._cluster_types:
        monkeypatch.setattr(env, "is_env_present", classmethod(lambda cls: cls.__name__ == present))
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *args: calls.append(args))
    assert arguments.initialize_from_args(parse([])) is joined
    assert calls == ([()] if joined else [])


def test_data_mesh_gives_each_process_a_contiguous_block_when_ids_interleave():
    # Sorted by id alone, processes 0 and 1 would alternate along the mesh.
    import dataclasses

    FakeDevice = dataclasses.make_dataclass("FakeDevice", ["process_index", "id"], frozen=True)
    devices = [FakeDevice(process_index=i % 2, id=i) for i in (3, 0, 2, 1)]
    mesh = parallel.data_mesh(devices)
    order = [(device.process_index, device.id) for device in mesh.devices.flat]
    assert order == [(0, 0), (0, 2), (1, 1), (1, 3)]


def train_in_two_processes(tmp_path, extra=((), ()), *, stop=None, n_train=32, epochs=1):
    """`jaxcifar train` as processes 0 and 1 of one run, flags as a user gives them (the
    epoch mode left to auto), each with its own --out (tmp_path/run0, run1) and its `extra`
    flags; `stop`: (process, signal) sent once process 0 has started training. Returns
    [(returncode, stdout, stderr)] of each."""
    if not (tmp_path / "data").exists():
        write_idx_set(tmp_path / "data", n_train=n_train, n_test=8, shape=(4, 4))
    env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
    coordinator = f"localhost:{_free_port()}"
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "jaxcifar", "train", "--dataset", "mnist", "--model", "mlp",
             "--mlp-hidden", "8", "--batch-size", "8", "--epochs", str(epochs), "--quiet",
             "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / f"run{i}"),
             "--compile-cache", "none", "--coordinator", coordinator, "--num-processes", "2",
             "--process-id", str(i), *extra[i]],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    try:
        started = ""
        if stop is not None:
            while "epoch mode:" not in started:  # printed as the first epoch begins
                started += processes[0].stdout.readline() or "(no more)"
                assert "(no more)" not in started, processes[0].communicate()
            processes[stop[0]].send_signal(stop[1])
        outputs = [process.communicate(timeout=120) for process in processes]
    finally:
        for process in processes:  # one that failed once left its partner waiting: reap both
            if process.poll() is None:
                process.kill()
            process.wait()
    outputs[0] = (started + outputs[0][0], outputs[0][1])
    return [(process.returncode, *output) for process, output in zip(processes, outputs)]


def test_two_processes_of_the_command_line_train_and_only_process_0_writes(tmp_path):
    # Process 1 once died at the start asking process 0's device for its memory.
    results = train_in_two_processes(tmp_path)
    assert [code for code, _, _ in results] == [0, 0], results
    assert all("epoch mode: chunk" in stdout for _, stdout, _ in results)
    assert {path.name for path in (tmp_path / "run0").iterdir()} == {
        "checkpoint.msgpack", "metrics.json", "accuracy.png", "loss.png", "confusion_matrix.png"
    }  # fmt: skip
    assert not (tmp_path / "run1").exists()


def test_whether_a_resumed_run_is_finished_is_process_0s_call(tmp_path):
    # With an --out on each host, process 1's holds only a copy of the checkpoint (process 0
    # writes the reports): it once went on to train alone, and both failed with "process 0
    # ended the command before the start of training".
    assert [code for code, _, _ in train_in_two_processes(tmp_path)] == [0, 0]
    (tmp_path / "run1").mkdir()
    shutil.copy(tmp_path / "run0" / "checkpoint.msgpack", tmp_path / "run1")
    results = train_in_two_processes(tmp_path, (["--resume"], ["--resume"]))
    assert [(code, stderr) for code, _, stderr in results] == [(0, ""), (0, "")], results
    assert results[0][1] == (f"{tmp_path / 'run0' / 'checkpoint.msgpack'}: already trained 1 "
                             "epoch; raise --epochs to continue\n")  # fmt: skip
    assert results[1][1] == ""  # process 0 says it
    assert sorted(path.name for path in (tmp_path / "run1").iterdir()) == ["checkpoint.msgpack"]


def test_a_process_failing_alone_stops_the_other_with_its_reason(tmp_path):
    # Process 0 once waited in its first collective for gloo's 30 s, then failed with a
    # traceback.
    results = train_in_two_processes(tmp_path, ([], ["--data-dir", str(tmp_path / "none")]))
    assert [code for code, _, _ in results] == [2, 2], results
    assert results[1][2] == f"jaxcifar train: error: data dir {tmp_path / 'none'} does not exist\n"
    assert results[0][2] == (
        f"jaxcifar train: error: process 1 failed: data dir {tmp_path / 'none'} does not exist\n"
    )


def test_processes_given_different_flags_are_refused_naming_them(tmp_path):
    results = train_in_two_processes(tmp_path, ([], ["--epochs", "2"]))
    assert [code for code, _, _ in results] == [2, 2], results
    for _, _, stderr in results:
        assert stderr.startswith(
            "jaxcifar train: error: the processes differ in --epochs (process 0: 1; process 1: 2)"
        ), stderr


def test_a_signal_to_one_process_stops_both_together(tmp_path):
    # Once process 1 left alone and process 0 waited in a collective for ever. Now both stop
    # at the next group of steps, and process 0 says how to resume.
    results = train_in_two_processes(
        tmp_path, stop=(1, signal.SIGTERM), n_train=2048, epochs=30
    )  # fmt: skip
    assert [code for code, _, _ in results] == [143, 143], results
    assert results[0][2].startswith("jaxcifar train: process 1 was interrupted by SIGTERM before "
                                    "epoch "), results[0][2]  # fmt: skip
    assert results[1][2].startswith("jaxcifar train: interrupted by SIGTERM; process 0 writes")
    assert "epoch 30/30" not in results[0][1]


def test_a_process_failing_before_the_backend_starts_stops_the_other_too(tmp_path):
    # A resume with no checkpoint on one host fails before any device is touched: the other
    # process once waited inside the backend's start for it, for ever.
    results = train_in_two_processes(tmp_path, ([], ["--resume"]))
    assert [code for code, _, _ in results] == [2, 2], results
    assert results[0][2].startswith("jaxcifar train: error: process 1 failed: "), results[0][2]
    assert str(tmp_path / "run1" / "checkpoint.msgpack") in results[0][2]
