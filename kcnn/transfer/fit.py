"""`fit_schedule`: runs the phase plan of a schedule on a `classifier` with Keras' ``fit``, one call per epoch."""
from __future__ import annotations

from typing import Callable

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from kcnn import layers as kl
from kcnn import perf
from kcnn.transfer.backbones import Backbone
from kcnn.transfer.blocks import split_model
from kcnn.transfer.datasets import EpochData
from kcnn.transfer.feature_cache import FeatureCache
from kcnn.transfer.history import ScheduleHistory, EpochRecorder
from kcnn.transfer.losses import CrossEntropy, metrics_for
from kcnn.transfer.optim import averaged_weights, make_optimizer
from kcnn.transfer.plan import PhaseRun, check_finite, check_initial_epoch, make_plan, phase_runner, sublayers


LOSS = "sparse_categorical_crossentropy"  # what a phase without label smoothing computes (`CrossEntropy`)
METRICS = ("accuracy",)
_STOCHASTIC = (layers.Dropout, layers.SpatialDropout2D, layers.GaussianNoise, layers.GaussianDropout, kl.DropPath)

#: Epochs of at least this many steps get one ``fit`` call each and show Keras' own step bar (verbose=1);
#: a phase of shorter epochs is one ``fit`` call over all its epochs, with one bar over the phase.
LONG_EPOCH_STEPS = 64


class _Pinned(keras.callbacks.Callback):
    """Forwards every hook to a user callback whose ``model`` stays the classifier while a view trains.

    `fit_schedule` calls ``fit`` once per epoch; the user callback sees one training run per phase:
    ``set_model``, ``set_params`` and ``on_train_begin`` at the phase's start (`begin_phase`), ``on_train_end``
    at its end (`end_phase`), the epoch and batch hooks in between."""

    def __init__(self, inner, target, total_epochs: int):
        super().__init__()
        self.inner = inner
        self.target = target
        self.total_epochs = total_epochs
        self.runner = None
        self.started = False

    def set_model(self, model):
        self.runner = model

    def set_params(self, params):
        if not self.started:
            self.inner.set_params({**params, "epochs": self.total_epochs})

    def _sync(self):
        if getattr(self.target, "stop_training", False) and self.runner is not None:
            self.runner.stop_training = True

    def on_train_begin(self, logs=None):  # fit runs once per epoch: the phase begins and ends once (below)
        self.target.stop_training = False

    def on_train_end(self, logs=None):
        pass

    def begin_phase(self, steps: int):
        self.target.stop_training = False
        self.inner.set_model(self.target)
        self.inner.set_params({"epochs": self.total_epochs, "steps": steps, "verbose": 0})
        self.started = True
        self.inner.on_train_begin({})

    def end_phase(self):
        self.inner.on_train_end({})
        self.started = False

    def on_epoch_begin(self, epoch, logs=None):
        self.inner.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self.inner.on_epoch_end(epoch, logs)
        self._sync()

    def on_train_batch_begin(self, batch, logs=None):
        self.inner.on_train_batch_begin(batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self.inner.on_train_batch_end(batch, logs)
        self._sync()

    def on_test_begin(self, logs=None):
        self.inner.on_test_begin(logs)

    def on_test_end(self, logs=None):
        self.inner.on_test_end(logs)

    def on_test_batch_begin(self, batch, logs=None):
        self.inner.on_test_batch_begin(batch, logs)

    def on_test_batch_end(self, batch, logs=None):
        self.inner.on_test_batch_end(batch, logs)


def fit_schedule(model: keras.Model, backbone: Backbone, schedule, train_ds, val_ds=None, *, callbacks=(),
                 initial_epoch: int = 0, steps_per_execution: int = perf.DEFAULT_STEPS_PER_EXECUTION,
                 verbose=1, feature_cache: bool = True, augmented: bool | None = None,
                 bn_momentum: float | None = kl.BN_MOMENTUM, on_phase_end: Callable | None = None,
                 on_epoch_end: Callable | None = None, resume_state: dict | None = None,
                 validation_freq: int = 1, history: ScheduleHistory | None = None,
                 on_step: Callable | None = None, resume_step: int = 0) -> ScheduleHistory:
    """Fine-tune a `classifier` through the phases of a schedule.

    Each phase gets its own optimizer (loss: sparse categorical cross-entropy, metric: accuracy) after setting
    trainability: the head always trains, the phase's blocks train, every other layer is frozen (the plan:
    `kcnn.transfer.plan.make_plan`). Epoch numbers run on across phases. Before each phase a line such as
    ``phase 2/3 'unfreeze': train=top:2, lr=1e-4, epochs 4-6`` is printed, after it a summary line; with
    ``verbose=1`` one progress bar per phase counts its epochs (or Keras' bar counts the steps of long
    epochs), with ``verbose=2`` one line per epoch.

    Data: a `kcnn.data.Splits` gives epochs whose order and augmentation are a pure function of (seed, epoch),
    so a run resumed with ``initial_epoch`` and ``resume_state`` sees the batches an uninterrupted run saw and,
    with op determinism on (`kcnn.training.set_seed`), ends with the same weights bit for bit. A plain
    ``tf.data.Dataset`` (or ``(x, y)`` arrays, batched by 32) is iterated once per epoch as it is.

    Feature caching: a head-only phase (with ``bn="frozen"``, or a backbone without dropout) trains the head
    on backbone features computed once (resize + preprocess + backbone over the data) through a small model
    that shares the head layers, so the classifier's head gets the trained weights. From a `Splits` the
    features are computed in a fixed order and shuffled per epoch by (seed, epoch); from a plain dataset it is
    read twice to check that it gives the same images each pass (no random augmentation). Features stay valid
    until a phase trains backbone blocks.

    Args:
        model: A `classifier` model (or one loaded from its ``.keras`` file).
        backbone: The `Backbone` it was built from (block structure).
        schedule: A `Schedule`, a list of `Phase`, a preset name or a schedule file (see `load_schedule`).
        train_ds: A `kcnn.data.Splits`, or a batched ``tf.data.Dataset`` of (raw images in [0, 255], integer
            labels[, sample weights]), or an ``(x, y)`` tuple of arrays. Must be finite.
        val_ds: Validation data in the same form, or None (a `Splits` brings its own).
        callbacks: Keras callbacks. They see the full classifier as ``self.model`` in every phase (also when a
            feature-cache model is training); ``on_train_begin``/``on_train_end`` run once per phase;
            ``stop_training`` (EarlyStopping) ends the current phase only.
        initial_epoch: Number of global epochs already finished (resume): phases that ended by then are
            skipped; the phase containing it continues from there. Load the model's state first
            (`kcnn.transfer.restore_model_state`).
        steps_per_execution: Passed to ``compile``; default `kcnn.perf.DEFAULT_STEPS_PER_EXECUTION` (16).
            1 under a strategy with several replicas (Keras' fit fails there with more).
        verbose: 0 silent, 1 a progress bar per phase, 2 a line per epoch.
        feature_cache: Allow the feature cache for head-only phases.
        augmented: True: the training data are randomly augmented (never cache); False: they are not (cache
            even if two passes differ); None: detect.
        bn_momentum: Momentum for the BN layers that train during ``bn="train"`` phases (restored after the
            phase); None keeps each layer's own (keras.applications: 0.99, too slow for few steps).
        on_phase_end: ``on_phase_end(phase_number, phase, history)`` after every phase (1-based number).
        on_epoch_end: ``on_epoch_end(row, model, optimizer, phase_number)`` after every epoch: ``row`` is the
            history row; ``optimizer`` the phase's (built); e.g. to write a checkpoint with `training_state`.
            A true return value ends the phase after this epoch (early stopping). An epoch whose loss is NaN
            or infinite raises `kcnn.transfer.Diverged` instead (before this hook).
        resume_state: The arrays of the checkpoint written after epoch ``initial_epoch``: when it falls inside
            a phase, that phase's optimizer (slots, iteration count, so the learning-rate schedule's position)
            is restored from it. Without it a resumed phase starts a fresh optimizer at the scheduled rate.
        validation_freq: Validate after every ``validation_freq``-th epoch (global numbers) and after each
            phase's last epoch; the other rows have no ``val_*`` entries. 1 (default): every epoch.
        history: The `ScheduleHistory` to fill (the caller sees each phase's record while it runs); default a
            new one.
        on_step: ``on_step(runner, optimizer, phase_number, epoch, step)`` after each graph call inside a long
            epoch (one ``fit`` per epoch: at least `LONG_EPOCH_STEPS` steps of keyed data): ``epoch`` 0-based,
            ``step`` the training steps of that epoch done so far; e.g. to write a checkpoint inside the epoch
            with `training_state` plus `metric_state(runner)`.
        resume_step: Steps of epoch ``initial_epoch`` (0-based) already done, when ``resume_state`` was written
            inside that epoch (by ``on_step``): the epoch continues at the next batch of its keyed order, with the
            optimizer and the epoch's running metrics restored, so it ends as the uninterrupted epoch ends.

    The phase's loss is `kcnn.transfer.CrossEntropy` with its ``label_smoothing`` (integer or soft labels: mixed
    batches of `kcnn.data.Mixing`); the metrics `kcnn.transfer.losses.metrics_for` the class count (accuracy,
    macro-F1, top-5 from 10 classes). With ``phase.ema`` the validation rows score the weight average, and the
    model holds the average after the phase.

    Returns:
        A `ScheduleHistory`. The model is left compiled (loss, accuracy, a stock optimizer of the last phase)
        and with the trainability of the last phase.

    Example:
        >>> bb = backbone("resnet20")
        >>> model = classifier(bb, 10)
        >>> history = fit_schedule(model, bb, "two-phase", splits)
        >>> history.epochs[-1]["val_accuracy"]
    """
    initial_epoch = check_initial_epoch(initial_epoch)
    if isinstance(validation_freq, bool) or not isinstance(validation_freq, (int, np.integer)) \
            or validation_freq < 1:
        raise ValueError(f"`validation_freq` must be an int >= 1. Received: validation_freq={validation_freq!r}")
    plans = make_plan(model, backbone, schedule)
    data = EpochData(train_ds, val_ds)
    if tf.distribute.has_strategy() and tf.distribute.get_strategy().num_replicas_in_sync > 1:
        # Keras 3.15's fit fails under MirroredStrategy with more ("You must feed a value for placeholder
        # tensor" in multi_step_on_iterator)
        steps_per_execution = 1
    pre, body, head = split_model(model)
    history = ScheduleHistory() if history is None else history
    classes = int(model.outputs[0].shape[-1])
    cache = FeatureCache(pre, body, head)
    stochastic_body = any(isinstance(layer, _STOCHASTIC) for layer in sublayers(body))
    pinned = [_Pinned(c, model, plans[-1].end) for c in callbacks]
    resident_val = None  # [the validation data one fit of many short epochs reads], made once
    count = len(plans)
    last_phase = plans[-1].phase
    for plan in plans:
        phase, number, end = plan.phase, plan.number, plan.end
        with PhaseRun(plan, model, backbone, history, count=count, steps=data.steps, initial_epoch=initial_epoch,
                      resume_state=resume_state, verbose=bool(verbose), on_phase_end=on_phase_end,
                      resume_step=resume_step) as run:
            if run.skipped:
                continue
            record, first = run.record, run.first
            use_cache = (feature_cache and plan.head_only and augmented is not True
                         and (phase.bn == "frozen" or not stochastic_body))
            if use_cache:
                if data.keyed:
                    record["cache_seconds"] = cache.fill_fixed(data.fixed(), data.val, verbose)
                else:
                    record["cache_seconds"] = cache.fill(data.epoch(first), data.val, augmented, verbose)
                use_cache = cache.ready
            record["cached"] = bool(use_cache)
            run.header(use_cache)
            if use_cache:
                runner, fit_val = cache.runner(), cache.val_dataset()
                epochs_data = ((lambda a, b: cache.epochs_dataset(data.seed, a, b)) if data.keyed
                               else (lambda a, b: cache.train_dataset()))
            else:
                runner, run.bn_restore = phase_runner(model, backbone, plan, bn_momentum)
                if resident_val is None:
                    resident_val = [resident(data.val) if data.keyed and data.steps < LONG_EPOCH_STEPS
                                    else data.val]
                fit_val = resident_val[0]
                epochs_data = data.epochs
            # keyed data: short epochs run as one fit over the phase (see fit_segments); a plain dataset is one
            # fit per epoch, as Keras iterates it (its length may be unknown)
            segments = fit_segments(first, end, data.steps if data.keyed else LONG_EPOCH_STEPS)
            execution = (segment_execution(data.steps, steps_per_execution)
                         if len(segments) == 1 and end - first > 1 else steps_per_execution)
            optimizer = run.optimizer()
            loss = CrossEntropy(phase.label_smoothing)
            runner.compile(optimizer=optimizer, loss=loss, metrics=metrics_for(classes),
                           steps_per_execution=execution)
            model.compile(optimizer=optimizer, loss=loss, metrics=metrics_for(classes))  # what callbacks see
            run.restore_optimizer(runner.trainable_variables)
            recorder = EpochRecorder(history, number, phase, run.rate, run.origin, data.steps)
            progress = _Progress(verbose, data.steps, execution, first, end, schedule_total=plans[-1].end)
            validate_at = {e for e in range(first + 1, end + 1) if e % validation_freq == 0 or e == end}

            def epoch_end(number=number, optimizer=optimizer, progress=progress, runner=runner, fit_val=fit_val,
                          run=run, validate_at=validate_at):
                row = history.epochs[-1]
                if phase.ema and fit_val is not None and row["epoch"] in validate_at:
                    with averaged_weights(optimizer):  # the average is what is validated
                        scores = runner.evaluate(fit_val, verbose=0, return_dict=True)
                    row.update({f"val_{k}": float(v) for k, v in scores.items()})
                progress.epoch_done(row)
                check_finite(row)
                run.epoch_done()
                if on_epoch_end is not None:
                    return on_epoch_end(row, model, optimizer, number)
                return False

            run.start_clock()
            model.stop_training = False
            for callback in pinned:
                callback.begin_phase(data.steps)
            try:
                for a, b in segments:
                    # keyed data: epochs a..b-1 back to back, each exactly data.steps batches
                    validated = [e for e in range(a + 1, b + 1) if e in validate_at]
                    # one keyed epoch per fit: checkpoints inside it (on_step), and a resume inside it goes on
                    # at its next batch
                    one_epoch = b == a + 1 and data.keyed
                    skip = run.resume_step if one_epoch and a == first else 0
                    hooks = [_StepHook(on_step, runner, optimizer, number, a, skip, data.steps)] \
                        if on_step is not None and one_epoch else []
                    ds = epochs_data(a, b)
                    if skip:
                        _build_metrics(runner, ds)
                        hooks.insert(0, _RestoreMetrics(runner, resume_state))
                    # with a weight average, epoch_end validates the average instead of Keras the weights
                    runner.fit(ds.skip(skip) if skip else ds, validation_data=None if phase.ema else fit_val,
                               initial_epoch=a, epochs=b, steps_per_epoch=data.steps - skip,
                               validation_freq=validated, verbose=progress.fit_verbose, shuffle=False,
                               callbacks=[recorder, *progress.callbacks(), *pinned, *hooks,
                                          _EpochEnd(epoch_end, model)])
                    if getattr(model, "stop_training", False):
                        break
            finally:
                progress.close()
                for callback in pinned:
                    callback.end_phase()
        if plan.blocks or phase.bn == "train":
            cache.invalidate()
        last_phase = phase
    model.compile(optimizer=make_optimizer(last_phase), loss=CrossEntropy(last_phase.label_smoothing),
                  metrics=metrics_for(classes), steps_per_execution=steps_per_execution)
    return history


def fit_segments(first: int, end: int, steps: int) -> list[tuple[int, int]]:
    """The ``fit`` calls of a phase's epochs ``first..end-1`` as ``(initial_epoch, epochs)`` pairs.

    Short epochs (under `LONG_EPOCH_STEPS` steps) run as one call: starting a ``fit`` (its iterators, its
    callbacks, the validation pass's setup) costs tens of milliseconds, more than a one-step epoch itself
    (the demo's 260 epochs of one step spent most of their time there). Long epochs run one call each, so
    that every epoch starts its own iterator and ``steps_per_execution`` never crosses an epoch's end.

    Example:
        >>> fit_segments(0, 3, 1), fit_segments(0, 2, 100)
        ([(0, 3)], [(0, 1), (1, 2)])
    """
    if steps < LONG_EPOCH_STEPS:
        return [(first, end)] if end > first else []
    return [(epoch, epoch + 1) for epoch in range(first, end)]


def segment_execution(steps: int, steps_per_execution: int) -> int:
    """Steps per graph call when one ``fit`` runs several epochs of ``steps`` steps from one iterator: the
    largest divisor of ``steps`` not above ``steps_per_execution``, so that no call crosses an epoch's end
    (Keras' multi-step loop stops only when the data run out).

    Example:
        >>> segment_execution(1, 16), segment_execution(12, 16), segment_execution(48, 16), segment_execution(7, 4)
        (1, 12, 16, 1)
    """
    return max(d for d in range(1, max(1, min(steps, steps_per_execution)) + 1) if steps % d == 0)


#: A validation set of at most this many bytes (float32 images) is read into memory once for a fit of many
#: short epochs (`resident`).
RESIDENT_VAL_BYTES = 64 * 2**20


def resident(ds, limit: int = RESIDENT_VAL_BYTES):
    """``ds`` (finite, unaugmented, fixed order) as in-memory batches, when they take at most ``limit`` bytes.

    Keras validates at every epoch's end with a fresh iterator; over a pipeline of gathers, renders and
    autotuned prefetches that start costs more than a one-step epoch's training (the demo's epochs:
    docs/performance.md). The batches and their order are kept, so the metrics are the same. Larger or unknown-size
    data are returned as they are.
    """
    if ds is None:
        return None
    batches, size = [], 0
    for batch in ds:
        arrays = tuple(np.asarray(t) for t in (batch if isinstance(batch, (tuple, list)) else (batch,)))
        size += sum(a.nbytes for a in arrays)
        if size > limit:
            return ds
        batches.append(arrays)
    if not batches:
        return ds
    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = False
    options.autotune.enabled = False
    columns = tuple(zip(*batches))
    sizes = [len(b[0]) for b in batches]
    if len(set(sizes[:-1])) > 1 or sizes[-1] > sizes[0]:
        return ds  # batches of several sizes: keep the dataset's own
    whole = tuple(np.concatenate(c) for c in columns)
    light = tf.data.Dataset.from_tensor_slices(whole if len(whole) > 1 else whole[0]).batch(sizes[0])
    return light.with_options(options)


def metric_state(runner) -> dict[str, np.ndarray]:
    """The running metrics of ``runner``'s epoch so far (loss mean, accuracy, ...) as checkpoint arrays."""
    return {f"metric_{i:05d}": np.asarray(v) for i, v in enumerate(runner.metrics_variables)}


def _build_metrics(runner, ds) -> None:
    """Create ``runner``'s metric variables (Keras makes them at the first training step) from one batch, so that
    a resumed epoch's running metrics can be loaded before its first step; Keras resets their values at the
    epoch's start."""
    batch = next(iter(ds.take(1)))
    x, y = batch[0], batch[1]
    weight = batch[2] if len(batch) > 2 else None
    runner.compute_metrics(x, y, runner(x, training=False), sample_weight=weight)


class _StepHook(keras.callbacks.Callback):
    """Calls ``on_step(runner, optimizer, phase, epoch, step)`` after every graph call of a one-epoch fit."""

    def __init__(self, on_step, runner, optimizer, phase: int, epoch: int, skipped: int, steps: int):
        super().__init__()
        self.on_step, self.runner, self.optimizer = on_step, runner, optimizer
        self.phase, self.epoch, self.skipped, self.steps = phase, epoch, skipped, steps

    def on_train_batch_end(self, batch, logs=None):
        done = self.skipped + int(batch) + 1
        if done < self.steps:  # the epoch's last step is followed by its end-of-epoch checkpoint
            self.on_step(self.runner, self.optimizer, self.phase, self.epoch, done)


class _RestoreMetrics(keras.callbacks.Callback):
    """At the resumed epoch's start (Keras has just reset the metrics), the running metrics of the checkpoint."""

    def __init__(self, runner, arrays):
        super().__init__()
        self.runner, self.arrays = runner, arrays

    def on_epoch_begin(self, epoch, logs=None):
        variables = self.runner.metrics_variables
        saved = sorted(k for k in self.arrays if k.startswith("metric_"))
        if len(saved) != len(variables):
            raise ValueError(f"The checkpoint holds {len(saved)} metric variables but the phase has "
                             f"{len(variables)}: it was written with other settings.")
        for key, variable in zip(saved, variables):
            variable.assign(self.arrays[key])


class _EpochEnd(keras.callbacks.Callback):
    """Calls ``fn()`` at each epoch's end, after the recorder and the user's callbacks (it is listed last); a true
    return value stops the fit and the phase (``target.stop_training``)."""

    def __init__(self, fn, target):
        super().__init__()
        self.fn, self.target = fn, target

    def on_epoch_end(self, epoch, logs=None):
        if self.fn():
            self.model.stop_training = True
            self.target.stop_training = True


class _EpochBar(keras.callbacks.ProgbarLogger):
    """Keras' step bar, headed with the global epoch numbers (fit runs one epoch at a time)."""

    def __init__(self, total: int):
        super().__init__()
        self.total, self.steps = total, None

    def set_params(self, params):
        self.steps = params.get("steps")
        super().set_params({**params, "epochs": self.total})

    def on_train_batch_end(self, batch, logs=None):
        # with steps_per_execution, Keras reports the last step of an execution as if it were full ("128/113")
        super().on_train_batch_end(min(batch, (self.steps or batch + 1) - 1), logs)


class _Progress:
    """What the console shows while a phase runs: true counts, and short.

    verbose=1: epochs shorter than `LONG_EPOCH_STEPS` steps advance one bar over the phase's epochs (the
    demo's one-step epochs print one line per phase, not one bar per epoch); longer epochs show Keras' step
    bar, headed ``Epoch e/N`` with the global numbers. verbose=2: one line per epoch."""

    def __init__(self, verbose, steps, steps_per_execution, first, end, schedule_total):
        self.verbose, self.first, self.end, self.total = verbose, first, end, schedule_total
        self.long = verbose == 1 and steps >= LONG_EPOCH_STEPS
        self.fit_verbose = 1 if self.long else 0
        self.bar = None
        if verbose == 1 and not self.long:
            self.bar = keras.utils.Progbar(end - first, unit_name="epoch",
                                           stateful_metrics=["loss", "accuracy", "val_loss", "val_accuracy"])

    def callbacks(self):
        return [_EpochBar(self.total)] if self.long else []

    def epoch_done(self, row):
        keys = ("loss", "accuracy", "val_loss", "val_accuracy")
        values = [(k, row[k]) for k in keys if row.get(k) is not None]
        if self.bar is not None:
            self.bar.update(row["epoch"] - self.first, values=values, finalize=row["epoch"] >= self.end)
        elif self.verbose == 2:
            metrics = ", ".join(f"{k} {v:.4f}" for k, v in values)
            print(f"epoch {row['epoch']}/{self.total}: {metrics}", flush=True)

    def close(self):
        if self.bar is not None and self.bar._seen_so_far < self.bar.target:  # stopped early
            print(flush=True)
