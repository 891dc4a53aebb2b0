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
  (memory stays flat across trials) and writes a small ``kcnn_trial.json`` into its trial folder (epochs
  trained, seconds, which worker ran it, the error of a failed trial). `trial_records`, `write_trials_csv`,
  `search_summary`, `plot_trials` and `best_hyperparameters` read a search back; `retrain` trains the best
  configuration from scratch.

Overriding: a ``hp.Fixed(name, value)`` registered before the search (``make_tuner(..., hyperparameters=hp)``,
see `fixed_hyperparameters`) wins over the search space, also for the conditional hyperparameters.

Failures: a loss that becomes NaN stops the trial (``TerminateOnNaN``) and fails it with
``keras_tuner.errors.FailedTrialError("loss became nan ...")``; any other exception (out of memory, ...) is
recorded by keras-tuner as the trial's message and retried ``max_retries_per_trial`` times. The search stops
only after ``max_consecutive_failed_trials`` failures in a row.

Modules: `kcnn.tuning.hypermodels` (the search spaces), `kcnn.tuning.tuners` (the tuners, `make_tuner`,
`is_worker`), `kcnn.tuning.results` (reading a search back, `retrain`, and the atomic `write_json` /
`read_json` its files are written with). Every public name is importable from ``kcnn.tuning`` itself.

Reference: Li et al., "Hyperband: A Novel Bandit-Based Approach to Hyperparameter Optimization", JMLR 2018;
Bergstra & Bengio, "Random Search for Hyper-Parameter Optimization", JMLR 2012; the keras-tuner documentation
("Tune hyperparameters in your custom training loop", "Distributed hyperparameter tuning").
"""
from kcnn.tuning.hypermodels import (DEFAULT_MODELS, DOWNSAMPLE_FAMILIES, LOSS, METRICS, SHORTCUT_FAMILIES,
                                     HyperCNN, HyperFineTune, fixed_hyperparameters)
from kcnn.tuning.results import (TRIAL_FILE, best_hyperparameters, plot_trials, read_json, retrain,
                                 search_summary, trial_records, write_json, write_trials_csv)
from kcnn.tuning.tuners import (OBJECTIVES, TUNERS, BayesianOptimization, Hyperband, RandomSearch, is_worker,
                                make_tuner)

__all__ = [
    "HyperCNN", "HyperFineTune", "make_tuner", "fixed_hyperparameters", "RandomSearch",
    "BayesianOptimization", "Hyperband", "trial_records", "write_trials_csv", "search_summary", "plot_trials",
    "best_hyperparameters", "retrain", "is_worker", "read_json", "write_json",
    "TUNERS", "OBJECTIVES", "DEFAULT_MODELS", "TRIAL_FILE", "LOSS", "METRICS", "DOWNSAMPLE_FAMILIES",
    "SHORTCUT_FAMILIES",
]
