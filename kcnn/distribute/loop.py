"""The custom training loop of `kcnn.distribute` for MultiWorkerMirroredStrategy (Keras 3's ``fit`` fails
there): `fit_distributed` runs a kcnn schedule's phase plan with ``strategy.run`` steps, each worker reading its
own shard of a `kcnn.data.Splits`' training files (`per_worker_batch`, `check_batch`); `sync_from_chief` copies
the chief's state to every worker. Import it as ``kcnn.distribute``: the strategies, the global batch and batch
norm are described there.
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from kcnn import transfer
from kcnn import layers as kl
from kcnn.transfer import losses
from kcnn.distribute import DistributeError, is_chief, synchronized_batch_norm



def _unpack(batch):
    if isinstance(batch, dict) or not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise ValueError("fit_distributed's datasets must yield (images, labels) or "
                         "(images, labels, weights).")
    return batch[0], batch[1], (batch[2] if len(batch) == 3 else None)


def _replica_sums(runner, batch, training: bool, label_smoothing: float = 0.0):
    """(per-example losses, correct predictions, top-5 hits, examples) of one replica's batch; labels are
    integers or soft labels (mixed batches), the loss `kcnn.transfer.losses.per_example_loss`."""
    x, y, weights = _unpack(batch)
    probs = runner(x, training=training)
    classes = int(probs.shape[-1])
    labels = tf.cast(losses.hard_labels(y, classes), "int64")
    per_example = losses.per_example_loss(y, probs, label_smoothing)
    if weights is not None:
        per_example = per_example * tf.cast(tf.reshape(weights, [-1]), per_example.dtype)
    correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probs, axis=-1), labels), "float32"))
    top5 = tf.reduce_sum(tf.cast(tf.math.in_top_k(tf.cast(labels, "int32"), tf.cast(probs, "float32"),
                                                  min(5, classes)), "float32"))
    count = tf.cast(tf.shape(labels)[0], "float32")
    return per_example, correct, top5, count


def _make_train_step(strategy, runner, optimizer, variables, element_spec, label_smoothing=0.0):
    def replica_step(batch):
        context = tf.distribute.get_replica_context()
        with tf.GradientTape() as tape:
            per_example, correct, top5, count = _replica_sums(runner, batch, True, label_smoothing)
            global_count = context.all_reduce(tf.distribute.ReduceOp.SUM, count)
            # the mean over the *actual* global batch (the last one of an epoch may be smaller)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=tf.cast(global_count, "int64"))
            if runner.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(runner.losses))
        gradients = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(gradients, variables))  # sums the replicas' gradients
        return tf.reduce_sum(per_example), correct, top5, count

    def step(batch):
        sums = strategy.run(replica_step, args=(batch,))
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None) for value in sums]

    return tf.function(step, input_signature=[element_spec])


def _make_eval_step(strategy, runner, element_spec, label_smoothing=0.0):
    def replica_step(batch):
        per_example, correct, top5, count = _replica_sums(runner, batch, False, label_smoothing)
        return tf.reduce_sum(per_example), correct, top5, count

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


def _run_epoch(step, dataset, classes: int) -> dict:
    totals = np.zeros(4)
    for batch in dataset:
        totals += [float(v) for v in step(batch)]
    loss_sum, correct, top5, count = totals
    count = max(count, 1.0)
    logs = {"loss": float(loss_sum / count), "accuracy": float(correct / count)}
    if classes >= losses.TOP5_MIN_CLASSES:
        logs["top5_accuracy"] = float(top5 / count)
    return logs


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
                    verbose: int = 1, history: transfer.ScheduleHistory | None = None) -> transfer.ScheduleHistory:
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
    per_worker = check_batch(strategy, train_ds)
    sharded = per_worker is not None
    if sharded:  # each worker reads its own shard of the training files: global batch / workers a step
        workers, worker_id = _workers(strategy)
        global_batch = int(train_ds.batch_size)
        data = transfer.EpochData(train_ds, val_ds, shard=(worker_id, workers), batch_size=per_worker)
    else:
        data = transfer.EpochData(train_ds, val_ds)
    steps = data.steps
    total = plans[-1].end
    chief_prints = bool(verbose) and is_chief(strategy)

    with strategy.scope():
        dist_val = strategy.experimental_distribute_dataset(data.val) if data.val is not None else None
        initial_epoch = sync_from_chief(strategy, model.variables, initial_epoch)
        history = transfer.ScheduleHistory() if history is None else history
        classes = int(model.outputs[0].shape[-1])
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
                with transfer.PhaseRun(plan, model, backbone, history, count=len(plans), steps=steps,
                                       initial_epoch=initial_epoch, resume_state=resume_state,
                                       verbose=chief_prints, on_phase_end=on_phase_end) as run:
                    if run.skipped:
                        continue
                    runner, run.bn_restore = transfer.phase_runner(model, backbone, plan, bn_momentum)
                    variables = runner.trainable_variables
                    opt = run.optimizer()
                    opt.build(variables)
                    model.optimizer = opt  # callbacks read it (TensorBoard logs its learning rate)
                    run.restore_optimizer(variables)
                    train_step = eval_step = None
                    run.header(cached=False)
                    model.stop_training = False
                    for epoch in range(run.first, plan.end):
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
                                                          dist_train.element_spec, phase.label_smoothing)
                            eval_step = (_make_eval_step(strategy, runner, dist_val.element_spec,
                                                         phase.label_smoothing)
                                         if dist_val is not None else None)
                        logs = _run_epoch(train_step, dist_train, classes)
                        if eval_step is not None:
                            with transfer.averaged_weights(opt):  # a weight average is what is validated
                                scores = _run_epoch(eval_step, dist_val, classes)
                            logs.update({f"val_{k}": v for k, v in scores.items()})
                        row = {"epoch": epoch + 1, "phase": number, "phase_name": phase.name,
                               "lr": _phase_lr(run.rate, epoch, run.origin, steps), **logs}
                        history.epochs.append(row)
                        run.epoch_done()
                        if chief_prints:
                            metrics = ", ".join(f"{k} {v:.4f}" for k, v in logs.items())
                            print(f"epoch {epoch + 1}/{total}: {metrics} "
                                  f"({time.perf_counter() - epoch_started:.1f}s)", flush=True)
                        transfer.check_finite(row)
                        if on_epoch_end is not None and on_epoch_end(row, model, opt, number):
                            model.stop_training = True  # early stopping: the phase ends here
                        for callback in callbacks:
                            callback.on_epoch_end(epoch, dict(logs))
                        if getattr(model, "stop_training", False):
                            break
        for callback in callbacks:
            callback.on_train_end({})
    return history


def _phase_lr(rate, epoch, origin, steps) -> float:
    if isinstance(rate, transfer.PhaseLearningRate):
        return rate.at_batch((epoch - origin) * steps)
    return float(rate)
