"""keras-tuner search spaces over kcnn's architectures and fine-tuning schedules.

Two `keras_tuner.HyperModel` classes, both declaring their whole search space inside ``build(hp)`` with a
default for every hyperparameter (so ``build(keras_tuner.HyperParameters())`` gives a sensible model), and
tuners that record what each trial cost:

* `HyperCNN`: a network from the kcnn registry trained from scratch: architecture (e.g. resnet20 / vgg11 /
  allcnn_c), batch norm on/off, spatial dropout, pooling vs strided convolutions, CIFAR-ResNet shortcut, the
  classifier head (dense / gap / conv, hidden width, dropout), optimizer, learning rate, weight decay.
* `HyperFineTune`: the two-phase transfer schedule of `kcnn.transfer`: backbone, head width and dropout,
  phase-1 epochs and learning rate, how many blocks phase 2 unfreezes, the phase-2 rate ratio, per-block rate
  decay and the BN mode. Its ``fit`` runs the phases through `kcnn.transfer.fit_schedule`.
* `make_tuner(kind, hypermodel, ...)`: keras-tuner's RandomSearch / BayesianOptimization / Hyperband with two
  additions: every trial starts from a cleared Keras session and releases its traced graphs when it ends
  (memory stays flat across trials; see `_release_custom_gradients` for the TensorFlow leak this works around)
  and writes a small ``kcnn_trial.json`` into its trial folder (epochs trained, seconds, which worker ran it,
  the error of a failed trial). `trial_records`, `write_trials_csv`, `plot_trials` and `best_hyperparameters`
  read a search back.

Overriding: a ``hp.Fixed(name, value)`` registered before the search (``make_tuner(..., hyperparameters=hp)``,
see `fixed_hyperparameters`) wins over the search space, also for the conditional hyperparameters below.

Failures: a loss that becomes NaN stops the trial (``TerminateOnNaN``) and fails it with
``keras_tuner.errors.FailedTrialError("loss became NaN ...")``; any other exception (out of memory, ...) is
recorded by keras-tuner as the trial's message and retried ``max_retries_per_trial`` times. The search stops
only after ``max_consecutive_failed_trials`` failures in a row.

Reference: Li et al., "Hyperband: A Novel Bandit-Based Approach to Hyperparameter Optimization", JMLR 2018;
Bergstra & Bengio, "Random Search for Hyper-Parameter Optimization", JMLR 2012; the keras-tuner documentation
("Tune hyperparameters in your custom training loop", "Distributed hyperparameter tuning").
"""
from __future__ import annotations

import csv
import gc
import json
import math
import os
import time
import weakref
from pathlib import Path

import keras
import keras_tuner as kt
import numpy as np
import tensorflow as tf

from kcnn import layers as kl
from kcnn import perf, transfer
from kcnn.registry import get_entry

LOSS = transfer.LOSS
METRICS = list(transfer.METRICS)
#: Families whose builders take ``downsample="max" | "conv"``.
DOWNSAMPLE_FAMILIES = ("vgg", "allcnn")
#: Families whose builders take ``shortcut="A" | "B"``.
SHORTCUT_FAMILIES = ("cifar_resnet",)
#: `HyperCNN`'s candidate models when none are given; those smaller than the input are kept.
DEFAULT_MODELS = ("resnet20", "resnet32", "allcnn_c", "vgg11")
TUNERS = ("hyperband", "bayesian", "random")
OBJECTIVES = ("val_accuracy", "val_loss", "accuracy", "loss")
#: Per-trial record written into each trial folder by the tuners of `make_tuner`.
TRIAL_FILE = "kcnn_trial.json"


# ------------------------------------------------------------------------------------------------------------
# Helpers shared by the hypermodels
# ------------------------------------------------------------------------------------------------------------

def fixed_hyperparameters(values: dict | None) -> kt.HyperParameters:
    """A `keras_tuner.HyperParameters` holding ``hp.Fixed(name, value)`` for each item of ``values``.

    Pass it as ``hyperparameters=`` to `make_tuner` (or any keras-tuner tuner): fixed values win over the
    search space of `HyperCNN` and `HyperFineTune`, conditional hyperparameters included.

    Args:
        values: ``{name: value}``, e.g. ``{"model": "resnet20", "learning_rate": 0.01}``.

    Returns:
        The `HyperParameters`.

    Example:
        >>> hp = fixed_hyperparameters({"model": "allcnn_c"})
        >>> HyperCNN(10, (16, 16, 3)).build(hp).get_layer("backbone").get_layer("block1_conv1").filters
        96
    """
    hp = kt.HyperParameters()
    for name, value in (values or {}).items():
        hp.Fixed(str(name), value)
    return hp


def _user_fixed(hp: kt.HyperParameters, name: str):
    """The value of an unconditional ``hp.Fixed(name, ...)`` registered by the user, else a sentinel."""
    for entry in hp.space:
        if entry.name == name and isinstance(entry, kt.engine.hyperparameters.Fixed) and not entry.conditions:
            return entry.value
    return _MISSING


_MISSING = object()


def _conditional(hp, name: str, parent_name: str, parent_value, parent_values, declare):
    """Declare a hyperparameter that only applies when ``parent_name`` is one of ``parent_values``.

    A top-level ``hp.Fixed(name, ...)`` from the user wins: keras-tuner keys hyperparameters by name *and*
    conditions, so a conditional declaration would otherwise be a second entry that the oracle samples and
    that overrides the fixed value. Returns None where the condition does not hold.
    """
    fixed = _user_fixed(hp, name)
    if fixed is not _MISSING:
        return fixed if parent_value in parent_values else None
    with hp.conditional_scope(parent_name, list(parent_values)):
        return declare()


def _raise_on_nan(history: dict) -> None:
    for key in ("loss", "val_loss"):
        for epoch, value in enumerate(history.get(key) or [], start=1):
            if value is None or not math.isfinite(float(value)):
                raise kt.errors.FailedTrialError(f"{key} became {value} in epoch {epoch} "
                                                 f"(diverged: learning rate too high, or NaN in the data)")


def _with_nan_stop(callbacks) -> list:
    callbacks = list(callbacks or [])
    if not any(isinstance(c, keras.callbacks.TerminateOnNaN) for c in callbacks):
        callbacks.append(keras.callbacks.TerminateOnNaN())
    return callbacks


def _positive_int(name, value, minimum=1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")
    return int(value)


def _names(name, values) -> tuple[str, ...]:
    if isinstance(values, str):
        values = [values]
    values = tuple(str(v) for v in (values or ()))
    if not values:
        raise ValueError(f"`{name}` must name at least one model. Received: {name}={values!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"`{name}` lists a name twice. Received: {name}={list(values)}")
    return values


# ------------------------------------------------------------------------------------------------------------
# HyperCNN: architectures from the registry, trained from scratch
# ------------------------------------------------------------------------------------------------------------

class HyperCNN(kt.HyperModel):
    """A search space over kcnn registry models trained from scratch.

    The model is ``kcnn.transfer.classifier`` around a randomly initialised registry network (all layers
    trainable): raw images in [0, 255] -> resize -> scale to [0, 1] -> network -> head; it is compiled in
    ``build`` with sparse categorical cross-entropy and accuracy, so a plain ``model.fit`` trains it.

    Hyperparameters (name: values, *default*):

    * ``model``: the ``models`` argument, *first one*
    * ``batch_norm``: True / False, *True*
    * ``spatial_dropout``: 0, 0.1, 0.2, 0.3, *0*
    * ``downsample`` (only VGG and All-CNN models): "max" (pooling) / "conv" (strided conv), *"max"*
    * ``shortcut`` (only CIFAR ResNets): "A" (zero-padded identity) / "B" (projection), *"A"*
    * ``head``: "gap" / "dense" / "conv", *"gap"*
    * ``fc_units``: 0 (none), 128, 512: width of a hidden layer in the head, *0*
    * ``dropout`` (only with ``fc_units`` > 0): 0, 0.25, 0.5, *0*
    * ``optimizer``: the ``optimizers`` argument, *first one* ("adam")
    * ``learning_rate``: 1e-4 .. 1e-1, log scale, *1e-3*
    * ``weight_decay``: 0, 1e-5, 1e-4, 1e-3 (decoupled; biases and BN excluded), *0*

    Args:
        num_classes: Number of classes.
        input_shape: (height, width, channels) of the training images.
        models: Registry names to choose from. Default: those of `DEFAULT_MODELS` whose minimum input size
            fits ``input_shape`` (resnet20, resnet32, allcnn_c, vgg11 at 32 px; vgg needs 32 px).
        optimizers: Optimizer names to choose from ("adam", "sgd", "adamw", "rmsprop").
        steps_per_execution: Passed to ``compile``; default `kcnn.perf.DEFAULT_STEPS_PER_EXECUTION` (16,
            much faster on a CPU than 1).
        verbose: Keras verbosity of ``fit`` when the caller passes none (keras-tuner passes ``search``'s).
        name: Optional name of the hypermodel.
        tunable: Whether the hyperparameters are tunable (keras-tuner's flag).

    Example:
        >>> hypermodel = HyperCNN(10, (16, 16, 3), models=["resnet20", "allcnn_c"])
        >>> model = hypermodel.build(keras_tuner.HyperParameters())   # all defaults: resnet20 with BN
        >>> tuner = make_tuner("hyperband", hypermodel, directory="runs/tune", epochs=9)
        >>> tuner.search(splits.train, validation_data=splits.val, epochs=9)
    """

    def __init__(self, num_classes: int, input_shape, models=None, optimizers=("adam", "sgd", "adamw"), *,
                 steps_per_execution: int | None = None, verbose=0, name: str | None = None,
                 tunable: bool = True):
        super().__init__(name=name, tunable=tunable)
        self.verbose = verbose
        self.num_classes = _positive_int("num_classes", num_classes)
        shape = tuple(input_shape)
        if len(shape) != 3 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in shape):
            raise ValueError(f"`input_shape` must be (height, width, channels). "
                             f"Received: input_shape={input_shape!r}")
        self.input_shape = tuple(int(s) for s in shape)
        side = min(self.input_shape[:2])
        if models is None:
            models = [m for m in DEFAULT_MODELS if get_entry(m).min_size <= side]
        self.models = _names("models", models)
        for model in self.models:
            self._check_model(model)
        self.optimizers = _names("optimizers", optimizers)
        for opt in self.optimizers:
            if opt not in transfer.OPTIMIZERS:
                raise ValueError(f"Unknown optimizer {opt!r}; choose from {list(transfer.OPTIMIZERS)}. "
                                 f"Received: optimizers={list(self.optimizers)}")
        self.steps_per_execution = _positive_int(
            "steps_per_execution", perf.DEFAULT_STEPS_PER_EXECUTION if steps_per_execution is None
            else steps_per_execution)

    def _check_model(self, name: str) -> str:
        entry = get_entry(name)  # unknown names raise ValueError with the closest names
        side = min(self.input_shape[:2])
        if entry.min_size > side:
            size = f"{entry.min_size}x{entry.min_size}"
            raise ValueError(f"{entry.name} needs inputs of at least {size} pixels; the images are "
                             f"{self.input_shape[0]}x{self.input_shape[1]}. Use a larger image size or other "
                             f"models. Received: models={list(self.models)}")
        return entry.name

    def _family_members(self, chosen: str, families) -> list[str]:
        names = list(self.models) + ([chosen] if chosen not in self.models else [])
        return [m for m in names if get_entry(m).family in families]

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        """Declare the search space and build the compiled model for ``hp``'s values.

        Args:
            hp: The trial's `keras_tuner.HyperParameters` (missing values take their defaults).

        Returns:
            A compiled `keras.Model`.
        """
        name = self._check_model(hp.Choice("model", list(self.models), default=self.models[0]))
        family = get_entry(name).family
        norm = hp.Boolean("batch_norm", default=True)
        options = {"norm": "batch" if norm else None,
                   "spatial_dropout": hp.Choice("spatial_dropout", [0.0, 0.1, 0.2, 0.3], default=0.0)}
        members = self._family_members(name, DOWNSAMPLE_FAMILIES)
        if members:
            value = _conditional(hp, "downsample", "model", name, members,
                                 lambda: hp.Choice("downsample", ["max", "conv"], default="max"))
            if value is not None and family in DOWNSAMPLE_FAMILIES:
                options["downsample"] = value
        members = self._family_members(name, SHORTCUT_FAMILIES)
        if members:
            value = _conditional(hp, "shortcut", "model", name, members,
                                 lambda: hp.Choice("shortcut", ["A", "B"], default="A"))
            if value is not None and family in SHORTCUT_FAMILIES:
                options["shortcut"] = value
        head = hp.Choice("head", ["gap", "dense", "conv"], default="gap")
        units = int(hp.Choice("fc_units", [0, 128, 512], default=0))
        dropout = _conditional(hp, "dropout", "fc_units", units, [128, 512],
                               lambda: hp.Choice("dropout", [0.0, 0.25, 0.5], default=0.0))
        optimizer = hp.Choice("optimizer", list(self.optimizers), default=self.optimizers[0])
        learning_rate = hp.Float("learning_rate", 1e-4, 1e-1, sampling="log", default=1e-3)
        weight_decay = hp.Choice("weight_decay", [0.0, 1e-5, 1e-4, 1e-3], default=0.0)

        bb = transfer.backbone(name, None, self.input_shape, options=options)
        model = transfer.classifier(bb, self.num_classes, head=head, dropout=float(dropout or 0.0),
                                    hidden=(units,) if units else (), name=f"{name}_tuned")
        bb.model.trainable = True  # from scratch: every layer trains, BN uses batch statistics while training
        phase = transfer.Phase(epochs=1, train="all", bn="train", lr=float(learning_rate),
                               optimizer=optimizer, weight_decay=float(weight_decay))
        model.compile(optimizer=transfer.make_optimizer(phase), loss=LOSS, metrics=list(METRICS),
                      steps_per_execution=self.steps_per_execution)
        return model

    def fit(self, hp, model, *args, **kwargs):
        """Train with ``model.fit``, stopping a trial whose loss becomes NaN.

        Args:
            hp: The trial's hyperparameters.
            model: The model from `build`.
            *args: Passed to ``model.fit`` (the training data).
            **kwargs: Passed to ``model.fit`` (``validation_data``, ``epochs``, ``initial_epoch``,
                ``callbacks``, ``verbose``, ...); ``TerminateOnNaN`` is added to the callbacks.

        Returns:
            The ``keras.callbacks.History``.

        Raises:
            keras_tuner.errors.FailedTrialError: the loss became NaN or infinite.
        """
        kwargs["callbacks"] = _with_nan_stop(kwargs.get("callbacks"))
        kwargs.setdefault("verbose", self.verbose)
        data = args[0] if args else kwargs.get("x")
        if isinstance(data, tf.data.Dataset):
            kwargs.setdefault("shuffle", False)  # a dataset shuffles itself; Keras would warn
        history = model.fit(*args, **kwargs)
        _raise_on_nan(history.history)
        return history


# ------------------------------------------------------------------------------------------------------------
# HyperFineTune: the two-phase transfer schedule
# ------------------------------------------------------------------------------------------------------------

class HyperFineTune(kt.HyperModel):
    """A search space over two-phase fine-tuning schedules of pretrained backbones.

    ``build(hp)`` returns ``kcnn.transfer.classifier(kcnn.transfer.backbone(...))``; ``fit(hp, model, ...)``
    runs its phases through `kcnn.transfer.fit_schedule`:

    1. ``head``: the new head alone on the frozen backbone (on cached backbone features when exact),
       ``head_epochs`` epochs at ``head_lr``;
    2. ``fine-tune``: the head and the ``unfreeze_blocks`` deepest backbone blocks ("top:N"; more than the
       backbone has means all) at ``head_lr * lr_ratio``, block k from the top at a further ``lr_mult**k``
       (discriminative rates), with BN frozen or training (``bn``), for the rest of the epochs.

    Epochs and keras-tuner's budget: the schedule is laid out over ``epochs`` global epochs (set it to the
    tuner's ``epochs``, i.e. Hyperband's ``max_epochs``). A call ``fit(..., epochs=E, initial_epoch=I)``
    trains global epochs I+1..E of that fixed schedule: a short Hyperband round (E below ``head_epochs``)
    trains the head only, and the next round continues the same schedule from the checkpoint where the last
    one stopped. An E beyond ``epochs`` lengthens phase 2. Both phases use constant rates, so a truncated
    schedule trains exactly like the first E epochs of the full one. The objective keras-tuner reads is the
    best epoch's value (e.g. the highest ``val_accuracy`` of any epoch run in this call), as for `HyperCNN`.

    Hyperparameters (name: values, *default*):

    * ``backbone``: the ``backbones`` argument, *first one*
    * ``head_units``: 0 (linear head), 64, 256, *0*
    * ``head_dropout`` (only with ``head_units`` > 0): 0, 0.25, 0.5, *0*
    * ``head_epochs``: 1 .. epochs-1, *epochs // 2*
    * ``head_lr``: 1e-4 .. 1e-1, log scale, *1e-3*
    * ``unfreeze_blocks``: 1 .. ``max_unfreeze``, *2*
    * ``lr_ratio``: 0.01 .. 1, log scale, *0.1* (phase-2 rate / phase-1 rate)
    * ``lr_mult``: 1 (one rate), 0.5, 0.25, *1*
    * ``bn``: the ``bn_modes`` argument ("frozen", "train"), *first one*

    Args:
        backbones: keras.applications or kcnn registry names, e.g. ``["resnet20", "allcnn_c"]`` or
            ``["VGG16", "ResNet50"]``.
        weights: For every backbone: None (random), "imagenet", a weights file or a kcnn checkpoint directory;
            or a dict ``{backbone name: weights}``.
        num_classes: Number of classes.
        image_size: Side (int) or (height, width) of the training images; the backbone is built at this size.
        epochs: Length of the whole schedule (>= 2).
        max_unfreeze: Largest ``unfreeze_blocks`` value.
        bn_modes: BN modes of phase 2 to choose from.
        head: Head type of the classifier ("gap", "dense", "conv").
        optimizer: Optimizer of both phases.
        augmented: Passed to ``fit_schedule`` (None: detect whether the training data are augmented).
        steps_per_execution: Passed to ``fit_schedule``; default `kcnn.perf.DEFAULT_STEPS_PER_EXECUTION`.
        verbose: Keras verbosity of ``fit`` when the caller passes none (0 also silences the phase lines).
        name: Optional name of the hypermodel.
        tunable: keras-tuner's flag.

    Example:
        >>> hypermodel = HyperFineTune(["resnet20"], weights={"resnet20": "runs/pretrain/ckpt"},
        ...                            num_classes=10, image_size=32, epochs=9)
        >>> tuner = make_tuner("hyperband", hypermodel, directory="runs/tune-ft", epochs=9)
        >>> tuner.search(splits.train, validation_data=splits.val, epochs=9)
    """

    def __init__(self, backbones, weights=None, *, num_classes: int, image_size, epochs: int = 10,
                 max_unfreeze: int = 4, bn_modes=("frozen", "train"), head: str = "gap",
                 optimizer: str = "adam", augmented: bool | None = None,
                 steps_per_execution: int | None = None, verbose=0, name: str | None = None,
                 tunable: bool = True):
        super().__init__(name=name, tunable=tunable)
        self.verbose = verbose
        self.backbones = _names("backbones", backbones)
        self.weights = dict(weights) if isinstance(weights, dict) else weights
        if isinstance(self.weights, dict):
            missing = [b for b in self.backbones if b not in self.weights]
            if missing:
                raise ValueError(f"`weights` has no entry for {missing}. Received: weights={self.weights!r}")
        for bb in self.backbones:
            w = self._weights_for(bb)
            transfer.preprocessing_mode(bb, w)  # unknown names raise ValueError listing the closest
        self.num_classes = _positive_int("num_classes", num_classes)
        size = (image_size, image_size) if isinstance(image_size, (int, np.integer)) else tuple(image_size)
        if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in size):
            raise ValueError(f"`image_size` must be an int or (height, width). "
                             f"Received: image_size={image_size!r}")
        self.image_size = tuple(int(s) for s in size)
        self.epochs = _positive_int("epochs", epochs, minimum=2)
        self.max_unfreeze = _positive_int("max_unfreeze", max_unfreeze)
        self.bn_modes = _names("bn_modes", bn_modes)
        for mode in self.bn_modes:
            if mode not in transfer.BN_MODES:
                raise ValueError(f"Unknown BN mode {mode!r}; choose from {list(transfer.BN_MODES)}. "
                                 f"Received: bn_modes={list(self.bn_modes)}")
        kl.check_choice("head", head, kl.HEADS)
        self.head = head
        if optimizer not in transfer.OPTIMIZERS:
            raise ValueError(f"`optimizer` must be one of {list(transfer.OPTIMIZERS)}. "
                             f"Received: optimizer={optimizer!r}")
        self.optimizer = optimizer
        self.augmented = augmented
        self.steps_per_execution = _positive_int(
            "steps_per_execution", perf.DEFAULT_STEPS_PER_EXECUTION if steps_per_execution is None
            else steps_per_execution)
        self._backbone_of = weakref.WeakKeyDictionary()

    def _weights_for(self, name):
        return self.weights.get(name) if isinstance(self.weights, dict) else self.weights

    def _schedule_values(self, hp) -> dict:
        """Declare the schedule's hyperparameters (idempotent) and return their values."""
        default_head = max(1, self.epochs // 2)
        values = dict(
            head_epochs=hp.Int("head_epochs", 1, self.epochs - 1, default=min(default_head, self.epochs - 1)),
            head_lr=hp.Float("head_lr", 1e-4, 1e-1, sampling="log", default=1e-3),
            unfreeze_blocks=hp.Int("unfreeze_blocks", 1, self.max_unfreeze,
                                   default=min(2, self.max_unfreeze)),
            lr_ratio=hp.Float("lr_ratio", 0.01, 1.0, sampling="log", default=0.1),
            lr_mult=hp.Choice("lr_mult", [1.0, 0.5, 0.25], default=1.0),
            bn=hp.Choice("bn", list(self.bn_modes), default=self.bn_modes[0]),
        )
        return values

    def schedule(self, hp: kt.HyperParameters) -> transfer.Schedule:
        """The full schedule (``epochs`` long) for ``hp``'s values.

        Args:
            hp: Hyperparameters (missing values take their defaults).

        Returns:
            A two-phase `kcnn.transfer.Schedule`.
        """
        v = self._schedule_values(hp)
        head_epochs = min(int(v["head_epochs"]), self.epochs - 1)
        lr_mult = float(v["lr_mult"])
        return transfer.Schedule([
            transfer.Phase(epochs=head_epochs, train="head", lr=float(v["head_lr"]), optimizer=self.optimizer,
                           name="head"),
            transfer.Phase(epochs=self.epochs - head_epochs, train=f"top:{int(v['unfreeze_blocks'])}",
                           lr=float(v["head_lr"]) * float(v["lr_ratio"]),
                           lr_mult=None if lr_mult == 1.0 else lr_mult,
                           bn=v["bn"], optimizer=self.optimizer, name="fine-tune"),
        ])

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        """Declare the search space and build the classifier for ``hp``'s values (compiled for phase 1).

        Args:
            hp: The trial's `keras_tuner.HyperParameters`.

        Returns:
            A `kcnn.transfer.classifier` model.
        """
        name = hp.Choice("backbone", list(self.backbones), default=self.backbones[0])
        units = int(hp.Choice("head_units", [0, 64, 256], default=0))
        dropout = _conditional(hp, "head_dropout", "head_units", units, [64, 256],
                               lambda: hp.Choice("head_dropout", [0.0, 0.25, 0.5], default=0.0))
        schedule = self.schedule(hp)
        bb = transfer.backbone(name, self._weights_for(name), (*self.image_size, 3))
        model = transfer.classifier(bb, self.num_classes, head=self.head, dropout=float(dropout or 0.0),
                                    hidden=(units,) if units else ())
        model.compile(optimizer=transfer.make_optimizer(schedule[0]), loss=LOSS, metrics=list(METRICS))
        self._backbone_of[model] = bb
        return model

    def _backbone(self, hp, model) -> transfer.Backbone:
        bb = self._backbone_of.get(model)
        if bb is None:  # a model built elsewhere: the block structure only needs the architecture
            name = hp.get("backbone") if "backbone" in hp else self.backbones[0]
            bb = transfer.backbone(name, None, (*self.image_size, 3))
        return bb

    def fit(self, hp, model, x=None, validation_data=None, epochs=None, initial_epoch: int = 0,
            callbacks=None, verbose=None, **kwargs):
        """Run the schedule's phases on ``model`` through `kcnn.transfer.fit_schedule`.

        Args:
            hp: The trial's hyperparameters.
            model: The model from `build` (or one with loaded weights, as Hyperband's later rounds pass).
            x: Training data: a batched ``tf.data.Dataset`` of (images in [0, 255], labels) or ``(x, y)``.
            validation_data: Validation data in the same form, or None.
            epochs: Train up to this global epoch of the schedule (default: the whole schedule). See the class
                docstring for how Hyperband's budgets map onto the phases.
            initial_epoch: Global epochs already trained (Hyperband's later rounds).
            callbacks: Keras callbacks (keras-tuner's checkpointing among them); they see the full classifier.
            verbose: Keras verbosity (0 also silences the phase lines); default: the constructor's.
            **kwargs: Ignored fit arguments (e.g. ``batch_size``, which the batched data already fix).

        Returns:
            A ``keras.callbacks.History`` with one value per epoch run of ``loss``, ``accuracy``,
            ``val_loss``, ``val_accuracy``; its ``schedule_history`` attribute is the
            `kcnn.transfer.ScheduleHistory` (phases with trained blocks and trainable parameter counts).

        Raises:
            keras_tuner.errors.FailedTrialError: the loss became NaN or infinite.
        """
        full = self.schedule(hp)
        end = _positive_int("epochs", self.epochs if epochs is None else epochs)
        window = _schedule_until(full, end)
        result = transfer.fit_schedule(model, self._backbone(hp, model), window, x, validation_data,
                                       callbacks=_with_nan_stop(callbacks), initial_epoch=int(initial_epoch),
                                       verbose=self.verbose if verbose is None else verbose,
                                       augmented=self.augmented,
                                       steps_per_execution=self.steps_per_execution)
        history = keras.callbacks.History()
        keys = [k for k in ("loss", "accuracy", "val_loss", "val_accuracy") if result.epochs
                and all(k in row for row in result.epochs)]
        history.history = {k: [float(row[k]) for row in result.epochs] for k in keys}
        history.epoch = result.epoch
        history.schedule_history = result
        _raise_on_nan(history.history)
        return history


def _schedule_until(schedule: transfer.Schedule, end: int) -> transfer.Schedule:
    """The phases of ``schedule`` up to global epoch ``end`` (cut there, or the last phase lengthened)."""
    phases, start = [], 0
    for phase in schedule:
        if start >= end:
            break
        epochs = min(phase.epochs, end - start)
        phases.append(phase if epochs == phase.epochs else _replace(phase, epochs))
        start += epochs
    if start < end:
        phases[-1] = _replace(phases[-1], phases[-1].epochs + end - start)
    return transfer.Schedule(phases)


def _replace(phase: transfer.Phase, epochs: int) -> transfer.Phase:
    import dataclasses

    return dataclasses.replace(phase, epochs=int(epochs))


# ------------------------------------------------------------------------------------------------------------
# Tuners
# ------------------------------------------------------------------------------------------------------------

class _EpochCounter(keras.callbacks.Callback):
    """Counts the epochs a trial trains (keras-tuner deep-copies callbacks; this one stays itself)."""

    def __init__(self):
        super().__init__()
        self.epochs = 0

    def __deepcopy__(self, memo):
        return self

    def on_epoch_end(self, epoch, logs=None):
        self.epochs += 1


def _gradient_registry():
    """TensorFlow's global gradient-function registry (a private dict), or None where it is not found."""
    from tensorflow.python.framework import ops as tf_ops

    registry = getattr(getattr(tf_ops, "_gradient_registry", None), "_registry", None)
    return registry if isinstance(registry, dict) else None


def _release_custom_gradients(before) -> int:
    """Drop the ``CustomGradient-N`` entries tracing added to TensorFlow's gradient registry since ``before``.

    Why: Keras 3's TensorFlow optimizer all-reduces the gradients through the replica context even without a
    distribution strategy; in a traced train step that goes through ``tf.custom_gradient``, which registers a
    new gradient function globally per trace, and its closure holds the gradient tensors and with them the
    whole train graph. Nothing removes it, so every trial kept its graph (measured: 8 MB per trial for
    All-CNN-A at 12 px, 30 MB for ResNet-20 with batch norm and Adam; ``keras.backend.clear_session`` does not
    help). Once a trial's model is gone no graph can use these entries again.
    """
    registry = _gradient_registry()
    if registry is None or before is None:
        return 0
    stale = [name for name in list(registry)
             if name not in before and str(name).startswith("CustomGradient-")]
    for name in stale:
        registry.pop(name, None)
    return len(stale)


class _TrialRecords:
    """Tuner mixin: a fresh Keras session per trial, no graph kept after it, a `TRIAL_FILE` in its folder."""

    def run_trial(self, trial, *args, **kwargs):
        keras.backend.clear_session()
        gc.collect()
        registry = _gradient_registry()
        gradients_before = set(registry) if registry is not None else None
        path = Path(self.get_trial_dir(trial.trial_id)) / TRIAL_FILE
        previous = _read_json(path) or {}
        counter = _EpochCounter()
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), counter]
        record = {"trial_id": trial.trial_id, "worker": self.tuner_id,
                  "runs": int(previous.get("runs", 0)) + 1, "pid": os.getpid(), "started": time.time(),
                  "epochs": 0, "seconds": None, "error": None}
        started = time.perf_counter()
        try:
            return super().run_trial(trial, *args, **kwargs)
        except BaseException as err:
            record["error"] = _one_line(f"{type(err).__name__}: {err}")
            raise
        finally:
            record["epochs"] = counter.epochs
            record["seconds"] = round(time.perf_counter() - started, 2)
            _write_json(path, record)
            keras.backend.clear_session()
            _release_custom_gradients(gradients_before)
            gc.collect()


class RandomSearch(_TrialRecords, kt.RandomSearch):
    """keras-tuner's RandomSearch with kcnn's per-trial session clearing and trial records."""


class BayesianOptimization(_TrialRecords, kt.BayesianOptimization):
    """keras-tuner's BayesianOptimization with kcnn's per-trial session clearing and trial records."""


class Hyperband(_TrialRecords, kt.Hyperband):
    """keras-tuner's Hyperband with kcnn's per-trial session clearing and trial records."""


def make_tuner(kind: str, hypermodel, *, directory, project_name: str = "search",
               objective: str = "val_accuracy", max_trials: int | None = 10, epochs: int = 10,
               factor: int = 3, seed: int | None = 0, hyperparameters: kt.HyperParameters | None = None,
               overwrite: bool = False, max_retries_per_trial: int = 0,
               max_consecutive_failed_trials: int = 3):
    """A keras-tuner tuner for a kcnn hypermodel.

    The project lives in ``directory/project_name``; with ``overwrite=False`` an existing project is reloaded
    (keras-tuner's resume): finished trials are kept, a trial that was running when the process died is run
    again, and a larger ``max_trials`` adds trials. In keras-tuner's distributed mode (environment variables
    ``KERASTUNER_TUNER_ID``, ``KERASTUNER_ORACLE_IP``, ``KERASTUNER_ORACLE_PORT``) the same call makes the
    chief or a worker.

    Args:
        kind: "hyperband", "bayesian" or "random".
        hypermodel: A `HyperCNN`, `HyperFineTune` or any `keras_tuner.HyperModel`.
        directory: Folder of the project.
        project_name: Sub-folder of the project.
        objective: Metric to optimise, e.g. "val_accuracy" (max) or "val_loss" (min).
        max_trials: Trials of random and Bayesian search; for Hyperband a cap on its trials (None: no cap;
            Hyperband's own count follows from ``epochs`` and ``factor``).
        epochs: Hyperband's ``max_epochs`` (unused by the others; pass ``epochs`` to ``search``).
        factor: Hyperband's reduction factor.
        seed: Seed of the oracle's sampling.
        hyperparameters: Pre-registered hyperparameters, e.g. `fixed_hyperparameters` overrides.
        overwrite: Start a new project even if one exists.
        max_retries_per_trial: Runs of a crashed trial beyond the first.
        max_consecutive_failed_trials: Failed trials in a row that stop the search.

    Returns:
        A `RandomSearch`, `BayesianOptimization` or `Hyperband` (subclasses of keras-tuner's).

    Example:
        >>> tuner = make_tuner("random", HyperCNN(10, (16, 16, 3)), directory="runs/t", max_trials=5)
        >>> tuner.search(splits.train, validation_data=splits.val, epochs=3)
    """
    if kind not in TUNERS:
        raise ValueError(f"Unknown tuner {kind!r}; choose one of {', '.join(TUNERS)}. "
                         f"Received: kind={kind!r}")
    if max_trials is not None:
        _positive_int("max_trials", max_trials)
    common = dict(hypermodel=hypermodel, objective=objective, seed=seed, hyperparameters=hyperparameters,
                  directory=os.fspath(directory), project_name=project_name, overwrite=overwrite,
                  max_retries_per_trial=int(max_retries_per_trial),
                  max_consecutive_failed_trials=int(max_consecutive_failed_trials))
    if kind == "hyperband":
        tuner = Hyperband(max_epochs=_positive_int("epochs", epochs),
                          factor=_positive_int("factor", factor, 2), **common)
        if max_trials is not None and not isinstance(tuner.oracle, _client_class()):
            tuner.oracle.max_trials = int(max_trials)
        return tuner
    if kind == "bayesian":
        return BayesianOptimization(max_trials=max_trials, **common)
    return RandomSearch(max_trials=max_trials, **common)


def _client_class():
    from keras_tuner.src.distribute import oracle_client

    return oracle_client.OracleClient


def is_worker() -> bool:
    """True in keras-tuner's distributed mode on a worker (not the chief)."""
    from keras_tuner.src.distribute import utils

    return utils.has_chief_oracle() and not utils.is_chief_oracle()


# ------------------------------------------------------------------------------------------------------------
# Reading a search back
# ------------------------------------------------------------------------------------------------------------

def trial_records(tuner) -> list[dict]:
    """One row per trial, in the order they were started.

    Row keys: ``trial_id``, ``status`` (COMPLETED, FAILED, INVALID: crashed and waiting for a retry, RUNNING:
    interrupted, to be retried on resume), ``score`` (the objective of the best epoch), ``epochs`` (epochs
    trained in this trial: Hyperband's later rounds continue a checkpoint and count only their own),
    ``seconds``, ``worker`` (tuner id), ``runs``, every hyperparameter value (Hyperband's ``tuner/...``
    bookkeeping included) and ``reason`` (why a trial failed).

    Args:
        tuner: A tuner from `make_tuner` (on the chief in distributed mode).

    Returns:
        A list of dicts.
    """
    oracle = tuner.oracle
    order = list(getattr(oracle, "start_order", [])) or sorted(oracle.trials)
    order += [t for t in sorted(oracle.trials) if t not in order]
    rows = []
    for trial_id in order:
        trial = oracle.trials[trial_id]
        info = _read_json(Path(tuner.project_dir) / f"trial_{trial_id}" / TRIAL_FILE) or {}
        score = trial.score
        if score is None and trial.metrics.exists(oracle.objective.name):
            score = trial.metrics.get_best_value(oracle.objective.name)
        row = {"trial_id": trial_id, "status": trial.status,
               "score": None if score is None or not math.isfinite(score) else float(score),
               "epochs": info.get("epochs"), "seconds": info.get("seconds"), "worker": info.get("worker"),
               "runs": info.get("runs")}
        row.update(trial.hyperparameters.values)
        reason = info.get("error") if trial.status != "COMPLETED" else None
        if not reason and trial.status in ("FAILED", "INVALID") and trial.message:
            lines = [line for line in str(trial.message).splitlines() if line.strip()]
            reason = _one_line(lines[-1]) if lines else None
        row["reason"] = reason
        rows.append(row)
    return rows


def write_trials_csv(rows: list[dict], path) -> Path:
    """Write `trial_records` rows as CSV (fixed columns first, then hyperparameters, ``reason`` last)."""
    first = ["trial_id", "status", "score", "epochs", "seconds", "worker", "runs"]
    keys = list(first)
    for row in rows:
        keys += [k for k in row if k not in keys and k != "reason"]
    keys.append("reason")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in keys})
    os.replace(tmp, path)
    return path


def search_summary(rows: list[dict], objective: str = "val_accuracy") -> dict:
    """Counts and costs of a search: trials by status, total epochs and seconds, the best score.

    Args:
        rows: `trial_records` rows.
        objective: The objective's name ("loss" in it means lower is better).

    Returns:
        ``{"trials", "completed", "failed", "epochs", "seconds", "best_score", "best_trial"}``.
    """
    done = [r for r in rows if r["status"] == "COMPLETED" and r["score"] is not None]
    lower = "loss" in objective
    best = (min if lower else max)(done, key=lambda r: r["score"]) if done else None
    return {
        "trials": len(rows), "completed": len(done),
        "failed": sum(1 for r in rows if r["status"] in ("FAILED", "INVALID")),
        "epochs": int(sum(r["epochs"] or 0 for r in rows)),
        "seconds": round(float(sum(r["seconds"] or 0 for r in rows)), 1),
        "best_score": None if best is None else best["score"],
        "best_trial": None if best is None else best["trial_id"],
    }


def plot_trials(rows: list[dict], path, objective: str = "val_accuracy", title: str = "") -> Path:
    """Plot a search: each trial's score in start order (coloured by architecture) with the best so far, and
    the best score against the training epochs spent. Failed trials are marked with a red x on the axis.

    Args:
        rows: `trial_records` rows.
        path: Output PNG.
        objective: Name of the score, for the axis label.
        title: Figure title.

    Returns:
        The path written.
    """
    from kcnn import plots  # noqa: F401  (selects the headless backend)
    import matplotlib.pyplot as plt

    lower = "loss" in objective
    arch_key = next((k for k in ("model", "backbone") if any(k in r for r in rows)), None)
    archs = sorted({str(r.get(arch_key)) for r in rows}) if arch_key else ["trial"]
    colors = {a: plt.cm.tab10(i % 10) for i, a in enumerate(archs)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    best, best_curve, spent, spent_curve = None, [], 0, []
    scores = [r["score"] for r in rows if r["score"] is not None]
    floor = min(scores) if scores else 0.0
    for i, row in enumerate(rows):
        score = row["score"] if row["status"] == "COMPLETED" else None
        spent += row.get("epochs") or 0
        if score is not None:
            arch = str(row.get(arch_key)) if arch_key else "trial"
            ax.scatter(i, score, color=colors[arch], s=22, zorder=3)
            if best is None or (score < best if lower else score > best):
                best = score
        elif row["status"] in ("FAILED", "INVALID"):
            ax.scatter(i, floor, marker="x", color="red", s=30, zorder=3)
        best_curve.append(np.nan if best is None else best)
        spent_curve.append(spent)
    ax.plot(range(len(rows)), best_curve, "-", color="black", lw=1, label="best so far")
    for arch in archs if arch_key else []:
        ax.scatter([], [], color=colors[arch], label=arch, s=22)
    if any(r["status"] in ("FAILED", "INVALID") for r in rows):
        ax.scatter([], [], marker="x", color="red", label="failed")
    ax.set_xlabel("trial (start order)")
    ax.set_ylabel(objective)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    axes[1].plot(spent_curve, best_curve, "-o", ms=3)
    axes[1].set_xlabel("training epochs spent (all trials)")
    axes[1].set_ylabel(f"best {objective}")
    axes[1].grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def best_hyperparameters(tuner) -> dict:
    """The best completed trial: ``{"trial_id", "score", "objective", "hyperparameters", "tuner"}``.

    ``hyperparameters`` are the searched values; ``tuner`` holds Hyperband's bookkeeping (``epochs``,
    ``initial_epoch``, ``bracket``, ``round``, ``trial_id`` of the checkpoint it continued) where present.

    Raises:
        ValueError: no trial completed.
    """
    trials = [t for t in tuner.oracle.get_best_trials(1) if t.status == "COMPLETED"]
    if not trials:
        raise ValueError("no trial of the search completed; see trials.csv for the reasons")
    trial = trials[0]
    values = dict(trial.hyperparameters.values)
    return {"trial_id": trial.trial_id, "score": trial.score, "objective": tuner.oracle.objective.name,
            "hyperparameters": {k: v for k, v in values.items() if not k.startswith("tuner/")},
            "tuner": {k[len("tuner/"):]: v for k, v in values.items() if k.startswith("tuner/")}}


def retrain(hypermodel, hyperparameters, train_ds, *, epochs: int, verbose=0):
    """Build ``hypermodel`` with ``hyperparameters`` and train it from scratch on ``train_ds``.

    Args:
        hypermodel: The hypermodel of the search.
        hyperparameters: A `keras_tuner.HyperParameters` (e.g. the best trial's) or a dict of values.
        train_ds: Training data (e.g. train + validation), batched.
        epochs: Epochs (for `HyperFineTune`: the length of its schedule window).
        verbose: Keras verbosity.

    Returns:
        ``(model, history rows, phases)``: the trained model, one dict per epoch (``epoch``, ``loss``,
        ``accuracy``, ...) and the phases run (``index``, ``name``, ``train``, ``epochs``, ``seconds``).
    """
    if isinstance(hyperparameters, dict):
        hyperparameters = fixed_hyperparameters(hyperparameters)
    keras.backend.clear_session()
    gc.collect()
    model = hypermodel.build(hyperparameters)
    started = time.perf_counter()
    history = hypermodel.fit(hyperparameters, model, train_ds, epochs=int(epochs), verbose=verbose)
    seconds = round(time.perf_counter() - started, 3)
    keys = list(history.history)
    rows = [{"epoch": i + 1, **{k: history.history[k][i] for k in keys}} for i in range(len(history.epoch))]
    schedule_history = getattr(history, "schedule_history", None)
    if schedule_history is not None:
        for row, record in zip(rows, schedule_history.epochs):
            row.update(epoch=record["epoch"], phase=record["phase_name"], lr=record.get("lr"))
        phases = [{"index": p["phase"], "name": p["name"], "train": p["train"], "blocks": p["blocks"],
                   "epochs": [p["first_epoch"], p["last_epoch"]], "cached_features": p["cached"],
                   "seconds": round(p["seconds"], 3)} for p in schedule_history.phases]
    else:
        for row in rows:
            row["phase"] = "train"
        phases = [{"index": 1, "name": "train", "train": "all", "epochs": [1, len(rows)], "seconds": seconds}]
    return model, rows, phases


# ------------------------------------------------------------------------------------------------------------
# Small file helpers
# ------------------------------------------------------------------------------------------------------------

def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _write_json(path, value) -> None:
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=1, default=str))
    os.replace(tmp, path)


__all__ = [
    "HyperCNN", "HyperFineTune", "make_tuner", "fixed_hyperparameters", "RandomSearch",
    "BayesianOptimization", "Hyperband", "trial_records", "write_trials_csv", "search_summary", "plot_trials",
    "best_hyperparameters",
    "retrain", "is_worker", "TUNERS", "OBJECTIVES", "DEFAULT_MODELS", "TRIAL_FILE",
]
