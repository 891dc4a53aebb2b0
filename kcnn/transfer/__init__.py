"""Transfer learning: backbones, classifiers on top of them, and freeze/unfreeze schedules as data.

The pieces, in the order a fine-tuning run uses them:

* `backbone(name, weights)`: a headless keras.applications or kcnn model, its own preprocessing as a Keras
  layer, and its ordered blocks (stage name -> layer names, shallow to deep) for freezing by block.
* `classifier(backbone, classes)`: raw RGB images of any size -> ``resize`` -> ``preprocess`` -> ``backbone``
  (a nested model) -> a new head from `kcnn.layers.classifier_head`. Saves and loads as ``.keras`` in safe
  mode (stock layers only, no ``Lambda``).
* `Phase` / `Schedule` / `load_schedule`: a fine-tuning schedule as data (presets, TOML or JSON files).
* `fit_schedule(model, backbone, schedule, train_ds, val_ds)`: runs the phases as consecutive ``fit``
  calls with continuous epoch numbers, resumable from any finished epoch, training only the head on cached
  backbone features when that is exact.
* `save_checkpoint` / `load_checkpoint`: the pretraining checkpoint format (``model.keras`` +
  ``kcnn.json``) that `backbone(None, weights=DIR)` turns back into a backbone.

Batch norm, the two switches: ``trainable=False`` freezes a layer's weights (and, in Keras 3,
makes a BatchNormalization layer normalise with its moving statistics), while calling the backbone with
``training=False`` makes *every* BN layer in it use its moving statistics, even in blocks whose weights train.
`fit_schedule` does both: layers of frozen blocks get ``trainable=False``; with ``bn="frozen"`` (the default)
the backbone runs with ``training=False`` so no moving statistic changes in any phase; with ``bn="train"`` the
BN layers of the trained blocks use batch statistics and update their moving averages with momentum 0.9
(kcnn's `kcnn.layers.BN_MOMENTUM`; with keras.applications' 0.99 a moving statistic needs ~500 steps to
forget its start value).

Keras 3.15 note: a ``training=False`` written into a functional graph (``base(x, training=False)``, the Keras
guide's recipe) is overridden by ``fit``'s ``training=True`` (``keras/src/models/functional.py``:
``operation_fn`` injects the outer value), so BN moving statistics drift anyway. `fit_schedule` therefore fits
a small view of the classifier that calls the backbone with an explicit ``training`` argument at run time; the
saved classifier itself is a plain functional model. `classifier` returns the backbone frozen
(``trainable=False``), which keeps BN in inference mode even when someone calls ``model.fit`` directly.

Reference: Yosinski et al., "How transferable are features in deep neural networks?", NeurIPS 2014;
Howard & Ruder, "Universal Language Model Fine-tuning for Text Classification" (gradual unfreezing,
discriminative rates), ACL 2018; the Keras guide "Transfer learning & fine-tuning".

The package, one concern per module (at import time each uses only modules listed above it):

* ``families``: one entry per keras.applications family (its models and native sizes, minimum size,
  preprocessing, block rules), read by names, preprocessing, blocks and `kcnn.checks`.
* ``names``: backbone names (keras.applications or the kcnn registry), minimum sizes, input-shape checks.
* ``preprocessing``: the preprocessing modes as Keras layers; which mode a backbone uses.
* ``schedule``: `Phase`, `Schedule`, the presets, schedule files and ``train`` specs.
* ``rules``: schedule rules computed from the training set's size (auto, fastai, bit, keras-guide).
* ``blocks``: a backbone's blocks, trainability per block, per-block learning-rate multipliers.
* ``checkpoint``: the kcnn checkpoint format.
* ``backbones``: `Backbone`, `backbone` and `classifier`.
* ``losses``: the loss (label smoothing, integer or soft labels) and metrics (accuracy, top-5, macro-F1).
* ``optim``: `PhaseLearningRate`, the ``Layerwise*`` optimizers (rate multipliers, weight average), `make_optimizer`,
  `phase_rate`.
* ``datasets``: `as_dataset`, `steps_per_epoch`.
* ``feature_cache``: backbone features computed once for head-only phases.
* ``history``: `ScheduleHistory` and the lines printed before and after each phase.
* ``plan``: the phase plan both engines run (`make_plan`, `phase_runner`, `TrainView`).
* ``state``: a training state as arrays (model and optimizer variables, phase, epoch) for exact resume.
* ``fit``: `fit_schedule`, the Keras-fit engine.
"""
from __future__ import annotations

# Module attributes the single-file kcnn.transfer had; kept so that ``kcnn.transfer.<name>`` still resolves.
import dataclasses  # noqa: F401
import difflib  # noqa: F401
import json  # noqa: F401
import math  # noqa: F401
import os  # noqa: F401
import re  # noqa: F401
import time  # noqa: F401
from dataclasses import dataclass  # noqa: F401
from pathlib import Path  # noqa: F401
from typing import Callable, Sequence  # noqa: F401

import keras  # noqa: F401
import numpy as np  # noqa: F401
import tensorflow as tf  # noqa: F401
from keras import layers, ops  # noqa: F401

from kcnn import layers as kl  # noqa: F401
from kcnn import perf  # noqa: F401
from kcnn import weights as kw  # noqa: F401
from kcnn.registry import get_entry, list_models  # noqa: F401
from kcnn.weights import WeightsError

from kcnn.transfer.names import KCNN, KERAS
from kcnn.transfer.preprocessing import (
    CAFFE_MEAN_BGR, PREPROCESSING, TORCH_MEAN, TORCH_STD, preprocess_layer, preprocessing_mode,
)
from kcnn.transfer.schedule import (
    BN_MODES, LR_SCHEDULES, OPTIMIZERS, PHASE_FIELDS, PRESETS, Phase, Schedule, load_schedule, resolve_train,
)
from kcnn.transfer.rules import RULES, auto_schedule, rule_schedule
from kcnn.transfer.blocks import block_layers, lr_multipliers, set_trainable, split_model
from kcnn.transfer.checkpoint import (
    CHECKPOINT_FORMAT, CHECKPOINT_META, CHECKPOINT_MODEL, CHECKPOINT_VERSION, load_checkpoint,
    save_checkpoint,
)
from kcnn.transfer.backbones import Backbone, backbone, classifier
from kcnn.transfer.optim import (
    LayerwiseAdam, LayerwiseAdamW, LayerwiseRMSprop, LayerwiseSGD, PhaseLearningRate, averaged_weights,
    copy_average, make_optimizer, phase_rate,
)
from kcnn.transfer.losses import Accuracy, CrossEntropy, MacroF1, TopKAccuracy, metrics_for
from kcnn.transfer.datasets import EpochData, as_dataset, steps_per_epoch
from kcnn.transfer.feature_cache import FEATURE_CACHE_LIMIT_BYTES
from kcnn.transfer.history import ScheduleHistory, phase_header, phase_record, phase_summary
from kcnn.transfer.plan import (Diverged, PhasePlan, PhaseRun, TrainView, check_finite, check_initial_epoch,
                                make_plan,
                                phase_runner, prepare_phase, set_bn_momentum)
from kcnn.transfer.state import (checkpoint_phase, restore_model_state, restore_optimizer_state,
                                 training_state)
from kcnn.transfer.fit import LOSS, METRICS, fit_schedule, metric_state

__all__ = [
    "Backbone", "backbone", "classifier", "preprocess_layer", "preprocessing_mode", "PREPROCESSING",
    "block_layers", "set_trainable", "resolve_train", "lr_multipliers", "Phase", "Schedule", "PRESETS",
    "load_schedule", "auto_schedule", "RULES", "rule_schedule", "fit_schedule", "ScheduleHistory",
    "make_optimizer", "PhaseLearningRate",
    "LayerwiseAdam", "LayerwiseAdamW", "LayerwiseSGD", "LayerwiseRMSprop", "save_checkpoint",
    "load_checkpoint", "WeightsError", "CHECKPOINT_FORMAT",
    # the phase plan and the training state both engines share (kcnn.distribute runs the custom loop)
    "as_dataset", "steps_per_epoch", "EpochData", "phase_rate", "phase_header", "phase_summary",
    "phase_record", "split_model", "TrainView", "set_bn_momentum", "PhasePlan", "make_plan", "phase_runner",
    "prepare_phase", "PhaseRun", "check_initial_epoch", "training_state", "restore_model_state",
    "restore_optimizer_state",
    "checkpoint_phase", "Diverged", "check_finite",
    # the loss and metrics (integer or soft labels), the weight average
    "CrossEntropy", "Accuracy", "TopKAccuracy", "MacroF1", "metrics_for", "averaged_weights", "copy_average",
    # constants: names, preprocessing, schedule choices, checkpoint files, the default loss
    "KCNN", "KERAS", "CAFFE_MEAN_BGR", "TORCH_MEAN", "TORCH_STD", "BN_MODES", "LR_SCHEDULES", "OPTIMIZERS",
    "PHASE_FIELDS", "CHECKPOINT_META", "CHECKPOINT_MODEL", "CHECKPOINT_VERSION", "FEATURE_CACHE_LIMIT_BYTES",
    "LOSS", "METRICS", "metric_state",
]
