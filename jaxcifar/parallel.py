"""Data parallelism over every device of every process, with `jax.sharding`.

One 1-D mesh (axis "data") spans all devices, ordered by process. A batch is sharded along
it, so each device holds `batch_size / device_count` rows; parameters, optimizer state and
rng keys are replicated. The training step is one jitted program over the global arrays:
its loss is a mean over the global batch, so XLA inserts the gradient all-reduce itself. One
device is the same code with a mesh of size 1.

Several processes (hosts) join through `jax.distributed.initialize` before JAX touches a
device. Each process then holds the whole dataset on its host, draws the same permutation
from the run's seed, and feeds only its own rows of each global batch
(`process_rows`, `shard_batch`).
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Any

from jaxcifar.errors import ConfigError

# JAX is imported inside the functions: the train command's flags (`commands.arguments`) read
# this module's variable names, and `jaxcifar --help` must not pay for importing JAX.
if TYPE_CHECKING:
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding

DATA_AXIS = "data"
COORDINATOR_ENV = "JAXCIFAR_COORDINATOR"
NUM_PROCESSES_ENV = "JAXCIFAR_NUM_PROCESSES"
PROCESS_ID_ENV = "JAXCIFAR_PROCESS_ID"


def data_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D ("data",) mesh over `devices` (default: every device of every process).

    Devices are sorted by (process, id) so each process's devices are neighbours on the
    mesh and a process owns one contiguous block of rows of every batch.
    """
    import jax
    import numpy as np
    from jax.sharding import Mesh

    devices = jax.devices() if devices is None else devices
    ordered = sorted(devices, key=lambda device: (device.process_index, device.id))
    return Mesh(np.array(ordered), (DATA_AXIS,))


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
    """Axis `batch_axis` (the batch) split over the mesh, other axes whole."""
    from jax.sharding import NamedSharding, PartitionSpec

    return NamedSharding(mesh, PartitionSpec(*[None] * batch_axis, DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    from jax.sharding import NamedSharding, PartitionSpec

    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, device_count: int) -> None:
    """Raise ConfigError unless the global batch splits evenly over `device_count` devices."""
    if batch_size % device_count:
        raise ConfigError(
            f"--batch-size {batch_size} does not split evenly over {device_count} devices; "
            f"use a multiple of {device_count}"
        )


def replicate(tree: Any, mesh: Mesh) -> Any:
    """`tree` (host or device arrays, the same on every process) copied to every device.

    Goes through host memory, as a process can only place host data onto devices that other
    processes own; and through `make_array_from_process_local_data`, not `device_put`, which
    in a multi-process run would all-gather every array to check it is the same everywhere.
    """
    import jax

    sharding = replicated_sharding(mesh)
    return jax.tree.map(
        lambda leaf: jax.make_array_from_process_local_data(sharding, leaf), jax.device_get(tree)
    )


def process_rows(mesh: Mesh, global_size: int) -> slice:
    """The rows of a `global_size`-row batch that this process's devices hold."""
    indices = batch_sharding(mesh).addressable_devices_indices_map((global_size,)).values()
    starts = [index[0].start or 0 for index in indices]
    stops = [global_size if index[0].stop is None else index[0].stop for index in indices]
    return slice(min(starts), max(stops))


def shard_batch(
    local: tuple[np.ndarray, ...], mesh: Mesh, global_size: int, *, batch_axis: int = 0
) -> tuple[jax.Array, ...]:
    """Global batch arrays of `global_size` rows along `batch_axis` from this process's rows
    `local` (each array's rows are `process_rows(mesh, global_size)` of the global batch;
    with `batch_axis=1`, a stack of batches (steps, rows, ...))."""
    import jax

    sharding = batch_sharding(mesh, batch_axis)

    def global_shape(array: np.ndarray) -> tuple[int, ...]:
        return (*array.shape[:batch_axis], global_size, *array.shape[batch_axis + 1 :])

    return tuple(
        jax.make_array_from_process_local_data(sharding, array, global_shape(array))
        for array in local
    )


def is_main_process() -> bool:
    """True on process 0, the one that writes reports and checkpoints."""
    import jax

    return jax.process_index() == 0


def warn_of_ignored_variables(command: str) -> None:
    """Warn when a JAXCIFAR_* multi-process variable is set for `command`, which is not
    `train` and runs as one process: set for a whole cluster, it would run one whole
    command, unseen, on every host."""
    names = [name for name in (COORDINATOR_ENV, NUM_PROCESSES_ENV, PROCESS_ID_ENV)
             if os.environ.get(name)]  # fmt: skip
    if names:
        warnings.warn(
            f"{', '.join('$' + name for name in names)} set, but {command} runs as one "
            "process: only jaxcifar train joins a multi-process run",
            stacklevel=2,
        )


def initialize(coordinator: str | None, num_processes: int | None, process_id: int | None) -> bool:
    """Join a multi-process run through `jax.distributed.initialize`; True if one was joined.

    With all three given, connects to `coordinator`; with none, lets JAX detect a cluster
    (Cloud TPU pod, SLURM, Open MPI) and stays single-process if there is none. Must run
    before anything touches a device. Raises ConfigError for a partial or invalid set.
    """
    import jax

    # Each value comes from its flag or its variable (`add_distributed_arguments`): name both.
    names = (f"--coordinator/${COORDINATOR_ENV}", f"--num-processes/${NUM_PROCESSES_ENV}",
             f"--process-id/${PROCESS_ID_ENV}")  # fmt: skip
    given = dict(zip(names, (coordinator, num_processes, process_id)))
    if all(value is None for value in given.values()):
        if not _cluster_detected():
            return False
        jax.distributed.initialize()
        return True
    missing = [name for name, value in given.items() if value is None]
    if missing:
        raise ConfigError(
            f"multi-process training needs {names[0]}, {names[1]} and {names[2]} together; "
            f"missing {', '.join(missing)}"
        )
    host, _, port = coordinator.rpartition(":")
    # JAX would wait 5 minutes for a coordinator it cannot reach, then abort the process.
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{names[0]} must be HOST:PORT, PORT in 1..65535; got {coordinator!r}")
    if not 0 <= process_id < num_processes:
        raise ConfigError(f"{names[2]} must be in 0..{num_processes - 1}; got {process_id}")
    jax.distributed.initialize(coordinator, num_processes, process_id)
    return True


# The clusters joined without flags, by the names of JAX's detectors: those the help promises.
# Not every kind JAX detects: K8sCluster is present in any Kubernetes pod, where most runs
# (a notebook, a CI job) are one process and would try to join a job; mpi4py is opt-in.
DETECTED_CLUSTERS = frozenset({"SlurmCluster", "OmpiCluster", "GceTpuCluster", "GkeTpuCluster"})


def _cluster_detected() -> bool:
    # The detection `jax.distributed.initialize()` runs with no arguments, for the clusters
    # above; asked first because with no cluster that call raises rather than staying
    # single-process. JAX has no public API for it. Should a JAX release move it, the run
    # warns and stays one process: failing there would stop every single-process run, by far
    # the common case.
    try:
        from jax._src.clusters import ClusterEnv

        detectors = [env for env in ClusterEnv._cluster_types if env.__name__ in DETECTED_CLUSTERS]
        if not detectors:
            known = sorted(DETECTED_CLUSTERS)
            raise AttributeError(f"ClusterEnv._cluster_types holds none of {known}")
        return any(env.is_env_present() for env in detectors)
    except (ImportError, AttributeError) as error:
        import jax

        warnings.warn(
            f"cluster detection is off: this JAX ({jax.__version__}) moved the private API it "
            f"reads ({error}); the run is one process unless --coordinator, --num-processes "
            "and --process-id are given",
            stacklevel=2,
        )
        return False
