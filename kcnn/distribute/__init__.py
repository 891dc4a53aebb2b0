"""Training on several devices and several machines with TensorFlow's distribution engine.

Three kinds of runs, one name each (the recipes' ``--distribute``):

* ``"none"``: TensorFlow's default strategy (one device; what kcnn does without this module).
* ``"mirrored"``: `tf.distribute.MirroredStrategy`, synchronous data parallelism over all local GPUs, or over
  N logical CPU devices (``cpu_devices=N``; for tests on a machine without GPUs). kcnn's normal path works
  under it: build the model **and** call `kcnn.transfer.fit_schedule` inside ``strategy.scope()`` (the
  per-phase optimizers and fit views that fit_schedule creates are then made under the scope too); see
  `distributed`.
* ``"multiworker"``: `tf.distribute.MultiWorkerMirroredStrategy` across processes or machines described by the
  ``TF_CONFIG`` environment variable. Keras 3's ``fit`` fails under it with the TensorFlow backend (keras
  issue 20585: "Attempt to convert a value (PerReplica...)"), so `fit_distributed` is a strategy-aware custom
  training loop that runs a kcnn `Schedule` (trainability per phase, BN modes, learning-rate schedules) and
  keeps what the recipes rely on: history rows, per-epoch callbacks (run-folder checkpoints), resume.

The global batch: a `kcnn.data.Splits`' ``batch_size`` (the recipes' ``--batch-size``) is the global batch,
the examples of one optimizer step over all replicas. Under ``"multiworker"`` with W workers and a Splits of
in-memory arrays or a folder, `fit_distributed` has each worker read only its own shard of the training split
(``shard=(worker id, W)``: examples id, id + W, ...; the same set every epoch, shuffled and augmented per
(seed, epoch, shard)) in batches of ``batch_size / W``, which its local replicas split again; ``batch_size``
must divide by the number of replicas. All shards take ``ceil(ceil(n / W) / (batch_size / W))`` steps an
epoch (a short shard repeats one example). A tfds source, a plain dataset, or one worker: every worker builds
the same batches and the strategy splits each one (tf.data auto-sharding). ``"mirrored"`` always splits each
global batch between the local replicas.

Batch norm: by default the distributed paths switch every BatchNormalization layer to ``synchronized=True``
while they train with more than one replica (`synchronized_batch_norm`): batch statistics are then computed
over the *global* batch, so N replicas compute what one device computes on the same batch, and every replica's
moving statistics stay identical. Each replica's own statistics (``sync_batch_norm=False``) are cheaper on
many GPUs with large per-replica batches, but differ from the single-device run and between replicas. Keras'
synchronized moments compute the variance as E[x^2] - E[x]^2 (and skip the fused kernel), which loses
precision where a channel's mean is large against its spread; BN nets therefore follow the single-device
trajectory less closely than nets without BN. The flag is restored afterwards, so a saved model does not keep
it.

Keras 3.15's ``fit`` under MirroredStrategy fails with ``steps_per_execution`` > 1 ("You must feed a value for
placeholder tensor ..." in ``multi_step_on_iterator``, measured with 2 logical CPUs); run it with 1
(`kcnn.transfer.fit_schedule` does under a strategy with several replicas).

A ``TF_CONFIG`` for two workers on one machine (each process gets its own ``task.index``)::

    {"cluster": {"worker": ["127.0.0.1:12345", "127.0.0.1:12346"]}, "task": {"type": "worker", "index": 0}}

Worker 0 (or a task of type "chief") is the chief: it writes files; the others write to temporary folders
(`write_dir`), as TensorFlow recommends. Every worker must run the same program with the same data.
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings

import keras
import tensorflow as tf

from kcnn import _compat, files, runs

from kcnn.options import DISTRIBUTE_KINDS as KINDS  # noqa: E402  (its home is kcnn.options)


class DistributeError(ValueError):
    """A distribution setting that cannot be used as asked (bad TF_CONFIG, devices set up too late, ...)."""


# ------------------------------------------------------------------------------------------------------------
# Strategies
# ------------------------------------------------------------------------------------------------------------


def configure_cpu_devices(count: int) -> list[str]:
    """Split the physical CPU into ``count`` logical devices (must run before TensorFlow initializes devices).

    Args:
        count: Logical CPU devices wanted (>= 1).

    Returns:
        Their names, ``["/cpu:0", "/cpu:1", ...]``.

    Raises:
        DistributeError: TensorFlow already initialized its devices with another number of CPUs (anything
            that creates a tensor, a model or a dataset does that).
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise DistributeError(f"`cpu_devices` must be an integer >= 1. Received: cpu_devices={count!r}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if not (current and len(current) == count):
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
        except RuntimeError:
            have = len(tf.config.list_logical_devices("CPU"))
            if have != count:
                raise DistributeError(
                    f"cpu_devices={count}: TensorFlow has already initialized its devices ({have} logical "
                    f"CPU device(s)). Logical devices must be configured before TensorFlow runs anything: "
                    f"call kcnn.distribute.make_strategy(..., cpu_devices={count}) first thing in the "
                    f"process, before building a model, loading data or creating tensors."
                ) from None
    return [f"/cpu:{i}" for i in range(count)]


def tf_config() -> dict:
    """The parsed and checked ``TF_CONFIG`` environment variable.

    Returns:
        ``{"cluster": {task type: [host:port, ...]}, "task": {"type": ..., "index": ...}}``.

    Raises:
        DistributeError: TF_CONFIG is missing, not JSON, or inconsistent; the message says what is wrong and
            shows a valid example.
    """
    example = ('{"cluster": {"worker": ["host1:port", "host2:port"]}, '
               '"task": {"type": "worker", "index": 0}} '
               '(the same cluster on every worker, its own task index on each)')
    text = os.environ.get("TF_CONFIG")
    if text is None or not text.strip():
        raise DistributeError(f"--distribute multiworker needs the TF_CONFIG environment variable, which is "
                              f"not set. Set it on every worker, e.g. TF_CONFIG='{example}'")
    try:
        config = json.loads(text)
    except ValueError as err:
        raise DistributeError(f"TF_CONFIG is not valid JSON ({err}). Expected e.g. {example}") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict):
        raise DistributeError(f"TF_CONFIG has no \"cluster\" object. Expected e.g. {example}. "
                              f"Received: TF_CONFIG={text!r}")
    cluster = config["cluster"]
    if not cluster.get("worker") and not cluster.get("chief"):
        raise DistributeError(f"TF_CONFIG's cluster lists no \"worker\" (or \"chief\") addresses. "
                              f"Expected e.g. {example}. Received: TF_CONFIG={text!r}")
    for kind, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(isinstance(a, str) and ":" in a for a in addresses):
            raise DistributeError(f"TF_CONFIG's cluster[{kind!r}] must be a list of \"host:port\" strings. "
                                  f"Received: TF_CONFIG={text!r}")
    task = config.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise DistributeError(f"TF_CONFIG has no \"task\" with \"type\" and \"index\" (which worker this "
                              f"process is). Expected e.g. {example}. Received: TF_CONFIG={text!r}")
    kind, index = task["type"], task["index"]
    if kind not in cluster:
        raise DistributeError(f"TF_CONFIG's task type {kind!r} is not in its cluster ({', '.join(cluster)}). "
                              f"Received: TF_CONFIG={text!r}")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise DistributeError(f"TF_CONFIG's task index must be an integer from 0 to {len(cluster[kind]) - 1} "
                              f"(the cluster has {len(cluster[kind])} {kind} address(es)). Received: "
                              f"TF_CONFIG={text!r}")
    return config


def tf_config_is_chief(config: dict | None = None) -> bool:
    """Whether this process is the chief of the TF_CONFIG cluster (a "chief" task, else worker 0)."""
    config = tf_config() if config is None else config
    kind, index = config["task"]["type"], config["task"]["index"]
    return kind == "chief" or (kind == "worker" and index == 0 and "chief" not in config["cluster"])


def _context_initialized() -> bool:
    try:
        return _compat.tf_context_initialized()
    except _compat.CompatError:  # pragma: no cover - internals moved: assume it has started
        return True


def make_strategy(kind: str = "none", devices=None, *, cpu_devices: int | None = None):
    """A `tf.distribute.Strategy` for ``kind``.

    Call it first thing in the process: logical CPU devices and multi-worker collectives must be set up before
    TensorFlow initializes (before a model, a dataset or a tensor is created).

    Args:
        kind: "none" (TensorFlow's default strategy, one device), "mirrored" (all local GPUs, or the logical
            CPU devices asked for) or "multiworker" (`tf.distribute.MultiWorkerMirroredStrategy` from
            ``TF_CONFIG``).
        devices: "mirrored" only: explicit device names, e.g. ``["/gpu:0", "/gpu:1"]``.
        cpu_devices: "mirrored" only: mirror over this many logical CPU devices (made from the physical CPU
            with `configure_cpu_devices`) instead of the GPUs; for tests.

    Returns:
        The strategy. Enter ``strategy.scope()`` around model building and fitting (or use `distributed`).

    Raises:
        DistributeError: an unknown kind, options that do not apply to it, logical CPUs asked for too late,
            or a missing / invalid TF_CONFIG for "multiworker".

    Example:
        >>> strategy = make_strategy("mirrored", cpu_devices=2)
        >>> strategy.num_replicas_in_sync
        2
    """
    if kind not in KINDS:
        raise DistributeError(f"`kind` must be one of {list(KINDS)}. Received: kind={kind!r}")
    if kind != "mirrored" and (devices is not None or cpu_devices is not None):
        raise DistributeError(f"`devices` and `cpu_devices` apply to kind='mirrored' only. Received: "
                              f"kind={kind!r}, devices={devices!r}, cpu_devices={cpu_devices!r}")
    if kind == "none":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        if devices is not None and cpu_devices is not None:
            raise DistributeError("Give `devices` or `cpu_devices`, not both. "
                                  f"Received: devices={devices!r}, cpu_devices={cpu_devices!r}")
        if cpu_devices is not None:
            devices = configure_cpu_devices(cpu_devices)
        elif devices is None and not tf.config.list_physical_devices("GPU"):
            warnings.warn("kcnn.distribute: no GPU found; MirroredStrategy runs one replica on the CPU. Pass "
                          "cpu_devices=N (recipes: --cpu-devices N) to mirror over N logical CPU devices.",
                          stacklevel=2)
        return tf.distribute.MirroredStrategy(devices=list(devices) if devices is not None else None)
    tf_config()  # fails early with a clear message
    if _context_initialized():
        warnings.warn("kcnn.distribute: TensorFlow was initialized before MultiWorkerMirroredStrategy was "
                      "created; create the strategy first thing in the process (tensors made before may "
                      "fail).",
                      stacklevel=2)
    return tf.distribute.MultiWorkerMirroredStrategy()


@contextlib.contextmanager
def distributed(kind: str = "none", devices=None, *, cpu_devices: int | None = None):
    """Make a strategy (`make_strategy`) and enter its scope; wrap model building and fitting in it.

    Everything that creates variables must be inside: the backbone and classifier, and `fit_schedule` (which
    makes an optimizer and a fit view per phase) or `fit_distributed`.

    Example:
        >>> with distributed("mirrored", cpu_devices=2) as strategy:
        ...     bb = transfer.backbone("resnet20", input_shape=(16, 16, 3))
        ...     model = transfer.classifier(bb, 10)
        ...     with synchronized_batch_norm(model):
        ...         transfer.fit_schedule(model, bb, schedule, train_ds, val_ds, steps_per_execution=1)
    """
    strategy = make_strategy(kind, devices, cpu_devices=cpu_devices)
    with strategy.scope():
        yield strategy


def is_chief(strategy=None) -> bool:
    """Whether this process writes files (the chief; always True outside multi-worker training)."""
    strategy = strategy or tf.distribute.get_strategy()
    return bool(strategy.extended.should_checkpoint)


def worker_index(strategy=None) -> int:
    """This process's task index in the cluster (0 outside multi-worker training)."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    return int(getattr(resolver, "task_id", None) or 0)


def write_dir(path, strategy=None) -> str:
    """Where this process writes: ``path`` on the chief, a fresh temporary folder on the other workers.

    Non-chief workers still run the same saving code (TensorFlow's advice for multi-worker checkpoints);
    remove their folder afterwards with `remove_write_dir`.
    """
    if is_chief(strategy):
        return os.fspath(path)
    return os.fspath(files.make_temp_dir(f"worker{worker_index(strategy)}-"))


def remove_write_dir(path, strategy=None) -> None:
    """Delete a non-chief worker's temporary folder from `write_dir` (does nothing on the chief)."""
    if not is_chief(strategy):
        files.remove_temp_dir(path)  # only a folder write_dir made


def _sublayers(model) -> list:
    out, stack = [], [model]
    while stack:
        layer = stack.pop()
        out.append(layer)
        stack.extend(getattr(layer, "layers", []) or [])
    return out


@contextlib.contextmanager
def synchronized_batch_norm(model, enabled: bool = True):
    """Set ``synchronized`` on every BatchNormalization layer in ``model`` (nested models too) until exit.

    Synchronized BN computes training-mode batch statistics over all replicas' examples (Keras' TensorFlow
    backend all-reduces the sums), so a distributed step normalizes like a single-device step on the same
    global batch. Outside a distribution strategy it changes nothing (but uses Keras' unfused BN ops).

    Yields:
        The BN layers.
    """
    bn_layers = [layer for layer in _sublayers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    before = {id(layer): layer.synchronized for layer in bn_layers}
    for layer in bn_layers:
        layer.synchronized = bool(enabled)
    try:
        yield bn_layers
    finally:
        for layer in bn_layers:
            layer.synchronized = before[id(layer)]


# ------------------------------------------------------------------------------------------------------------
# Run folders (what the recipes call)
# ------------------------------------------------------------------------------------------------------------


def run_dir_for(kind: str, path, *, recipe: str, overwrite: bool = False, resume: bool = False,
                config: dict | None = None) -> runs.RunDir:
    """A recipe's run folder, not yet opened: ``path`` on the chief; a fresh temporary folder on the other
    workers of a multiworker run (they go through the same saving code, TensorFlow's advice; `finish_worker`
    deletes it). Reads TF_CONFIG, not the strategy, so it can be checked before `make_strategy`."""
    config = dict(config or {})
    if kind != "multiworker" or tf_config_is_chief(tf_config()):
        return runs.RunDir(path, overwrite=overwrite, resume=resume, config=config, recipe=recipe)
    tmp = files.make_temp_dir(f"worker{tf_config()['task']['index']}-")
    return runs.RunDir(tmp, config=config, recipe=recipe)


def finish_worker(run, strategy) -> bool:
    """On a non-chief worker: delete its temporary run folder, say so, return True (the recipe stops there).

    Returns False on the chief, which goes on to evaluate and write the run folder.
    """
    if is_chief(strategy):
        return False
    files.remove_temp_dir(run.path)  # only the temporary folder run_dir_for made
    print(f"worker {worker_index(strategy)}: training done; the chief writes the run folder", flush=True)
    return True


# the custom loop (its own module; it imports the names above)
from kcnn.distribute.loop import check_batch, fit_distributed, per_worker_batch, sync_from_chief  # noqa: E402

__all__ = [
    "KINDS", "DistributeError", "make_strategy", "distributed", "configure_cpu_devices", "tf_config",
    "tf_config_is_chief", "is_chief", "worker_index", "write_dir", "remove_write_dir",
    "synchronized_batch_norm", "sync_from_chief", "fit_distributed", "per_worker_batch", "check_batch", "run_dir_for",
    "finish_worker",
]
