"""Tuners that record what each trial cost: keras-tuner's RandomSearch / BayesianOptimization / Hyperband with
a cleared Keras session per trial, no traced graph kept after it, and a `TRIAL_FILE` in each trial folder.

* `make_tuner(kind, hypermodel, ...)` builds one of them for a kcnn hypermodel (or any keras-tuner one).
* Each trial starts from a cleared Keras session and releases its traced graphs when it ends, so memory stays
  flat across trials (see `_release_custom_gradients` for the TensorFlow leak this works around), and writes
  ``kcnn_trial.json`` into its trial folder: epochs trained, seconds, which worker ran it, how many times it
  ran, the error of a failed trial. `kcnn.tuning.results` reads these back.
* `is_worker` tells a worker of keras-tuner's distributed mode from the chief.

Failures: a loss that becomes NaN fails the trial (`keras_tuner.errors.FailedTrialError`, raised by the
hypermodels' ``fit``); any other exception (out of memory, ...) is recorded by keras-tuner as the trial's
message and retried ``max_retries_per_trial`` times. The search stops only after
``max_consecutive_failed_trials`` failures in a row.

Reference: Li et al., "Hyperband: A Novel Bandit-Based Approach to Hyperparameter Optimization", JMLR 2018;
Bergstra & Bengio, "Random Search for Hyper-Parameter Optimization", JMLR 2012; the keras-tuner documentation
("Tune hyperparameters in your custom training loop", "Distributed hyperparameter tuning").
"""
from __future__ import annotations

import gc
import os
import time
from pathlib import Path

import keras
import keras_tuner as kt

from kcnn import _compat
from kcnn.tuning.hypermodels import check_positive_int
from kcnn.tuning.results import TRIAL_FILE, one_line, read_json, write_json

TUNERS = ("hyperband", "bayesian", "random")
OBJECTIVES = ("val_accuracy", "val_loss", "accuracy", "loss")


class _EpochCounter(keras.callbacks.Callback):
    """Counts the epochs a trial trains (keras-tuner deep-copies callbacks; this one stays itself)."""

    def __init__(self):
        super().__init__()
        self.epochs = 0

    def __deepcopy__(self, memo):
        return self

    def on_epoch_end(self, epoch, logs=None):
        self.epochs += 1


def _release_custom_gradients(before) -> int:
    """Drop the ``CustomGradient-N`` entries tracing added to TensorFlow's gradient registry since ``before``.

    Why: Keras 3's TensorFlow optimizer all-reduces the gradients through the replica context even without a
    distribution strategy; in a traced train step that goes through ``tf.custom_gradient``, which registers a
    new gradient function globally per trace, and its closure holds the gradient tensors and with them the
    whole train graph. Nothing removes it, so every trial kept its graph (measured: 8 MB per trial for
    All-CNN-A at 12 px, 30 MB for ResNet-20 with batch norm and Adam; ``keras.backend.clear_session`` does not
    help). Once a trial's model is gone no graph can use these entries again.
    """
    registry = _compat.tf_gradient_registry()
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
        registry = _compat.tf_gradient_registry()
        gradients_before = set(registry) if registry is not None else None
        path = Path(self.get_trial_dir(trial.trial_id)) / TRIAL_FILE
        previous = read_json(path) or {}
        counter = _EpochCounter()
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), counter]
        record = {"trial_id": trial.trial_id, "worker": self.tuner_id,
                  "runs": int(previous.get("runs", 0)) + 1, "pid": os.getpid(), "started": time.time(),
                  "epochs": 0, "seconds": None, "error": None}
        started = time.perf_counter()
        try:
            return super().run_trial(trial, *args, **kwargs)
        except BaseException as err:
            record["error"] = one_line(f"{type(err).__name__}: {err}")
            raise
        finally:
            record["epochs"] = counter.epochs
            record["seconds"] = round(time.perf_counter() - started, 2)
            write_json(path, record)
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
        check_positive_int("max_trials", max_trials)
    common = dict(hypermodel=hypermodel, objective=objective, seed=seed, hyperparameters=hyperparameters,
                  directory=os.fspath(directory), project_name=project_name, overwrite=overwrite,
                  max_retries_per_trial=int(max_retries_per_trial),
                  max_consecutive_failed_trials=int(max_consecutive_failed_trials))
    if kind == "hyperband":
        tuner = Hyperband(max_epochs=check_positive_int("epochs", epochs),
                          factor=check_positive_int("factor", factor, 2), **common)
        if max_trials is not None and not isinstance(tuner.oracle, _compat.kt_oracle_client_class()):
            tuner.oracle.max_trials = int(max_trials)
        return tuner
    if kind == "bayesian":
        return BayesianOptimization(max_trials=max_trials, **common)
    return RandomSearch(max_trials=max_trials, **common)


def is_worker() -> bool:
    """True in keras-tuner's distributed mode on a worker (not the chief)."""
    utils = _compat.kt_distribute_utils()
    return bool(utils.has_chief_oracle() and not utils.is_chief_oracle())


__all__ = ["RandomSearch", "BayesianOptimization", "Hyperband", "make_tuner", "is_worker", "TUNERS",
           "OBJECTIVES"]
