"""What every recipe shares: a config dataclass becomes the command line and a TOML config file; errors from the
library become one line ``error: ...`` on stderr and exit code 2.

Precedence: the dataclass defaults < ``--config FILE.toml`` < command-line options.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import sys
import tomllib
from pathlib import Path
from typing import Callable

EXIT_USAGE = 2


class UsageError(ValueError):
    """Bad input that the recipe itself detects."""


#: Fields of a recipe config that say where it runs, not what it computes: left out of a run's config.toml
#: (a run resumed elsewhere is the same run; --show-batch stops before a run folder exists).
PLACEMENT = ("distribute", "cpu_devices", "show_batch")


def distribute_field() -> dataclasses.Field:
    """The ``--distribute`` option of the training recipes."""
    return dataclasses.field(default="none", metadata={
        "help": "none | mirrored (all local GPUs, or --cpu-devices) | multiworker (machines from TF_CONFIG)",
        "choices": ["none", "mirrored", "multiworker"]})


def cpu_devices_field() -> dataclasses.Field:
    """The ``--cpu-devices`` option that goes with ``--distribute mirrored``."""
    return dataclasses.field(default=None, metadata={
        "help": "with --distribute mirrored: mirror over N logical CPU devices instead of the GPUs (testing)"})


def show_batch_field() -> dataclasses.Field:
    """The ``--show-batch`` option of the training recipes."""
    return dataclasses.field(default=False, metadata={
        "help": "write augment.png (training images as the model sees them, with labels) and stop"})


def augment_field(default, help_default: str = "") -> dataclasses.Field:
    """The ``--augment`` option; the choices are the library's (`kcnn.options.AUGMENTS`)."""
    from kcnn import options

    return dataclasses.field(default=default, metadata={
        "help": " | ".join(options.AUGMENTS) + (f" ({help_default})" if help_default else ""),
        "choices": list(options.AUGMENTS)})


def precision_field() -> dataclasses.Field:
    """The ``--precision`` option of the training recipes (see `kcnn.perf.auto_precision`)."""
    return dataclasses.field(default="auto", metadata={
        "help": "auto (mixed_bfloat16 on a CPU with AMX, else float32; $KCNN_PRECISION overrides auto) | "
                "float32 | mixed_bfloat16 (bfloat16 compute, float32 weights)",
        "choices": ["auto", "float32", "mixed_bfloat16"]})


@contextlib.contextmanager
def keras_policy(name: str):
    """Run the block under Keras' dtype policy ``name`` (a resolved ``--precision``), then put the caller's back:
    recipes also run inside other programs (tests, notebooks), whose policy they must leave as it was."""
    import keras

    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)


def check_distribute(cfg) -> None:
    """``--cpu-devices`` needs ``--distribute mirrored`` and N >= 1."""
    if cfg.cpu_devices is not None and (cfg.distribute != "mirrored" or cfg.cpu_devices < 1):
        raise UsageError(f"--cpu-devices takes N >= 1 and goes with --distribute mirrored; got --cpu-devices "
                         f"{cfg.cpu_devices} with --distribute {cfg.distribute}")


def check_weights(weights: str, special=("imagenet", "none")) -> None:
    """``--weights``: one of ``special`` or a readable file or folder (checked before anything is written)."""
    if weights.lower() in special:
        return
    path = Path(weights)
    if not path.exists():
        raise UsageError(f"--weights {weights}: no such file or folder; give {' | '.join(special)} or the path "
                         "of a weights file (.h5, .weights.h5) or a kcnn checkpoint folder")
    if not os.access(path, os.R_OK) or (path.is_dir() and not os.access(path, os.X_OK)):
        raise UsageError(f"--weights {weights}: permission denied; make it readable or copy it elsewhere")


def use_onednn() -> None:
    """The recipes' one place that turns TensorFlow's oneDNN kernels on (x86, before TensorFlow loads, unless
    the user set TF_ENABLE_ONEDNN_OPTS): TensorFlow turns them on by itself only on CPUs with AVX-512 VNNI/BF16
    or AMX, and without them training on AVX2-only CPUs runs at a third to a half of the speed."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if platform.machine().lower() in ("x86_64", "amd64") and "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def ordered_fields(config_cls) -> list[dataclasses.Field]:
    """The fields of a recipe config, the recipe's own first, then those it inherits (the toolbox's)."""
    own = set(config_cls.__dict__.get("__annotations__", {}))
    fields = dataclasses.fields(config_cls)
    return [f for f in fields if f.name in own] + [f for f in fields if f.name not in own]


def run_config(cfg, **overrides) -> dict:
    """``cfg`` as the dict a run folder's config.toml records: without the placement fields, plus overrides.

    ``precision`` is recorded as what it resolves to on this machine ("auto" -> float32 or mixed_bfloat16), so a
    resumed run computes in the precision it started with, or is refused with the difference named."""
    config = {f.name: getattr(cfg, f.name) for f in ordered_fields(type(cfg)) if f.name not in PLACEMENT}
    if "precision" in config:
        from kcnn import perf

        config["precision"] = perf.resolve_precision(config["precision"])
    return {**config, **overrides}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        self.exit(EXIT_USAGE, f"error: {message} (see {self.prog} --help)\n")


def _type_of(field: dataclasses.Field):
    t = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    return t.replace(" ", "")


def build_parser(config_cls, prog: str, description: str, positional: tuple = ()) -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE.toml", help="read any of these options from a TOML file "
                        "(keys as below, with _ or -); command-line options win")
    for f in ordered_fields(config_cls):
        help_text = f.metadata.get("help", "")
        kind = _type_of(f)
        if f.name in positional:
            parser.add_argument(f.name, nargs="+" if kind.startswith("list") else None, help=help_text)
            continue
        flag = "--" + f.name.replace("_", "-")
        if _field_kind(f)[0] == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text if f.default is None else f"{help_text} (default: {f.default})")
            continue
        caster = {"int": int, "float": float, "int|None": int, "float|None": float}.get(kind, str)
        default = f.default if f.default is not dataclasses.MISSING else None
        parser.add_argument(flag, type=caster, default=None, metavar=f.metadata.get("metavar", f.name.upper()),
                            choices=f.metadata.get("choices"), help=f"{help_text} (default: {default})")
    return parser


def _field_kind(field: dataclasses.Field) -> tuple[str, bool]:
    """(base type name, optional) of a config field: ("int", True) for ``int | None``."""
    kind = _type_of(field)
    optional = kind.endswith("|None")
    return (kind[:-len("|None")] if optional else kind), optional


def check_value(field: dataclasses.Field, value, where: str):
    """A config-file value checked like its flag: the field's type (ints are accepted for floats), its
    choices; returns the value (as float for float fields). Raises UsageError naming the key and ``where``."""
    kind, optional = _field_kind(field)
    key = field.name
    if value is None and optional:
        return None
    expected = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}.get(kind)
    ok = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          "bool": lambda v: isinstance(v, bool),
          "str": lambda v: isinstance(v, str)}.get(kind, lambda v: True)
    if not ok(value):
        shown = f'"{value}" (a string)' if isinstance(value, str) else repr(value)
        raise UsageError(f"{where}: {key} must be {expected}; got {shown}")
    choices = field.metadata.get("choices")
    if choices and value not in choices:
        raise UsageError(f"{where}: {key} must be one of {', '.join(map(str, choices))}; got {value!r}")
    return float(value) if kind == "float" else value


def parse(config_cls, argv, prog: str, description: str, positional: tuple = ()):
    """Parse ``argv`` (with an optional TOML --config) into an instance of ``config_cls``.

    Values from the file get the same types and choices as the flags (`check_value`)."""
    parser = build_parser(config_cls, prog, description, positional)
    args = parser.parse_args(argv)
    values = {}
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise UsageError(f"--config {path}: no such file")
        try:
            data = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise UsageError(f"--config {path}: not valid TOML ({err})") from None
        for key, value in data.items():
            name = key.replace("-", "_")
            if name not in fields or name in positional:
                raise UsageError(f"--config {path}: unknown option {key!r}; valid: "
                                 f"{', '.join(sorted(set(fields) - set(positional)))}")
            values[name] = check_value(fields[name], value, f"--config {path}")
    for name in fields:
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    return config_cls(**values)


def run(main_fn: Callable, config_cls, argv, prog: str, description: str, positional: tuple = ()) -> int:
    """Parse, call ``main_fn(config)``, and turn library errors into ``error: ...`` + exit code 2."""
    use_onednn()
    try:
        config = parse(config_cls, argv, prog, description, positional)
        result = main_fn(config)
        return 0 if result is None else int(result)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2, already printed)
        return int(exc.code or 0)
    except KeyboardInterrupt as err:  # the training skeleton says where the run stands (recipes/_job.py)
        print(f"error: {err or 'interrupted'}", file=sys.stderr)
        return 130
    except (ValueError, OSError) as err:  # OSError: files, disk full, permission denied
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE
