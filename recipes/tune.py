"""Search architectures (--space cnn) or fine-tuning schedules (--space finetune) with keras-tuner.

Writes into --out: best_hyperparameters.json, trials.csv (one row per trial: id, status, score, epochs,
seconds, worker, hyperparameters, the reason of a failure), trials.png, then retrains the best configuration
on train + validation and evaluates it on test: report.json, model.keras, labels.json, history.csv,
curves.png, confusion.png. The keras-tuner project is in --out/search, the search's identity in
--out/search.json.

    python -m recipes.tune --image-size 16 --epochs 9                  # Hyperband over registry CNNs
    python -m recipes.tune --tuner random --max-trials 20 --epochs 9 --out runs/tune-random
    python -m recipes.tune --space finetune --backbones vgg_cifar --weights glyphs --epochs 10
    python -m recipes.tune --models resnet20,allcnn_c --fix optimizer=sgd,batch_norm=true

Resume: run the same command with the same --out. Finished trials are kept, a trial that was running when the
process died runs again, and a larger --max-trials adds trials. An --out holding a different search is
refused.

Distributed: keras-tuner's chief/worker mode. Start the same command (same --out, on a shared disk) once per
process, with KERASTUNER_ORACLE_IP / KERASTUNER_ORACLE_PORT naming the chief and KERASTUNER_TUNER_ID set to
"chief" for one process and to a unique name (tuner0, tuner1, ...) for each worker:

    export KERASTUNER_ORACLE_IP=127.0.0.1 KERASTUNER_ORACLE_PORT=8000
    KERASTUNER_TUNER_ID=chief  python -m recipes.tune --out runs/tune &
    KERASTUNER_TUNER_ID=tuner0 python -m recipes.tune --out runs/tune &
    KERASTUNER_TUNER_ID=tuner1 python -m recipes.tune --out runs/tune &

The chief hands out trials and, when all are done, writes the results and retrains the best configuration; the
workers run trials and exit.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from recipes import _cli

SPACES = ("cnn", "finetune")
TUNERS = ("hyperband", "bayesian", "random")
DEFAULT_MAX_TRIALS = 20
OBJECTIVES = ("val_accuracy", "val_loss", "accuracy", "loss")
SEARCH_FILE = "search.json"
SEARCH_FORMAT = "kcnn-tune"
PROJECT = "search"


@dataclass
class TuneConfig:
    # what to search ----------------------------------------------------------------------------------------
    data: str = field(default="digits", metadata={"help": "digits | glyphs | tfds:NAME | a folder of class "
                                                  "folders"})
    space: str = field(default="cnn", metadata={"help": "cnn (registry architectures from scratch) | "
                                                "finetune (two-phase fine-tuning schedules of --backbones)"})
    models: str = field(default="", metadata={"help": "cnn space: comma-separated registry models (default: "
                                              "resnet20, resnet32, allcnn_c, vgg11, those that fit "
                                              "--image-size)"})
    backbones: str = field(default="vgg_cifar", metadata={"help": "finetune space: comma-separated backbones "
                                                         "(keras.applications or kcnn names)"})
    weights: str = field(default="glyphs", metadata={"help": "finetune space: glyphs (pretrain each "
                                                     "backbone on kcnn's synthetic glyphs, cached) | "
                                                     "imagenet | none | PATH"})
    fix: str = field(default="", metadata={"help": "fixed hyperparameters NAME=VALUE,... (e.g. "
                                           "model=resnet20,learning_rate=0.01)"})
    # how to search -----------------------------------------------------------------------------------------
    tuner: str = field(default="hyperband", metadata={"help": "hyperband | bayesian | random"})
    max_trials: int | None = field(default=None, metadata={
        "help": "trials of random and bayesian search (default 20); for hyperband a cap (default none: its "
                "count follows from --epochs and --factor)"})
    epochs: int = field(default=9, metadata={"help": "epochs per trial (random, bayesian) or Hyperband's "
                                             "maximum"})
    factor: int = field(default=3, metadata={"help": "Hyperband's reduction factor"})
    objective: str = field(default="val_accuracy", metadata={"help": "val_accuracy | val_loss | accuracy | "
                                                             "loss"})
    max_retries: int = field(default=0, metadata={"help": "reruns of a trial that crashed (e.g. out of "
                                                  "memory)"})
    max_failures: int = field(default=5, metadata={"help": "failed trials in a row that stop the search"})
    # data and training -------------------------------------------------------------------------------------
    image_size: int = field(default=32, metadata={"help": "side in pixels the images are loaded at"})
    batch_size: int = field(default=32, metadata={"help": "images per step"})
    per_class: int = field(default=0, metadata={"help": "labelled training images per class (0: all)"})
    steps_per_execution: int | None = field(default=None, metadata={"help": "training steps per call "
                                                                   "(default: kcnn.perf's, 16)"})
    precision: str = _cli.precision_field()
    retrain: bool = field(default=True, metadata={"help": "retrain the best configuration on train+val and "
                                                  "evaluate it on test"})
    # the run -----------------------------------------------------------------------------------------------
    out: str | None = field(default=None, metadata={"help": "search folder (default runs/tune-<time>)"})
    overwrite: bool = field(default=False, metadata={"help": "replace the kcnn search in --out (never another "
                                                     "folder)"})
    seed: int = field(default=0, metadata={"help": "random seed of the data split, the oracle and the "
                                           "training"})
    verbose: int = field(default=1, metadata={"help": "0 silent, 1 trial summaries, 2 also one line per "
                                              "epoch"})


#: Settings that may change when a search is resumed; every other one is part of the search's identity.
RESUME_FREE = ("max_trials", "max_retries", "max_failures", "retrain", "out", "overwrite", "verbose",
               "steps_per_execution")


def parse_fixed(text: str) -> dict:
    """``"a=1,b=sgd,c=true"`` -> ``{"a": 1, "b": "sgd", "c": True}`` (JSON values where they parse)."""
    values = {}
    for item in [part.strip() for part in (text or "").split(",") if part.strip()]:
        if "=" not in item:
            raise _cli.UsageError(f"--fix takes NAME=VALUE pairs separated by commas; got {item!r}")
        name, raw = (s.strip() for s in item.split("=", 1))
        if not name:
            raise _cli.UsageError(f"--fix: empty name in {item!r}")
        lowered = raw.lower()
        try:
            value = json.loads(lowered if lowered in ("true", "false", "null") else raw)
        except ValueError:
            value = raw
        values[name] = value
    return values


def _names(text: str) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]


def check(cfg: TuneConfig) -> None:
    """Validate the options that need no library (fails before anything is read or written)."""
    if cfg.space not in SPACES:
        raise _cli.UsageError(f"unknown --space {cfg.space!r}; choose one of {', '.join(SPACES)}")
    if cfg.tuner not in TUNERS:
        raise _cli.UsageError(f"unknown --tuner {cfg.tuner!r}; choose one of {', '.join(TUNERS)}")
    if cfg.objective not in OBJECTIVES:
        raise _cli.UsageError(f"unknown --objective {cfg.objective!r}; choose one of {', '.join(OBJECTIVES)}")
    for name in ("max_trials", "epochs", "image_size", "batch_size", "steps_per_execution", "max_failures"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise _cli.UsageError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(cfg, name)}")
    for name in ("max_retries", "per_class"):
        if getattr(cfg, name) < 0:
            raise _cli.UsageError(f"--{name.replace('_', '-')} must be >= 0; got {getattr(cfg, name)}")
    if cfg.factor < 2:
        raise _cli.UsageError(f"--factor must be >= 2; got {cfg.factor}")
    if cfg.space == "finetune" and cfg.epochs < 2:
        raise _cli.UsageError(f"--space finetune needs --epochs >= 2 (a head phase and a fine-tune phase); "
                              f"got {cfg.epochs}")
    if cfg.space == "finetune" and not _names(cfg.backbones):
        raise _cli.UsageError("--backbones must name at least one backbone")
    if cfg.seed < 0:
        raise _cli.UsageError(f"--seed must be >= 0; got {cfg.seed}")
    parse_fixed(cfg.fix)


def max_trials_of(cfg: TuneConfig) -> int | None:
    """--max-trials, or its default: 20 for random and Bayesian search, no cap for Hyperband."""
    if cfg.max_trials is not None:
        return cfg.max_trials
    return None if cfg.tuner == "hyperband" else DEFAULT_MAX_TRIALS


def identity(cfg: TuneConfig) -> dict:
    """What makes a search the same search: every setting except `RESUME_FREE`, normalised."""
    values = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RESUME_FREE}
    values["models"] = _names(cfg.models) if cfg.space == "cnn" else []
    values["backbones"] = _names(cfg.backbones) if cfg.space == "finetune" else []
    values["weights"] = cfg.weights if cfg.space == "finetune" else None
    values["fix"] = parse_fixed(cfg.fix)
    if cfg.tuner != "hyperband":
        values["factor"] = None
    from kcnn import perf

    values["precision"] = perf.resolve_precision(cfg.precision)  # what "auto" is on this machine
    return {"format": SEARCH_FORMAT, "version": 1, **values}


def prepare_out(out: Path, ident: dict, overwrite: bool, worker: bool) -> bool:
    """Check that --out can hold this search; returns True when it already does (resume).

    Raises UsageError without touching the folder when it holds a different search or something else.
    """
    from kcnn import runs

    if out.exists() and not out.is_dir():
        raise _cli.UsageError(f"--out {out} is a file, not a folder; choose another --out")
    contents = list(out.iterdir()) if out.is_dir() else []
    if overwrite and not worker:
        if contents and not runs.holds_kcnn_run(out):  # kcnn deletes only what kcnn made: a folder with its marker
            raise _cli.UsageError(f"--out {out} is a folder kcnn did not make (no {runs.MARKER}); kcnn never "
                                  "replaces it, even with --overwrite: choose an empty or new folder")
        if contents:
            runs.check_only_own(out, runs.TUNE_FILES, error=_cli.UsageError)
        return False
    if not contents:
        return False
    search_file = out / SEARCH_FILE
    if not search_file.is_file():
        if worker:  # the chief has not written it yet
            return True
        raise _cli.UsageError(f"--out {out} is not empty and holds no kcnn search ({SEARCH_FILE} is "
                              "missing); choose another --out, or pass --overwrite to replace its contents")
    try:
        old = json.loads(search_file.read_text())
    except ValueError as err:  # not JSON, not UTF-8
        raise _cli.UsageError(f"--out {out}: {search_file} is unreadable ({type(err).__name__}); choose "
                              "another --out or --overwrite") from None
    if not isinstance(old, dict):
        kind = {list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(old), "number")
        raise _cli.UsageError(f"--out {out}: {search_file} is not a kcnn search (it holds a JSON {kind}, not an "
                              "object); choose another --out or --overwrite")
    old.setdefault("precision", "float32")  # searches from before the setting ran in float32
    changed = sorted(k for k in set(old) | set(ident) if old.get(k) != ident.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {old.get(k)!r} -> {ident.get(k)!r}" for k in changed)
        raise _cli.UsageError(f"--out {out} holds a different search ({diffs}); rerun it with the same "
                              "settings to continue it, choose another --out, or pass --overwrite")
    return True


def run(cfg: TuneConfig) -> int:
    check(cfg)
    out = Path(cfg.out) if cfg.out else Path("runs") / f"tune-{time.strftime('%Y%m%d-%H%M%S')}"
    ident = identity(cfg)
    from kcnn import tuning

    worker = tuning.is_worker()
    resuming = prepare_out(out, ident, cfg.overwrite, worker)

    with _cli.keras_policy(ident["precision"]):
        return _search(cfg, out, ident, worker, resuming)


def _search(cfg: TuneConfig, out: Path, ident: dict, worker: bool, resuming: bool) -> int:
    import keras
    import numpy as np
    import tensorflow as tf

    from kcnn import data as kdata
    from kcnn import runs, training, tuning

    training.set_seed(cfg.seed, deterministic=False)
    splits = kdata.load(cfg.data, image_size=cfg.image_size, batch_size=cfg.batch_size, seed=cfg.seed,
                        per_class=cfg.per_class or None)
    num_classes = len(splits.class_names)
    input_shape = tuple(int(s) for s in splits.train.element_spec[0].shape[1:])
    if cfg.verbose:
        sizes = ", ".join(f"{k} {v}" for k, v in splits.num_examples.items())
        print(f"data {cfg.data}: {num_classes} classes; {sizes}; images {input_shape}", flush=True)
    fixed = parse_fixed(cfg.fix)
    fit_verbose = 2 if cfg.verbose >= 2 else 0  # one line per epoch at --verbose 2
    if cfg.space == "cnn":
        hypermodel = tuning.HyperCNN(num_classes, input_shape, models=_names(cfg.models) or None,
                                     steps_per_execution=cfg.steps_per_execution, verbose=fit_verbose)
    else:
        backbones = _names(cfg.backbones)
        weights = _backbone_weights(cfg, backbones)
        hypermodel = tuning.HyperFineTune(backbones, weights, num_classes=num_classes,
                                          image_size=input_shape[:2], epochs=cfg.epochs, augmented=False,
                                          steps_per_execution=cfg.steps_per_execution, verbose=fit_verbose)
    hypermodel.build(tuning.fixed_hyperparameters(fixed))  # bad --fix values fail here, before any writing
    keras.backend.clear_session()

    # From here on the folder is written.
    if not worker:
        if cfg.overwrite and out.exists():
            runs.clear_owned(out, runs.TUNE_FILES)  # prepare_out checked that it holds only a kcnn search
        out.mkdir(parents=True, exist_ok=True)
        runs.atomic_write_text(out / runs.MARKER, json.dumps({"format": runs.MARKER_FORMAT, "recipe": "tune"}))
        tuning.write_json(out / SEARCH_FILE, ident)
    tuner = tuning.make_tuner(cfg.tuner, hypermodel, directory=out, project_name=PROJECT,
                              objective=cfg.objective, max_trials=max_trials_of(cfg), epochs=cfg.epochs,
                              factor=cfg.factor, seed=cfg.seed,
                              hyperparameters=tuning.fixed_hyperparameters(fixed) if fixed else None,
                              max_retries_per_trial=cfg.max_retries,
                              max_consecutive_failed_trials=cfg.max_failures)
    if not worker:
        tuner.oracle.verbose = 1 if cfg.verbose else 0  # keras-tuner's trial summaries
        tuner.save()  # a process killed in its first trial resumes that trial
    if cfg.verbose:
        distributed = bool(os.environ.get("KERASTUNER_ORACLE_IP"))
        role = f" as {os.environ.get('KERASTUNER_TUNER_ID')}" if distributed else ""
        print(f"{'resuming' if resuming else 'starting'} {cfg.tuner} search ({cfg.space}) in {out}{role}",
              flush=True)
    _keras_tuner_tracebacks(cfg.verbose >= 2)  # a failed trial's reason is in trials.csv either way
    started = time.perf_counter()
    stopped = None
    from recipes import _signals

    try:
        with _signals.terminate_as_interrupt():
            tuner.search(splits.train, validation_data=splits.val, epochs=cfg.epochs)
    except RuntimeError as err:  # keras-tuner: too many failed trials in a row
        stopped = " ".join(str(err).split())[:300]
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM
        print(f"error: {_signals.what(err)}; finished trials are kept, rerun the same command to continue the search "
              f"in {out}", file=sys.stderr)
        return _signals.exit_code(err)
    if worker:
        if cfg.verbose:
            print(f"worker {tuner.tuner_id}: no more trials; done", flush=True)
        return 0

    rows = tuning.trial_records(tuner)
    tuning.write_trials_csv(rows, out / "trials.csv")
    tuning.plot_trials(rows, out / "trials.png", objective=cfg.objective,
                       title=f"{cfg.tuner} search over {cfg.space} on {cfg.data}")
    summary = tuning.search_summary(rows, cfg.objective)
    summary["search_seconds_this_run"] = round(time.perf_counter() - started, 1)
    print(f"search: {summary['trials']} trials ({summary['completed']} completed, {summary['failed']} "
          f"failed), {summary['epochs']} training epochs; best {cfg.objective} {_fmt(summary['best_score'])} "
          f"(trial {summary['best_trial']})", flush=True)
    if stopped:
        print(f"error: the search stopped: {stopped} (see {out / 'trials.csv'})", file=sys.stderr)
        return 1
    try:
        best = tuning.best_hyperparameters(tuner)
    except ValueError as err:
        print(f"error: {err} ({out / 'trials.csv'})", file=sys.stderr)
        return 1
    best["search"] = summary
    tuning.write_json(out / "best_hyperparameters.json", best)
    if not cfg.retrain:
        return 0
    return _retrain(cfg, out, tuner, hypermodel, best, splits, summary, np, tf)


def _keras_tuner_tracebacks(show: bool) -> None:
    from kcnn import _compat

    try:
        kt_config = _compat.kt_config_module()
    except _compat.CompatError:  # pragma: no cover - another keras-tuner layout: keep its default
        return
    kt_config.DEBUG = bool(show)


def _backbone_weights(cfg, backbones) -> dict:
    from kcnn import training

    choice = cfg.weights.strip()
    if choice.lower() == "none":
        return {b: None for b in backbones}
    if choice.lower() == "glyphs":
        return {b: os.fspath(training.pretrained_checkpoint(b, image_size=cfg.image_size, seed=cfg.seed,
                                                            verbose=cfg.verbose))
                for b in backbones}
    return {b: choice for b in backbones}


def _retrain(cfg, out, tuner, hypermodel, best, splits, summary, np, tf) -> int:
    """Train the best configuration on train + val, evaluate on test, write the report (once per best)."""
    from kcnn import training, tuning

    report_file = out / "report.json"
    previous = tuning.read_json(report_file)
    if not isinstance(previous, dict) or not isinstance(previous.get("test_accuracy"), (int, float)):
        previous = {}  # none, or not a report kcnn wrote: retrain and write it anew
    if (previous.get("best_trial") == best["trial_id"]
            and previous.get("best_hyperparameters") == best["hyperparameters"]
            and (out / "model.keras").is_file()):
        previous["search"] = summary
        tuning.write_json(report_file, previous)
        print(f"best configuration unchanged (trial {best['trial_id']}); test accuracy "
              f"{previous['test_accuracy']:.3f} ({out})", flush=True)
        return 0
    trial = tuner.oracle.get_trial(best["trial_id"])
    epochs = int(best["tuner"].get("epochs", cfg.epochs))
    x_train, y_train = splits.arrays["train"]
    x_val, y_val = splits.arrays["val"]
    x = np.concatenate([x_train, x_val])
    y = np.concatenate([y_train, y_val])
    train_val = (tf.data.Dataset.from_tensor_slices((x, y))
                 .shuffle(len(x), seed=cfg.seed, reshuffle_each_iteration=True).batch(cfg.batch_size))
    if cfg.verbose:
        print(f"retraining trial {best['trial_id']}'s configuration on train+val ({len(x)} images, "
              f"{epochs} epochs)", flush=True)
    training.set_seed(cfg.seed, deterministic=False)
    model, history, phases = tuning.retrain(hypermodel, trial.hyperparameters, train_val, epochs=epochs,
                                            verbose=hypermodel.verbose)
    run = training.RunDir(out, config=dataclasses.asdict(cfg))
    run.state = {"phases": phases}
    extra = {"space": cfg.space, "tuner": cfg.tuner, "data": cfg.data, "objective": cfg.objective,
             "best_trial": best["trial_id"], "best_score": best["score"],
             "best_hyperparameters": best["hyperparameters"], "retrain_epochs": epochs,
             "train_examples": int(len(x)), "search": summary}
    report = training.finish_run(run, model, test_ds=splits.test, class_names=splits.class_names,
                                 history=history, seed=cfg.seed, extra=extra,
                                 title=f"best of the {cfg.tuner} search on {cfg.data}")
    print(f"test accuracy {report['test_accuracy']:.3f} (best trial {best['trial_id']}, retrained on "
          f"train+val)  ({out})", flush=True)
    return 0


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def main(argv=None) -> int:
    return _cli.run(run, TuneConfig, argv, prog="python -m recipes.tune", description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
