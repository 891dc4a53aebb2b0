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
import shutil
import tempfile
import time
import warnings
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from kcnn import _compat, runs, transfer
from kcnn import layers as kl

KINDS = ("none", "mirrored", "multiworker")


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
    return tempfile.mkdtemp(prefix=f"kcnn-worker{worker_index(strategy)}-")


def remove_write_dir(path, strategy=None) -> None:
    """Delete a non-chief worker's temporary folder from `write_dir` (does nothing on the chief)."""
    if not is_chief(strategy):
        shutil.rmtree(path, ignore_errors=True)


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
# The custom training loop
# ------------------------------------------------------------------------------------------------------------


def _unpack(batch):
    if isinstance(batch, dict) or not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise ValueError("fit_distributed's datasets must yield (images, labels) or "
                         "(images, labels, weights).")
    return batch[0], batch[1], (batch[2] if len(batch) == 3 else None)


def _replica_sums(runner, batch, training: bool):
    """(per-example losses, correct predictions, examples) of one replica's batch."""
    x, y, weights = _unpack(batch)
    probs = runner(x, training=training)
    labels = tf.reshape(tf.cast(y, "int64"), [-1])
    per_example = keras.losses.sparse_categorical_crossentropy(labels, probs)
    if weights is not None:
        per_example = per_example * tf.cast(tf.reshape(weights, [-1]), per_example.dtype)
    correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probs, axis=-1), labels), "float32"))
    count = tf.cast(tf.shape(labels)[0], "float32")
    return per_example, correct, count


def _make_train_step(strategy, runner, optimizer, variables, element_spec):
    def replica_step(batch):
        context = tf.distribute.get_replica_context()
        with tf.GradientTape() as tape:
            per_example, correct, count = _replica_sums(runner, batch, training=True)
            global_count = context.all_reduce(tf.distribute.ReduceOp.SUM, count)
            # the mean over the *actual* global batch (the last one of an epoch may be smaller)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=tf.cast(global_count, "int64"))
            if runner.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(runner.losses))
        gradients = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(gradients, variables))  # sums the replicas' gradients
        return tf.reduce_sum(per_example), correct, count

    def step(batch):
        sums = strategy.run(replica_step, args=(batch,))
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None) for value in sums]

    return tf.function(step, input_signature=[element_spec])


def _make_eval_step(strategy, runner, element_spec):
    def replica_step(batch):
        per_example, correct, count = _replica_sums(runner, batch, training=False)
        return tf.reduce_sum(per_example), correct, count

    def step(batch):
        sums = strategy.run(replica_step, args=(batch,))
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None) for value in sums]

    return tf.function(step, input_signature=[element_spec])


def _workers(strategy) -> tuple[int, int]:
    """``(workers, this worker's id)`` of a multi-worker strategy, ``(1, 0)`` otherwise.

    The id is the one MultiWorkerMirroredStrategy gives its `tf.distribute.InputContext`
    (``input_pipeline_id``): a "chief" task is 0 and the workers follow it.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 1, 0
    resolver = strategy.cluster_resolver
    spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
    chiefs = len(spec.get("chief", []))
    count = chiefs + len(spec.get("worker", []))
    if count < 2:
        return 1, 0
    return count, (0 if resolver.task_type == "chief" else int(resolver.task_id or 0) + chiefs)


def _shards_files(train_ds) -> bool:
    """Whether ``train_ds`` is a `kcnn.data.Splits` whose source kcnn can shard (arrays, folders; not tfds)."""
    keyed = all(hasattr(train_ds, a) for a in ("dataset", "steps_per_epoch", "val", "seed", "batch_size"))
    return keyed and not str(getattr(train_ds, "source", "")).startswith("tfds:")


def per_worker_batch(global_batch: int, replicas: int, workers: int) -> int:
    """Examples each of ``workers`` workers reads per step of a global batch of ``global_batch``.

    Raises:
        DistributeError: ``global_batch`` does not divide by the ``replicas`` in sync (one line naming
            --batch-size and the nearest batches that do).
    """
    if global_batch % replicas:
        below = global_batch - global_batch % replicas
        near = f"{below} or {below + replicas}" if below else f"{replicas}"
        raise DistributeError(
            f"--batch-size {global_batch} (the global batch) must divide by the {replicas} replicas in sync "
            f"({workers} workers x {replicas // workers} device(s) each), since each worker reads its own "
            f"shard of the training files; use e.g. --batch-size {near}.")
    return global_batch // workers


def check_batch(strategy, splits) -> int | None:
    """Before anything is written: the examples each worker reads per step when ``strategy`` shards ``splits``'
    training files across several workers (see `fit_distributed`), else None.

    Raises:
        DistributeError: the global batch does not divide by the replicas in sync (`per_worker_batch`).
    """
    workers, _ = _workers(strategy)
    if workers > 1 and _shards_files(splits):
        return per_worker_batch(int(splits.batch_size), strategy.num_replicas_in_sync, workers)
    return None


def _shard_input_fn(data, epoch: int, global_batch: int) -> Callable:
    """The ``dataset_fn`` of `tf.distribute.Strategy.distribute_datasets_from_function` for one epoch.

    ``data`` is a sharded `kcnn.transfer.EpochData` (this worker's ``(id, workers)``, batches of
    ``global_batch / workers``); the function checks that the InputContext agrees and returns this worker's
    shard of epoch ``epoch``, rebatched to ``global_batch / replicas`` when the worker has several replicas
    (each of them dequeues one batch per step, TensorFlow's contract for this function).
    """
    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        shard = (context.input_pipeline_id, context.num_input_pipelines)
        if tuple(data.shard) != shard:
            raise DistributeError(f"This worker's data shard {tuple(data.shard)} is not the one TensorFlow's "
                                  f"input context gives it, {shard}: TF_CONFIG changed during the run?")
        per_replica = context.get_per_replica_batch_size(global_batch)
        ds = data.epoch(epoch)
        return ds if per_replica == data.batch_size else ds.rebatch(per_replica)

    return dataset_fn


@contextlib.contextmanager
def _exposed_optimizer(model):
    """Put back ``model.optimizer`` as it was (absent on an uncompiled model) after the loop set it per phase:
    Keras' TensorBoard callback reads it on every epoch end, and a saved model must not carry it."""
    had, before = hasattr(model, "optimizer"), getattr(model, "optimizer", None)
    try:
        yield
    finally:
        if had:
            model.optimizer = before
        elif hasattr(model, "optimizer"):
            del model.optimizer


def _run_epoch(step, dataset) -> dict:
    totals = np.zeros(3)
    for batch in dataset:
        totals += [float(v) for v in step(batch)]
    loss_sum, correct, count = totals
    count = max(count, 1.0)
    return {"loss": float(loss_sum / count), "accuracy": float(correct / count)}


def sync_from_chief(strategy, variables, value: int = 0) -> int:
    """Copy the chief's values of ``variables`` (float ones) and of ``value`` to every replica and worker.

    Workers start from the same weights after the chief alone restored a checkpoint (no shared file system
    needed). Implemented as a sum all-reduce in which every replica but the first contributes zeros.

    Returns:
        The chief's ``value``.
    """
    floats = [v for v in variables if tf.as_dtype(v.dtype).is_floating]

    def replica_fn():
        context = tf.distribute.get_replica_context()
        first = tf.equal(context.replica_id_in_sync_group, 0)
        chief_value = tf.where(first, tf.cast(value, "float32"), 0.0)
        out = [context.all_reduce(tf.distribute.ReduceOp.SUM, chief_value)]
        for variable in floats:
            tensor = tf.convert_to_tensor(variable)
            out.append(context.all_reduce(tf.distribute.ReduceOp.SUM,
                                          tf.where(first, tensor, tf.zeros_like(tensor))))
        return out

    @tf.function
    def sync():
        results = strategy.run(replica_fn)
        for variable, result in zip(floats, results[1:]):
            variable.assign(strategy.experimental_local_results(result)[0])
        return strategy.experimental_local_results(results[0])[0]

    if strategy.num_replicas_in_sync == 1:
        return int(value)
    return int(round(float(sync())))


def fit_distributed(model: keras.Model, train_ds, val_ds=None, *, strategy=None, backbone=None, schedule=None,
                    epochs: int | None = None, optimizer: str = "adam", lr: float = 1e-3, callbacks=(),
                    initial_epoch: int = 0, sync_batch_norm: bool = True,
                    bn_momentum: float | None = kl.BN_MOMENTUM, on_phase_end: Callable | None = None,
                    on_epoch_end: Callable | None = None, resume_state: dict | None = None,
                    verbose: int = 1) -> transfer.ScheduleHistory:
    """Train with a strategy-aware custom loop (works under MultiWorkerMirroredStrategy, where ``fit`` fails).

    It runs the same phase plan as `kcnn.transfer.fit_schedule` (`kcnn.transfer.make_plan`,
    `kcnn.transfer.phase_runner`: trainability per phase, the backbone in inference mode unless ``bn="train"``,
    BN momentum, a new optimizer per phase with warm-up / cosine rates and ``lr_mult``) and calls the same
    hooks; it has no feature cache (the backbone runs in every phase). Each step runs ``strategy.run`` with a
    GradientTape: the loss is the mean sparse categorical cross-entropy over the *global* batch
    (``tf.nn.compute_average_loss`` with the all-reduced example count; sample weights as Keras applies them),
    the optimizer sums the replicas' gradients; loss and accuracy sums are reduced with
    ``strategy.reduce("SUM", ...)``.

    The global batch: with several workers and a `kcnn.data.Splits` of in-memory arrays or a folder as the
    training data, each of the W workers reads only its own shard of the training split
    (``shard=(worker id, W)``: a fixed 1/W of the files, shuffled and augmented per (seed, epoch, shard)) in
    batches of ``batch_size / W`` (`tf.distribute.Strategy.distribute_datasets_from_function`), split again
    between its local replicas; ``batch_size`` must divide by the number of replicas (`per_worker_batch`).
    All shards take the same number of steps (a short shard repeats one example). Otherwise (one worker, a
    tfds source, a plain dataset) each element of the training data is one global batch, which the strategy
    splits between replicas and workers (tf.data auto-sharding; every worker builds the same data in the
    same order; a `kcnn.data.Splits` gives epochs keyed by (seed, epoch)). Validation data are never sharded
    by kcnn: every worker builds them and the strategy splits each batch; the metrics are global sums.

    Without ``schedule`` and ``backbone``: any Keras model ending in softmax, ``epochs`` at ``lr`` with
    ``optimizer`` ("adam", "sgd", "adamw", "rmsprop"); the model runs with ``training=True``.

    Callbacks get ``set_model(model)``, ``on_train_begin``, ``on_epoch_begin(epoch)``, ``on_epoch_end(epoch,
    logs)`` (0-based epoch; logs: loss, accuracy, val_loss, val_accuracy) and ``on_train_end``; setting
    ``model.stop_training`` ends the current phase. They run on every worker: write files through `write_dir`.

    Resume: the chief restores its checkpoint and passes ``initial_epoch`` (and ``resume_state`` for the
    optimizer of a phase resumed in its middle); at the start the chief's weights and ``initial_epoch`` are
    copied to all workers (`sync_from_chief`), so the others need no checkpoint.

    Args:
        model: The model (built under ``strategy.scope()``).
        train_ds: A `kcnn.data.Splits`, or a batched, finite ``tf.data.Dataset`` of (images, integer
            labels[, sample weights]); the batch size is the global batch size (see above).
        val_ds: Validation data in the same form, or None (a `Splits` brings its own).
        strategy: The strategy; default the one whose scope is active.
        backbone: The `kcnn.transfer.Backbone` of a classifier model (schedule mode).
        schedule: A `kcnn.transfer.Schedule`, list of phases, preset name or file.
        epochs: Epochs without a schedule.
        optimizer: Optimizer name without a schedule.
        lr: Learning rate without a schedule.
        callbacks: Keras-style callbacks.
        initial_epoch: Global epochs already finished (resume).
        sync_batch_norm: Global-batch BN statistics while training with more than one replica
            (`synchronized_batch_norm`).
        bn_momentum: Momentum of trained BN layers during ``bn="train"`` phases, as in fit_schedule.
        on_phase_end: ``on_phase_end(phase_number, phase, history)`` after each phase.
        on_epoch_end: ``on_epoch_end(row, model, optimizer, phase_number)`` after each epoch, as in
            fit_schedule.
        resume_state: The checkpoint arrays of epoch ``initial_epoch`` (optimizer state), as in fit_schedule.
        verbose: 0 silent; otherwise the chief prints one line per phase and per epoch.

    Returns:
        A `kcnn.transfer.ScheduleHistory` (rows: epoch, phase, phase_name, lr, loss, accuracy, val_loss,
        val_accuracy).

    Example:
        >>> strategy = make_strategy("multiworker")  # first thing in the process
        >>> with strategy.scope():
        ...     bb = transfer.backbone("resnet20", input_shape=(32, 32, 3))
        ...     model = transfer.classifier(bb, 10)
        ...     history = fit_distributed(model, splits, strategy=strategy, backbone=bb, schedule="two-phase")
    """
    strategy = strategy or tf.distribute.get_strategy()
    if schedule is None:
        if epochs is None:
            raise ValueError("fit_distributed needs `epochs` (or a `schedule`). Received: epochs=None")
        schedule = transfer.Schedule([transfer.Phase(epochs=epochs, train="all", lr=lr, optimizer=optimizer,
                                                     bn="train", name="train")])
    initial_epoch = transfer.check_initial_epoch(initial_epoch)
    plans = transfer.make_plan(model, backbone, schedule)
    workers, worker_id = _workers(strategy)
    sharded = workers > 1 and _shards_files(train_ds)
    if sharded:  # each worker reads its own shard of the training files: global batch / workers a step
        global_batch = int(train_ds.batch_size)
        data = transfer.EpochData(train_ds, val_ds, shard=(worker_id, workers), batch_size=per_worker_batch(
            global_batch, strategy.num_replicas_in_sync, workers))
    else:
        data = transfer.EpochData(train_ds, val_ds)
    steps = data.steps
    total = plans[-1].end
    chief_prints = bool(verbose) and is_chief(strategy)

    with strategy.scope():
        dist_val = strategy.experimental_distribute_dataset(data.val) if data.val is not None else None
        initial_epoch = sync_from_chief(strategy, model.variables, initial_epoch)
        history = transfer.ScheduleHistory()
        callbacks = list(callbacks)
        for callback in callbacks:
            callback.set_model(model)
            callback.set_params({"epochs": total, "steps": steps, "verbose": verbose})
        for callback in callbacks:
            callback.on_train_begin({})
        sync = sync_batch_norm and strategy.num_replicas_in_sync > 1
        with synchronized_batch_norm(model) if sync else contextlib.nullcontext(), _exposed_optimizer(model):
            for plan in plans:
                phase, number = plan.phase, plan.number
                record = transfer.phase_record(plan, skipped=plan.end <= initial_epoch)
                history.phases.append(record)
                if plan.end <= initial_epoch:
                    continue
                first = plan.first_epoch(initial_epoch)
                started = time.perf_counter()
                multipliers = transfer.prepare_phase(model, backbone, plan)
                runner, restore = transfer.phase_runner(model, backbone, plan, bn_momentum)
                try:
                    variables = runner.trainable_variables
                    record["trainable_params"] = int(sum(np.prod(v.shape) for v in variables))
                    restoring = first > plan.start and transfer.checkpoint_phase(resume_state) == number
                    offset = 0 if restoring else (first - plan.start) * steps
                    rate = transfer.phase_rate(phase, steps, offset=offset)
                    opt = transfer.make_optimizer(phase, rate, multipliers)
                    opt.build(variables)
                    model.optimizer = opt  # callbacks read it (TensorBoard logs its learning rate)
                    if restoring:
                        transfer.restore_optimizer_state(opt, resume_state)
                    train_step = eval_step = None
                    if chief_prints:
                        print(transfer.phase_header(number, len(plans), phase, plan.start, plan.end, first,
                                                    multipliers, False), flush=True)
                    model.stop_training = False
                    origin = plan.start if restoring else first
                    for epoch in range(first, plan.end):
                        epoch_started = time.perf_counter()
                        for callback in callbacks:
                            callback.on_epoch_begin(epoch, {})
                        if sharded:
                            dist_train = strategy.distribute_datasets_from_function(
                                _shard_input_fn(data, epoch, global_batch))
                        else:
                            dist_train = strategy.experimental_distribute_dataset(data.epoch(epoch))
                        if train_step is None:
                            train_step = _make_train_step(strategy, runner, opt, variables,
                                                          dist_train.element_spec)
                            eval_step = (_make_eval_step(strategy, runner, dist_val.element_spec)
                                         if dist_val is not None else None)
                        logs = _run_epoch(train_step, dist_train)
                        if eval_step is not None:
                            logs.update({f"val_{k}": v for k, v in _run_epoch(eval_step, dist_val).items()})
                        row = {"epoch": epoch + 1, "phase": number, "phase_name": phase.name,
                               "lr": _phase_lr(rate, epoch, origin, steps), **logs}
                        history.epochs.append(row)
                        record["epochs_run"] += 1
                        if chief_prints:
                            metrics = ", ".join(f"{k} {v:.4f}" for k, v in logs.items())
                            print(f"epoch {epoch + 1}/{total}: {metrics} "
                                  f"({time.perf_counter() - epoch_started:.1f}s)", flush=True)
                        transfer.check_finite(row)
                        if on_epoch_end is not None:
                            on_epoch_end(row, model, opt, number)
                        for callback in callbacks:
                            callback.on_epoch_end(epoch, dict(logs))
                        if getattr(model, "stop_training", False):
                            break
                finally:
                    for layer, momentum in restore.items():
                        layer.momentum = momentum
                record["seconds"] = time.perf_counter() - started
                if chief_prints:
                    ran = history.epochs[len(history.epochs) - record["epochs_run"]:]
                    print(transfer.phase_summary(number, len(plans), phase, record, ran), flush=True)
                if on_phase_end is not None:
                    on_phase_end(number, phase, history)
        for callback in callbacks:
            callback.on_train_end({})
    return history


def _phase_lr(rate, epoch, origin, steps) -> float:
    if isinstance(rate, transfer.PhaseLearningRate):
        return rate.value((epoch - origin) * steps)
    return float(rate)


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
    tmp = tempfile.mkdtemp(prefix=f"kcnn-worker{tf_config()['task']['index']}-")
    return runs.RunDir(tmp, config=config, recipe=recipe)


def finish_worker(run, strategy) -> bool:
    """On a non-chief worker: delete its temporary run folder, say so, return True (the recipe stops there).

    Returns False on the chief, which goes on to evaluate and write the run folder.
    """
    if is_chief(strategy):
        return False
    shutil.rmtree(run.path, ignore_errors=True)
    print(f"worker {worker_index(strategy)}: training done; the chief writes the run folder", flush=True)
    return True


__all__ = [
    "KINDS", "DistributeError", "make_strategy", "distributed", "configure_cpu_devices", "tf_config",
    "tf_config_is_chief", "is_chief", "worker_index", "write_dir", "remove_write_dir",
    "synchronized_batch_norm", "sync_from_chief", "fit_distributed", "per_worker_batch", "check_batch", "run_dir_for",
    "finish_worker",
]
