"""Optimizers of a phase: warm-up / cosine learning rates and per-variable (per-block) rate multipliers.

The ``Layerwise*`` optimizers and `PhaseLearningRate` are registered Keras serializables (package "kcnn"),
so saved ``.keras`` files that hold them load by those names.
"""
from __future__ import annotations

import math

import keras
from keras import ops

from kcnn.transfer.schedule import Phase


@keras.saving.register_keras_serializable(package="kcnn")
class PhaseLearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``rate``, then constant or cosine decay to 0 at ``total_steps``.

    ``offset`` shifts the step, so a phase resumed mid-way continues its schedule where it stopped.

    Args:
        rate: Peak learning rate.
        total_steps: Steps of the whole phase.
        warmup_steps: Steps of linear warm-up (step s uses ``rate * (s + 1) / warmup_steps``).
        decay: "constant" or "cosine".
        offset: Steps already taken before this optimizer's step 0.
    """

    def __init__(self, rate, total_steps, warmup_steps=0, decay="constant", offset=0):
        self.rate = float(rate)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.decay = decay
        self.offset = int(offset)

    def __call__(self, step):
        step = ops.cast(step, "float32") + float(self.offset)
        factor = ops.ones_like(step)
        if self.warmup_steps > 0:
            factor = ops.minimum(1.0, (step + 1.0) / float(self.warmup_steps))
        if self.decay == "cosine":
            span = float(max(1, self.total_steps - self.warmup_steps))
            progress = ops.clip((step - float(self.warmup_steps)) / span, 0.0, 1.0)
            factor = factor * 0.5 * (1.0 + ops.cos(math.pi * progress))
        return self.rate * factor

    def value(self, step: int) -> float:
        """The rate at ``step`` (before the offset), as a Python float."""
        return float(ops.convert_to_numpy(self(step)))

    def get_config(self):
        return dict(rate=self.rate, total_steps=self.total_steps, warmup_steps=self.warmup_steps,
                    decay=self.decay, offset=self.offset)


class _LayerwiseRates:
    """Mixin: per-variable learning-rate multipliers (by variable path), applied inside ``update_step``."""

    def __init__(self, *args, lr_multipliers=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lr_multipliers = {str(k): float(v) for k, v in (lr_multipliers or {}).items()}
        self._multiplier_by_key = {}

    def build(self, variables):
        super().build(variables)
        self._multiplier_by_key = {self._var_key(v): self.lr_multipliers[v.path] for v in variables
                                   if getattr(v, "path", None) in self.lr_multipliers}

    def update_step(self, gradient, variable, learning_rate):
        multiplier = self._multiplier_by_key.get(self._var_key(variable), 1.0)
        if multiplier != 1.0:
            learning_rate = ops.multiply(learning_rate, multiplier)
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config["lr_multipliers"] = dict(self.lr_multipliers)
        return config


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
        phase: The `Phase`.
        learning_rate: A float or schedule (default ``phase.lr``).
        lr_multipliers: ``{variable.path: factor}``; given, a ``Layerwise*`` optimizer applies them.

    Returns:
        A `keras.optimizers.Optimizer`.
    """
    stock, layerwise = _OPTIMIZER_CLASSES[phase.optimizer]
    kwargs = dict(learning_rate=phase.lr if learning_rate is None else learning_rate)
    if phase.optimizer == "adamw":
        kwargs["weight_decay"] = phase.weight_decay
    elif phase.weight_decay:
        kwargs["weight_decay"] = phase.weight_decay
    if phase.optimizer == "sgd":
        kwargs["momentum"] = phase.momentum
    optimizer = layerwise(lr_multipliers=lr_multipliers, **kwargs) if lr_multipliers else stock(**kwargs)
    if phase.weight_decay:
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def phase_rate(phase: Phase, steps: int, offset: int):
    """The learning rate of a phase: a float, or a `PhaseLearningRate` for warm-up / cosine."""
    warmup_steps = int(round(phase.warmup_epochs * steps))
    if phase.schedule == "constant" and warmup_steps == 0:
        return phase.lr
    return PhaseLearningRate(phase.lr, phase.epochs * steps, warmup_steps, phase.schedule, offset)
