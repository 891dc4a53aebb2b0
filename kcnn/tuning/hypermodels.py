"""The search spaces: `HyperCNN` (registry architectures trained from scratch) and `HyperFineTune` (two-phase
fine-tuning schedules of pretrained backbones), and `fixed_hyperparameters` to pin values.

Both `keras_tuner.HyperModel` classes declare their whole search space inside ``build(hp)`` with a default for
every hyperparameter, so ``build(keras_tuner.HyperParameters())`` gives a sensible model.

Overriding: a ``hp.Fixed(name, value)`` registered before the search (``make_tuner(..., hyperparameters=hp)``,
see `fixed_hyperparameters`) wins over the search space, also for the conditional hyperparameters.

Divergence: both ``fit`` methods add ``keras.callbacks.TerminateOnNaN`` and fail a trial whose loss became NaN
or infinite with ``keras_tuner.errors.FailedTrialError("loss became nan in epoch N ...")``, which keras-tuner
records as a failed trial without retrying it.
"""
from __future__ import annotations

import dataclasses
import math
import weakref

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


#: The toolbox's search space (``toolbox=True``): name -> (values, default).
TOOLBOX_SPACE = {
    "label_smoothing": ((0.0, 0.1, 0.2), 0.0),
    "mixup": ((0.0, 0.2, 0.8), 0.0),
    "augment_magnitude": ((0.0, 5.0, 9.0), 0.0),
}


def _toolbox_values(hp) -> dict:
    """Declare the toolbox's hyperparameters (idempotent) and return their values."""
    return {name: float(hp.Choice(name, list(values), default=default))
            for name, (values, default) in TOOLBOX_SPACE.items()}


def toolbox_stream(ds, values: dict, num_classes: int, seed: int = 0):
    """The training batches of ``ds`` with a trial's RandAugment magnitude (0: none) and mixup alpha (0: none),
    each batch keyed by its index within the pass (labels become soft when mixing; sample weights, if any, are
    kept as they are)."""
    from kcnn.data import augment as kaug

    magnitude, alpha = values.get("augment_magnitude", 0.0), values.get("mixup", 0.0)
    if not magnitude and not alpha:
        return ds
    base = tf.constant([seed, 0x7B0C], tf.int64)
    mixing = kaug.Mixing(mixup=alpha) if alpha else None

    def step(i, batch):
        x, y, w = batch[0], batch[1], (batch[2] if len(batch) == 3 else None)
        key = tf.random.experimental.stateless_fold_in(base, i)
        if magnitude:
            x = kaug.rand_augment(x, key, magnitude)
        if mixing is None:
            return (x, y) if w is None else (x, y, w)
        x, soft = kaug.mix_batch(x, y, tf.random.experimental.stateless_fold_in(key, 1), mixing, num_classes)
        return (x, soft) if w is None else (x, soft, w)  # per-example weights stay the batch's own

    return ds.enumerate().map(step, num_parallel_calls=tf.data.AUTOTUNE)


def check_positive_int(name, value, minimum=1) -> int:
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
    * with ``toolbox=True``: ``label_smoothing`` 0 / 0.1 / 0.2, ``mixup`` (alpha) 0 / 0.2 / 0.8 and
      ``augment_magnitude`` (RandAugment on top of the data's own augmentation) 0 / 5 / 9, *0 each*

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
                 tunable: bool = True, toolbox: bool = False, seed: int = 0):
        super().__init__(name=name, tunable=tunable)
        self.verbose = verbose
        self.toolbox, self.seed = bool(toolbox), int(seed)
        self.num_classes = check_positive_int("num_classes", num_classes)
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
        self.steps_per_execution = check_positive_int(
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
        head = hp.Choice("head", ["gap", "dense", "conv"], default="gap")  # the order is part of the search space
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
        smoothing = _toolbox_values(hp)["label_smoothing"] if self.toolbox else 0.0
        phase = transfer.Phase(epochs=1, train="all", bn="train", lr=float(learning_rate),
                               optimizer=optimizer, weight_decay=float(weight_decay), label_smoothing=smoothing)
        model.compile(optimizer=transfer.make_optimizer(phase), loss=transfer.CrossEntropy(smoothing),
                      metrics=transfer.metrics_for(self.num_classes), steps_per_execution=self.steps_per_execution)
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
            if self.toolbox:
                data = toolbox_stream(data, _toolbox_values(hp), self.num_classes, self.seed)
                if args:
                    args = (data, *args[1:])
                else:
                    kwargs["x"] = data
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
                 tunable: bool = True, toolbox: bool = False, seed: int = 0):
        super().__init__(name=name, tunable=tunable)
        self.verbose = verbose
        self.toolbox, self.seed = bool(toolbox), int(seed)
        self.backbones = _names("backbones", backbones)
        self.weights = dict(weights) if isinstance(weights, dict) else weights
        if isinstance(self.weights, dict):
            missing = [b for b in self.backbones if b not in self.weights]
            if missing:
                raise ValueError(f"`weights` has no entry for {missing}. Received: weights={self.weights!r}")
        for bb in self.backbones:
            w = self._weights_for(bb)
            transfer.preprocessing_mode(bb, w)  # unknown names raise ValueError listing the closest
        self.num_classes = check_positive_int("num_classes", num_classes)
        size = (image_size, image_size) if isinstance(image_size, (int, np.integer)) else tuple(image_size)
        if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in size):
            raise ValueError(f"`image_size` must be an int or (height, width). "
                             f"Received: image_size={image_size!r}")
        self.image_size = tuple(int(s) for s in size)
        self.epochs = check_positive_int("epochs", epochs, minimum=2)
        self.max_unfreeze = check_positive_int("max_unfreeze", max_unfreeze)
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
        self.steps_per_execution = check_positive_int(
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
        smoothing = _toolbox_values(hp)["label_smoothing"] if self.toolbox else 0.0
        return transfer.Schedule([
            transfer.Phase(epochs=head_epochs, train="head", lr=float(v["head_lr"]), optimizer=self.optimizer,
                           label_smoothing=smoothing, name="head"),
            transfer.Phase(epochs=self.epochs - head_epochs, train=f"top:{int(v['unfreeze_blocks'])}",
                           lr=float(v["head_lr"]) * float(v["lr_ratio"]),
                           lr_mult=None if lr_mult == 1.0 else lr_mult,
                           bn=v["bn"], optimizer=self.optimizer, label_smoothing=smoothing, name="fine-tune"),
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
        model.compile(optimizer=transfer.make_optimizer(schedule[0]), loss=transfer.CrossEntropy(
            schedule[0].label_smoothing), metrics=transfer.metrics_for(self.num_classes))
        if self.toolbox:
            _toolbox_values(hp)  # declared in build, so the whole space is known before the first fit
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
        end = check_positive_int("epochs", self.epochs if epochs is None else epochs)
        window = _schedule_until(full, end)
        augmented = self.augmented
        if self.toolbox and isinstance(x, tf.data.Dataset):
            values = _toolbox_values(hp)
            x = toolbox_stream(x, values, self.num_classes, self.seed)
            augmented = True if values["mixup"] or values["augment_magnitude"] else augmented
        result = transfer.fit_schedule(model, self._backbone(hp, model), window, x, validation_data,
                                       callbacks=_with_nan_stop(callbacks), initial_epoch=int(initial_epoch),
                                       verbose=self.verbose if verbose is None else verbose,
                                       augmented=augmented,
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
    return dataclasses.replace(phase, epochs=int(epochs))


__all__ = ["HyperCNN", "HyperFineTune", "fixed_hyperparameters", "DEFAULT_MODELS", "DOWNSAMPLE_FAMILIES",
           "SHORTCUT_FAMILIES", "LOSS", "METRICS"]
