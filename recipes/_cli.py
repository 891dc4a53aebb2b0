"""What every recipe shares: a config dataclass becomes the command line and a TOML config file; a mistake in the
user's input becomes one line ``error: ...`` on stderr and exit code 2, a bug of kcnn one line that says so (with
the traceback in a file) and exit code 1.

Precedence: the dataclass defaults < ``--config FILE.toml`` < command-line options.

Input error or bug (`is_input_error`): an error about the user's input is

* an `OSError` (a missing or unreadable file, permission denied, the disk full);
* an exception class that kcnn defines for bad input (`UsageError`, `kcnn.weights.WeightsError`,
  `kcnn.runs.RunError`, `kcnn.data.DataError`, ... : every `ValueError` subclass of a kcnn or recipes module);
* a plain `ValueError` raised by a ``raise`` statement of kcnn's or the recipes' own code (their validation).

Everything else is a bug: a `TypeError`, `AttributeError`, `KeyError`, `IndexError`, ... anywhere, and a
`ValueError` raised inside TensorFlow, Keras, NumPy or the standard library (kcnn turns the ones it expects into
its own errors, e.g. an unreadable weights file into a `WeightsError`). A bug prints one line naming the exception
and the file that holds the traceback: ``error.log`` in the run folder when ``--out`` is a kcnn folder that already
exists, else a new file in the system's temporary folder. With ``KCNN_DEBUG=1`` the traceback goes to stderr
instead (for input errors too).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import sys
import tempfile
import time
import tomllib
import traceback
from pathlib import Path
from typing import Callable

from kcnn import options

EXIT_USAGE = 2
#: The exit code of an internal error (a bug of kcnn, not the user's input).
EXIT_INTERNAL = 1
#: The file in a run folder that receives the traceback of an internal error.
ERROR_LOG = "error.log"
#: The folders whose code raises kcnn's own input errors (the packages ``kcnn`` and ``recipes``).
_OWN_CODE = tuple(os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), name, "")
                  for name in ("kcnn", "recipes"))


class UsageError(ValueError):
    """Bad input that the recipe itself detects."""


#: Fields of a recipe config that say where it runs, not what it computes: left out of a run's config.toml
#: (a run resumed elsewhere is the same run; --show-batch stops before a run folder exists).
PLACEMENT = ("distribute", "cpu_devices", "show_batch")


def distribute_field() -> dataclasses.Field:
    """The ``--distribute`` option of the training recipes."""
    return dataclasses.field(default="none", metadata={
        "help": "none | mirrored (all local GPUs, or --cpu-devices) | multiworker (machines from TF_CONFIG)",
        "choices": list(options.DISTRIBUTE_KINDS)})


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
        "choices": list(options.PRECISIONS)})


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
    # a kcnn checkpoint (a folder with kcnn.json, or its model.keras / kcnn.json): its kcnn.json is read before
    # anything else uses it, so that a malformed one is one line, before any data are loaded
    meta = "kcnn.json"
    folder = path if path.is_dir() else path.parent
    if path.is_dir() and not (path / meta).is_file():
        raise UsageError(f"--weights {weights}: a folder without {meta} is not a kcnn checkpoint; give a "
                         "checkpoint folder (python -m recipes.pretrain writes one) or a weights file")
    if (path.is_dir() or path.name in (meta, "model.keras")) and (folder / meta).is_file():
        from kcnn.transfer.checkpoint import read_checkpoint_meta

        read_checkpoint_meta(folder, check_format=False)  # WeightsError naming the file and the field


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
                                help=help_text if f.default is None else with_default(help_text, f.default))
            continue
        caster = {"int": int, "float": float, "int|None": int, "float|None": float}.get(kind, str)
        default = f.default if f.default is not dataclasses.MISSING else None
        parser.add_argument(flag, type=caster, default=None, metavar=f.metadata.get("metavar", f.name.upper()),
                            choices=f.metadata.get("choices"), help=with_default(help_text, default))
    return parser


def with_default(help_text: str, default) -> str:
    """``help_text`` plus ``(default: VALUE)``, unless the text already says what its default is."""
    if "default" in help_text.lower():
        return help_text
    return f"{help_text} (default: {default})"


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


def is_input_error(err: BaseException) -> bool:
    """Whether ``err`` is about the user's input (one line, exit 2) rather than a bug of kcnn (see the module's
    docstring for the rule)."""
    if isinstance(err, OSError):  # files, folders, permissions, disk full (and kcnn's DataNotFoundError)
        return True
    if not isinstance(err, ValueError):
        return False
    if type(err).__module__.split(".")[0] in ("kcnn", "recipes"):  # UsageError, WeightsError, RunError, ...
        return True
    return _raised_by_own_code(err)


def _raised_by_own_code(err: BaseException) -> bool:
    """Whether the innermost frame of ``err``'s traceback is a ``raise`` statement in kcnn's or the recipes' code
    (their validation), not a library's check nor a builtin's failure (``int("x")``, an unpacking) in kcnn."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = os.path.realpath(tb.tb_frame.f_code.co_filename)
    if not filename.startswith(_OWN_CODE):
        return False
    import linecache

    line = linecache.getline(filename, tb.tb_lineno).strip()
    return not line or line.startswith("raise")  # no source (only .pyc): trust kcnn's frame


def _debug() -> bool:
    return os.environ.get("KCNN_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")


def one_line(err: BaseException, limit: int = 500) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _error_log(config) -> Path | None:
    """``error.log`` in the recipe's ``--out`` when that is a folder kcnn made (kcnn writes into no other
    folder of the user's), else None."""
    out = getattr(config, "out", None)
    if not out:
        return None
    try:
        folder = Path(out)
        if not folder.is_dir():
            return None
        from kcnn import runs

        if runs.holds_kcnn_run(folder) or (folder / "search.json").is_file():
            return folder / ERROR_LOG
    except Exception:  # the report of a bug must not fail on a second one
        return None
    return None


def _write_traceback(err: BaseException, config, prog: str, argv) -> str:
    """Write ``err``'s traceback to the run folder's error.log (appended) or a new file in the temporary folder;
    returns where it went."""
    header = (f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}  internal error of kcnn in {prog} "
              f"{' '.join(map(str, sys.argv[1:] if argv is None else argv))}\n"
              f"python {platform.python_version()} on {platform.platform()}\n")
    text = header + "".join(traceback.format_exception(err))
    target = _error_log(config)
    if target is not None:
        try:
            with open(target, "a", encoding="utf-8") as f:
                f.write(text + "\n")
            return str(target)
        except OSError:
            pass  # a read-only or full run folder: the temporary folder below
    try:
        fd, name = tempfile.mkstemp(prefix="kcnn-error-", suffix=".log", dir=tempfile.gettempdir())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return name
    except OSError:
        print(text, file=sys.stderr, end="")
        return "stderr (above): no file could be written"


def internal_error(err: BaseException, config, prog: str, argv) -> int:
    """Report a bug of kcnn: one line naming the exception and where its traceback is; exit code 1."""
    what = f"{type(err).__name__}: {one_line(err)}" if str(err).strip() else type(err).__name__
    if _debug():
        traceback.print_exception(err, file=sys.stderr)
        where = "the traceback is above"
    else:
        where = f"the traceback is in {_write_traceback(err, config, prog, argv)}"
    print(f"error: internal error of kcnn (a bug, not a mistake in your input): {what}; {where}; please report "
          "it with the traceback", file=sys.stderr)
    return EXIT_INTERNAL


def run(main_fn: Callable, config_cls, argv, prog: str, description: str, positional: tuple = ()) -> int:
    """Parse, call ``main_fn(config)``; an input error becomes ``error: ...`` + exit code 2, any other exception
    one line that says it is an internal error of kcnn + exit code 1 (`is_input_error`)."""
    use_onednn()
    config = None
    try:
        config = parse(config_cls, argv, prog, description, positional)
        result = main_fn(config)
        return 0 if result is None else int(result)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2, already printed)
        return int(exc.code or 0)
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM; the training skeleton says where the run stands
        from recipes import _signals

        print(f"error: {err or 'interrupted'}", file=sys.stderr)
        return _signals.exit_code(err)  # 130 for Ctrl-C, 143 for SIGTERM
    except Exception as err:
        if not is_input_error(err):
            return internal_error(err, config, prog, argv)
        if _debug():
            traceback.print_exception(err, file=sys.stderr)
        print(f"error: {one_line(err, limit=10_000) or type(err).__name__}", file=sys.stderr)
        return EXIT_USAGE
