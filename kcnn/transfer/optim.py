"""Optimizers of a phase: warm-up / cosine learning rates and per-variable (per-block) rate multipliers.

The ``Layerwise*`` optimizers and `PhaseLearningRate` are registered Keras serializables (package "kcnn"),
so saved ``.keras`` files that hold them load by those names.
"""
from __future__ import annotations

import contextlib
import math

import keras
from keras import ops

from kcnn import _compat
from kcnn.transfer.schedule import Phase


@keras.saving.register_keras_serializable(package="kcnn")
class PhaseLearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """The learning rate of one phase, by optimizer step: linear warm-up to ``rate``, then constant, cosine or
    linear decay to 0 at ``total_steps``; or one-cycle (``decay="onecycle"``).

    ``offset`` shifts the step, so a phase resumed mid-way continues its schedule where it stopped.

    Args:
        rate: Peak learning rate.
        total_steps: Optimizer steps of the whole phase.
        warmup_steps: Steps of linear warm-up (step s uses ``rate * (s + 1) / warmup_steps``); for one-cycle the
            steps of its cosine rise from ``rate / 25`` (default a quarter of the phase).
        decay: "constant", "cosine", "linear" or "onecycle".
        offset: Steps already taken before this optimizer's step 0.
        accumulate: Batches per optimizer step (gradient accumulation); `at_batch` converts.
    """

    def __init__(self, rate, total_steps, warmup_steps=0, decay="constant", offset=0, accumulate=1):
        self.rate = float(rate)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.decay = decay
        self.offset = int(offset)
        self.accumulate = int(accumulate)

    def __call__(self, step):
        step = ops.cast(step, "float32") + float(self.offset)
        if self.decay == "onecycle":
            return self._one_cycle(step)
        factor = ops.ones_like(step)
        if self.warmup_steps > 0:
            factor = ops.minimum(1.0, (step + 1.0) / float(self.warmup_steps))
        if self.decay in ("cosine", "linear"):
            span = float(max(1, self.total_steps - self.warmup_steps))
            progress = ops.clip((step - float(self.warmup_steps)) / span, 0.0, 1.0)
            if self.decay == "cosine":
                factor = factor * 0.5 * (1.0 + ops.cos(math.pi * progress))
            else:
                factor = factor * (1.0 - progress)
        return self.rate * factor

    #: One-cycle's start (``rate / ONECYCLE_DIV``) and end (``rate / ONECYCLE_FINAL_DIV``), fastai's defaults.
    ONECYCLE_DIV, ONECYCLE_FINAL_DIV = 25.0, 1e5

    def _one_cycle(self, step):
        rise = float(self.warmup_steps or max(1, round(0.25 * self.total_steps)))
        low, high, end = self.rate / self.ONECYCLE_DIV, self.rate, self.rate / self.ONECYCLE_FINAL_DIV
        up = ops.clip(step / rise, 0.0, 1.0)
        down = ops.clip((step - rise) / float(max(1.0, self.total_steps - rise)), 0.0, 1.0)
        rising = low + (high - low) * 0.5 * (1.0 - ops.cos(math.pi * up))
        falling = end + (high - end) * 0.5 * (1.0 + ops.cos(math.pi * down))
        return ops.where(step < rise, rising, falling)

    def value(self, step: int) -> float:
        """The rate at optimizer step ``step`` (before the offset), as a Python float."""
        return float(ops.convert_to_numpy(self(step)))

    def at_batch(self, batch: int) -> float:
        """The rate while the phase's batch ``batch`` (0-based, before the offset) trains."""
        return self.value(int(batch) // max(1, self.accumulate))

    def get_config(self):
        return dict(rate=self.rate, total_steps=self.total_steps, warmup_steps=self.warmup_steps,
                    decay=self.decay, offset=self.offset, accumulate=self.accumulate)


class _LayerwiseRates:
    """Mixin: per-variable learning-rate multipliers (by variable path), applied inside ``update_step``, and an
    exponential moving average of the trained weights (``average_decay``; kcnn's, not Keras' ``use_ema``, whose
    ``finalize_variable_values`` overwrites the weights at the end of every ``fit`` call: kcnn calls ``fit`` once
    per epoch).

    The average's variables are optimizer variables (``optimizer.variables``), so a checkpoint holds them and a
    resumed phase continues its average exactly. It is updated after every optimizer step (with gradient
    accumulation: every ``gradient_accumulation_steps`` batches) as ``avg = d * avg + (1 - d) * w`` with
    ``d = min(decay, (1 + t) / (10 + t))`` at update ``t`` when ``average_warmup`` (timm's warm-up), else ``decay``.
    """

    def __init__(self, *args, lr_multipliers=None, average_decay=0.0, average_warmup=True, **kwargs):
        super().__init__(*args, **kwargs)
        self.lr_multipliers = {str(k): float(v) for k, v in (lr_multipliers or {}).items()}
        self._multiplier_by_key = {}
        self.average_decay = float(average_decay or 0.0)
        self.average_warmup = bool(average_warmup)
        self.averages, self.averaged = [], []

    def build(self, variables):
        super().build(variables)
        self._multiplier_by_key = {_compat.keras_variable_key(self, v): self.lr_multipliers[v.path]
                                   for v in variables if getattr(v, "path", None) in self.lr_multipliers}
        if self.average_decay:
            self.averaged = list(variables)
            self.averages = [self.add_variable_from_reference(v, name="average") for v in variables]
            self.average_updates = self.add_variable(shape=(), dtype="int64", initializer="zeros",
                                                     name="average_updates")
            for average, variable in zip(self.averages, self.averaged):
                average.assign(variable)

    def apply(self, grads, trainable_variables=None):
        if not self.average_decay:
            return super().apply(grads, trainable_variables)
        before = ops.add(self.iterations, 0)  # a read now, not a reference to the variable
        super().apply(grads, trainable_variables)
        stepped = ops.cast(ops.not_equal(ops.add(self.iterations, 0), before), "float32")
        self._update_average(stepped)

    def _update_average(self, stepped):
        t = ops.cast(ops.convert_to_tensor(self.average_updates), "float32")
        decay = self.average_decay
        if self.average_warmup:
            decay = ops.minimum(decay, (1.0 + t) / (10.0 + t))
        # d = 1 on a batch that only accumulated: the average stays
        keep = 1.0 - stepped * (1.0 - decay)
        pairs = list(zip(self.averages, self.averaged))

        def update(distribution=None):
            for average, variable in pairs:
                new = ops.add(ops.multiply(ops.cast(keep, average.dtype), average),
                              ops.multiply(ops.cast(1.0 - keep, average.dtype), variable))
                if distribution is None:
                    average.assign(new)
                else:
                    distribution.extended.update(average.value, lambda a, b: a.assign(b), args=(new,))
            increment = ops.cast(stepped, "int64")
            if distribution is None:
                self.average_updates.assign_add(increment)
            else:
                distribution.extended.update(self.average_updates.value, lambda a, b: a.assign_add(b),
                                             args=(increment,))

        in_cross_replica(update)

    @contextlib.contextmanager
    def averaged_weights(self):
        """Inside the block the trained variables hold their moving average; afterwards their own values again.
        Without an average, a no-op."""
        if not self.averages:
            yield
            return
        saved = [ops.convert_to_numpy(v) for v in self.averaged]
        self.copy_average()
        try:
            yield
        finally:
            for variable, value in zip(self.averaged, saved):
                variable.assign(value)

    def copy_average(self) -> None:
        """Overwrite the trained variables with their moving average (the end of a phase)."""
        for average, variable in zip(self.averages, self.averaged):
            variable.assign(average)

    def finalize_variable_values(self, var_list):
        pass  # the average is copied by kcnn at a phase's end, not at the end of every fit call

    def update_step(self, gradient, variable, learning_rate):
        multiplier = self._multiplier_by_key.get(_compat.keras_variable_key(self, variable), 1.0)
        if multiplier != 1.0:
            learning_rate = ops.multiply(learning_rate, multiplier)
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config.update(lr_multipliers=dict(self.lr_multipliers), average_decay=self.average_decay,
                      average_warmup=self.average_warmup)
        return config


def in_cross_replica(fn) -> None:
    """Call ``fn(strategy)`` where it may update mirrored variables: with no strategy ``fn(None)``; inside a replica
    of a distribution strategy through ``merge_call`` (once, cross-replica), as Keras' own optimizers update."""
    import tensorflow as tf

    if not tf.distribute.has_strategy():
        fn(None)
    elif tf.distribute.in_cross_replica_context():
        fn(tf.distribute.get_strategy())
    else:
        tf.distribute.get_replica_context().merge_call(lambda strategy: fn(strategy))


@keras.saving.register_keras_serializable(package="kcnn")
class LayerwiseAdam(_LayerwiseRates, keras.optimizers.Adam):
    """Adam with per-variable learning-rate multipliers (``lr_multipliers={variable.path: factor}``)."""


@keras.saving.register_keras_serializable(package="kcnn")
class LayerwiseAdamW(_LayerwiseRates, keras.optimizers.AdamW):
    """AdamW with per-variable learning-rate multipliers (``lr_multipliers={variable.path: factor}``)."""


@keras.saving.register_keras_serializable(package="kcnn")
class LayerwiseSGD(_LayerwiseRates, keras.optimizers.SGD):
    """SGD with per-variable learning-rate multipliers (``lr_multipliers={variable.path: factor}``)."""


@keras.saving.register_keras_serializable(package="kcnn")
class LayerwiseRMSprop(_LayerwiseRates, keras.optimizers.RMSprop):
    """RMSprop with per-variable learning-rate multipliers (``lr_multipliers={variable.path: factor}``)."""


_OPTIMIZER_CLASSES = {
    "adam": (keras.optimizers.Adam, LayerwiseAdam),
    "adamw": (keras.optimizers.AdamW, LayerwiseAdamW),
    "sgd": (keras.optimizers.SGD, LayerwiseSGD),
    "rmsprop": (keras.optimizers.RMSprop, LayerwiseRMSprop),
}


def make_optimizer(phase: Phase, learning_rate=None, lr_multipliers: dict | None = None):
    """The Keras optimizer a phase asks for.

    Args:
        phase: The `Phase` (optimizer, weight decay, momentum, nesterov, ema, accumulate).
        learning_rate: A float or schedule (default ``phase.lr``).
        lr_multipliers: ``{variable.path: factor}``; given, a ``Layerwise*`` optimizer applies them.

    Returns:
        A `keras.optimizers.Optimizer`: Keras' own class, or kcnn's ``Layerwise*`` subclass of it when the phase
        has rate multipliers or a weight average (``phase.ema``).
    """
    stock, layerwise = _OPTIMIZER_CLASSES[phase.optimizer]
    kwargs = dict(learning_rate=phase.lr if learning_rate is None else learning_rate)
    if phase.optimizer == "adamw":
        kwargs["weight_decay"] = phase.weight_decay
    elif phase.weight_decay:
        kwargs["weight_decay"] = phase.weight_decay
    if phase.optimizer == "sgd":
        kwargs["momentum"] = phase.momentum
        if phase.nesterov:
            kwargs["nesterov"] = True
    if phase.accumulate > 1:
        kwargs["gradient_accumulation_steps"] = phase.accumulate
    if lr_multipliers or phase.ema:
        optimizer = layerwise(lr_multipliers=lr_multipliers, average_decay=phase.ema,
                              average_warmup=phase.ema_warmup, **kwargs)
    else:
        optimizer = stock(**kwargs)
    if phase.weight_decay:
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def averaged_weights(optimizer):
    """``optimizer.averaged_weights()`` for a kcnn optimizer with a weight average, else a no-op context."""
    method = getattr(optimizer, "averaged_weights", None)
    return method() if method is not None else contextlib.nullcontext()


def copy_average(optimizer) -> bool:
    """Copy a kcnn optimizer's weight average into the trained variables; returns whether it had one."""
    if getattr(optimizer, "averages", None):
        optimizer.copy_average()
        return True
    return False


def phase_rate(phase: Phase, steps: int, offset: int):
    """The learning rate of a phase: a float, or a `PhaseLearningRate` for warm-up / decay / one-cycle.

    ``steps`` and ``offset`` count batches; with gradient accumulation the schedule counts optimizer steps
    (``accumulate`` batches each)."""
    per_step = max(1, phase.accumulate)
    warmup_steps = int(round(phase.warmup_epochs * steps / per_step))
    if phase.schedule == "constant" and warmup_steps == 0:
        return phase.lr
    return PhaseLearningRate(phase.lr, max(1, phase.epochs * steps // per_step), warmup_steps, phase.schedule,
                             offset // per_step, accumulate=per_step)
