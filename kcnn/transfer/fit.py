"""`fit_schedule`: runs the phases of a schedule on a `classifier` as consecutive ``fit`` calls."""
from __future__ import annotations

import time
from typing import Callable

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from kcnn import layers as kl
from kcnn import perf
from kcnn.transfer.backbones import Backbone
from kcnn.transfer.blocks import block_layers, lr_multipliers, set_trainable, split_model
from kcnn.transfer.datasets import as_dataset, steps_per_epoch
from kcnn.transfer.feature_cache import _FeatureCache
from kcnn.transfer.history import ScheduleHistory, _Recorder, phase_header, phase_summary
from kcnn.transfer.optim import make_optimizer, phase_rate
from kcnn.transfer.schedule import load_schedule, resolve_train


LOSS = "sparse_categorical_crossentropy"
METRICS = ("accuracy",)


class TrainView(keras.Model):
    """The classifier's layers called in order, with the backbone's ``training`` flag fixed at run time."""

    def __init__(self, pre, body, head, body_training: bool):
        super().__init__(name="phase_view")
        self.pre_layers = list(pre)
        self.body = body
        self.head_layers = list(head)
        self.body_training = body_training

    def call(self, inputs, training=None):
        x = inputs
        for layer in self.pre_layers:
            x = layer(x)
        x = self.body(x, training=training if self.body_training else False)
        for layer in self.head_layers:
            x = layer(x)
        return x


class _Pinned(keras.callbacks.Callback):
    """Forwards every hook to a user callback whose ``model`` stays the classifier while a view trains."""

    def __init__(self, inner, target):
        super().__init__()
        self.inner = inner
        self.target = target
        self.runner = None

    def set_model(self, model):
        self.runner = model
        self.inner.set_model(self.target)

    def set_params(self, params):
        self.inner.set_params(params)

    def _sync(self):
        if getattr(self.target, "stop_training", False) and self.runner is not None:
            self.runner.stop_training = True

    def on_train_begin(self, logs=None):
        self.target.stop_training = False
        self.inner.on_train_begin(logs)

    def on_train_end(self, logs=None):
        self.inner.on_train_end(logs)

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
                 bn_momentum: float | None = kl.BN_MOMENTUM,
                 on_phase_end: Callable | None = None) -> ScheduleHistory:
    """Fine-tune a `classifier` through the phases of a schedule.

    Each phase is one ``fit`` with its own optimizer (loss: sparse categorical cross-entropy, metric:
    accuracy) after setting trainability: the head always trains, the phase's blocks train, every other layer
    is frozen. Epoch numbers run on across phases (phase k starts where phase k-1 was planned to end). Before
    each phase a line such as ``phase 2/3 'unfreeze': train=top:2, lr=1e-4, epochs 4-6`` is printed, after it
    a summary line.

    Feature caching: a head-only phase (with ``bn="frozen"``, or a backbone without dropout) trains the head
    on backbone features computed once (resize + preprocess + backbone over the data) through a small model
    that shares the head layers, so the classifier's head gets the trained weights. The data are read twice to
    check that they are the same images each pass (no random augmentation; if only their order changes, the
    cached features are reshuffled each epoch). Features stay valid until a phase trains backbone blocks.
    Random ``tf.data`` ops repeat exactly on every pass once a global seed is set
    (``keras.utils.set_random_seed``), so such data count as unaugmented: every epoch sees the same images.

    Args:
        model: A `classifier` model (or one loaded from its ``.keras`` file).
        backbone: The `Backbone` it was built from (block structure).
        schedule: A `Schedule`, a list of `Phase`, a preset name or a schedule file (see `load_schedule`).
        train_ds: Batched ``tf.data.Dataset`` of (raw images in [0, 255], integer labels[, sample weights]),
            or an ``(x, y)`` tuple of arrays (batched by 32). Must be finite.
        val_ds: Validation data in the same form, or None.
        callbacks: Keras callbacks. They see the full classifier as ``self.model`` in every phase (also when a
            feature-cache model is training); ``stop_training`` (EarlyStopping) ends the current phase only.
        initial_epoch: Number of global epochs already finished (resume): phases that ended by then are
            skipped; the phase containing it continues from there, its learning-rate schedule included. Load
            the weights saved at that epoch first. Optimizer state starts fresh.
        steps_per_execution: Passed to ``compile``; default `kcnn.perf.DEFAULT_STEPS_PER_EXECUTION` (16).
            1 under a strategy with several replicas (Keras' fit fails there with more).
        verbose: Keras verbosity; 0 also silences the phase lines.
        feature_cache: Allow the feature cache for head-only phases.
        augmented: True: the training data are randomly augmented (never cache); False: they are not (cache
            even if the two passes differ); None: detect.
        bn_momentum: Momentum for the BN layers that train during ``bn="train"`` phases (restored after the
            phase); None keeps each layer's own (keras.applications: 0.99, too slow for few steps).
        on_phase_end: Called after every phase as ``on_phase_end(phase_number, phase, history)`` (1-based
            number), e.g. to save weights or plots.

    Returns:
        A `ScheduleHistory`. The model is left compiled (loss, accuracy, a stock optimizer of the last phase)
        and with the trainability of the last phase.

    Example:
        >>> bb = backbone("resnet20")
        >>> model = classifier(bb, 10)
        >>> history = fit_schedule(model, bb, "two-phase", train_ds, val_ds)
        >>> history.epochs[-1]["val_accuracy"]
    """
    schedule = load_schedule(schedule)
    train_ds, val_ds = as_dataset(train_ds), as_dataset(val_ds)
    if isinstance(initial_epoch, bool) or not isinstance(initial_epoch, int) or initial_epoch < 0:
        raise ValueError("`initial_epoch` must be an integer >= 0. Received: "
                         f"initial_epoch={initial_epoch!r}")
    if tf.distribute.has_strategy() and tf.distribute.get_strategy().num_replicas_in_sync > 1:
        # Keras 3.15's fit fails under MirroredStrategy with more ("You must feed a value for placeholder
        # tensor" in multi_step_on_iterator)
        steps_per_execution = 1
    pre, body, head = split_model(model)
    all_blocks = block_layers(model, backbone)
    plans = []
    for number, phase in enumerate(schedule, start=1):
        try:
            plans.append(resolve_train(phase.train, [b for b, _ in all_blocks]))
        except ValueError as err:
            raise ValueError(f"phase {number} ({phase.name!r}): {err}") from None
    steps = steps_per_epoch(train_ds)
    history = ScheduleHistory()
    cache = _FeatureCache(pre, body, head)
    stochastic_body = any(isinstance(layer, _STOCHASTIC) for layer in _all_sublayers(body))
    last_phase = schedule[-1]
    for number, (phase, (start, end), trained) in enumerate(
            zip(schedule, schedule.boundaries(), plans), start=1):
        record = dict(phase=number, name=phase.name, train=phase.train_spec, blocks=trained,
                      first_epoch=start + 1, last_epoch=end, epochs_run=0, skipped=end <= initial_epoch,
                      cached=False, trainable_params=0, seconds=0.0, cache_seconds=0.0)
        history.phases.append(record)
        if end <= initial_epoch:
            continue
        first = max(start, initial_epoch)
        set_trainable(model, backbone, list(trained) or "head")
        record["trainable_params"] = int(sum(np.prod(v.shape) for v in model.trainable_variables))
        multipliers = None
        if phase.lr_mult is not None and trained:
            multipliers = lr_multipliers(model, backbone, trained, phase.lr_mult)
        rate = phase_rate(phase, steps, offset=(first - start) * steps)
        use_cache = (feature_cache and not trained and augmented is not True
                     and (phase.bn == "frozen" or not stochastic_body))
        if use_cache:
            record["cache_seconds"] = cache.fill(train_ds, val_ds, augmented, verbose)
            use_cache = cache.ready
        record["cached"] = bool(use_cache)
        if verbose:
            line = phase_header(number, len(schedule), phase, start, end, first, multipliers, use_cache)
            print(line, flush=True)
        if use_cache:
            runner, fit_train, fit_val = cache.runner(), cache.train_dataset(), cache.val_dataset()
        else:
            runner = TrainView(pre, body, head, body_training=phase.bn == "train")
            fit_train, fit_val = train_ds, val_ds
        optimizer = make_optimizer(phase, rate, multipliers)
        runner.compile(optimizer=optimizer, loss=LOSS, metrics=list(METRICS),
                       steps_per_execution=steps_per_execution)
        model.compile(optimizer=optimizer, loss=LOSS, metrics=list(METRICS))  # what callbacks see
        recorder = _Recorder(history, number, phase, rate, first, steps)
        started, before = time.perf_counter(), len(history.epochs)
        restore = set_bn_momentum(body, bn_momentum) if phase.bn == "train" else {}
        try:
            runner.fit(fit_train, validation_data=fit_val, initial_epoch=first, epochs=end, verbose=verbose,
                       shuffle=False, callbacks=[recorder, *(_Pinned(c, model) for c in callbacks)])
        finally:
            for layer, momentum in restore.items():
                layer.momentum = momentum
        record["seconds"] = time.perf_counter() - started
        record["epochs_run"] = len(history.epochs) - before
        if trained or phase.bn == "train":
            cache.invalidate()
        if verbose:
            print(phase_summary(number, len(schedule), phase, record, history.epochs[before:]), flush=True)
        if on_phase_end is not None:
            on_phase_end(number, phase, history)
        last_phase = phase
    model.compile(optimizer=make_optimizer(last_phase), loss=LOSS, metrics=list(METRICS),
                  steps_per_execution=steps_per_execution)
    return history


_STOCHASTIC = (layers.Dropout, layers.SpatialDropout2D, layers.GaussianNoise, layers.GaussianDropout)


def set_bn_momentum(body, momentum) -> dict:
    """Set the momentum of the trainable BN layers; returns {layer: old momentum} to restore."""
    if momentum is None:
        return {}
    old = {}
    for layer in _all_sublayers(body):
        if isinstance(layer, layers.BatchNormalization) and layer.trainable:
            old[layer] = layer.momentum
            layer.momentum = float(momentum)
    return old


def _all_sublayers(model):
    out = []
    for layer in model.layers:
        out.append(layer)
        if isinstance(layer, keras.Model):
            out.extend(_all_sublayers(layer))
    return out
