"""A mistake in the user's input is one line and exit 2; a bug of kcnn is one line that says so, names the
exception and where its traceback is, and exit 1 (`recipes._cli.run`). Malformed state files (search.json,
state.json, kcnn.json, config.toml) are the user-input kind. Help texts state each default once."""
import dataclasses
import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from recipes import _cli


@dataclass
class Tiny:
    what: str = field(default="type", metadata={"help": "which error to raise"})
    out: str | None = field(default=None, metadata={"help": "a folder"})


def _raise(cfg):
    """Stand-ins for a recipe's main function: each raises one kind of error."""
    if cfg.what == "type":
        return len(5)  # TypeError
    if cfg.what == "attribute":
        return None.shape  # AttributeError
    if cfg.what == "key":
        return {}["phases"]  # KeyError
    if cfg.what == "index":
        return [][0]  # IndexError
    if cfg.what == "zero":
        return 1 // 0  # ZeroDivisionError
    if cfg.what == "numpy":
        return np.arange(3).reshape(2, 2)  # a ValueError raised inside NumPy
    if cfg.what == "json":
        return json.loads("{")  # a ValueError raised inside the standard library
    if cfg.what == "test-code":
        raise ValueError("raised outside kcnn's code")
    if cfg.what == "usage":
        raise _cli.UsageError("--what: bad\n value")
    if cfg.what == "weights":
        from kcnn.weights import WeightsError

        raise WeightsError("weights file w.h5 does not fit")
    if cfg.what == "kcnn-raise":
        import kcnn

        kcnn.get_entry("no_such_model")  # a plain ValueError of a raise statement in kcnn's code
    if cfg.what == "missing":
        open(Path(cfg.out or ".") / "no" / "such" / "file")  # FileNotFoundError
    if cfg.what == "disk":
        import errno
        import os

        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/run")
    if cfg.what == "fine":
        return 0
    raise AssertionError(cfg.what)


@pytest.fixture
def temp_dir(tmp_path, monkeypatch):
    """The system temporary folder, here a folder of the test's."""
    folder = tmp_path / "systemp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.delenv("KCNN_DEBUG", raising=False)
    return folder


def _run(argv):
    return _cli.run(_raise, Tiny, argv, prog="python -m recipes.tiny", description="d")


def _traceback_file(err: str) -> Path:
    match = re.search(r"the traceback is in (\S+);", err)
    assert match, err
    return Path(match.group(1))


def test_a_bug_is_one_line_exit_1_with_the_traceback_in_a_temporary_file(temp_dir, capsys):
    assert _run(["--what", "type"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("error: internal error of kcnn (a bug, not a mistake in your input): TypeError: ")
    assert "object of type 'int' has no len()" in err
    log = _traceback_file(err)
    assert log.parent == temp_dir and log.name.startswith("kcnn-error-")
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "len(5)" in text and "_raise" in text
    assert "TypeError: object of type 'int' has no len()" in text and "--what type" in text


@pytest.mark.parametrize("what, kind", [("attribute", "AttributeError"), ("key", "KeyError"),
                                        ("index", "IndexError"), ("zero", "ZeroDivisionError"),
                                        ("numpy", "ValueError: cannot reshape"),
                                        ("json", "JSONDecodeError"),
                                        ("test-code", "ValueError: raised outside kcnn's code")])
def test_exceptions_that_are_no_input_error_are_internal_errors(temp_dir, capsys, what, kind):
    assert _run(["--what", what]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error" in err and kind in err, err
    assert _traceback_file(err).is_file()


@pytest.mark.parametrize("what, message", [
    ("usage", "error: --what: bad value\n"),
    ("weights", "error: weights file w.h5 does not fit\n"),
    ("kcnn-raise", "error: Unknown model 'no_such_model'."),
    ("missing", "error: [Errno 2] No such file or directory"),
    ("disk", "error: [Errno 28] No space left on device: '/data/run'\n"),
])
def test_input_errors_stay_one_line_and_exit_2(temp_dir, capsys, what, message):
    assert _run(["--what", what]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1 and "internal" not in err, err
    assert list(temp_dir.iterdir()) == []  # no traceback file for a mistake


def test_the_traceback_goes_to_error_log_of_an_existing_kcnn_run_folder(tmp_path, temp_dir, capsys):
    from kcnn import runs

    run = tmp_path / "run"
    run.mkdir()
    (run / runs.MARKER).write_text(json.dumps({"format": runs.MARKER_FORMAT, "recipe": "train"}))
    for attempt in (1, 2):
        assert _run(["--what", "key", "--out", str(run)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and _traceback_file(err) == run / _cli.ERROR_LOG, err
        assert (run / "error.log").read_text().count("KeyError: 'phases'") == attempt  # appended
    assert list(temp_dir.iterdir()) == []


def test_a_folder_kcnn_did_not_make_gets_no_error_log(tmp_path, temp_dir, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years")
    assert _run(["--what", "type", "--out", str(mine)]) == 1
    log = _traceback_file(capsys.readouterr().err)
    assert log.parent == temp_dir and [p.name for p in mine.iterdir()] == ["thesis.txt"]


def test_kcnn_debug_puts_the_traceback_on_stderr(temp_dir, capsys, monkeypatch):
    monkeypatch.setenv("KCNN_DEBUG", "1")
    assert _run(["--what", "type"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "len(5)" in err
    assert err.strip().splitlines()[-1].startswith("error: internal error of kcnn")
    assert "the traceback is above" in err and list(temp_dir.iterdir()) == []
    assert _run(["--what", "usage"]) == 2  # still an input error, its traceback shown for debugging
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1] == "error: --what: bad value"


def test_a_recipe_that_fails_internally_says_so(tmp_path, temp_dir, capsys, monkeypatch):
    """A real recipe: a bug in a library function kcnn calls (here made to raise a TypeError) is exit 1."""
    from recipes import tune

    def broken(cfg):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(tune, "identity", broken)
    assert tune.main(["--out", str(tmp_path / "t")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error of kcnn" in err and "TypeError: unsupported operand" in err
    assert "in broken" in _traceback_file(err).read_text()
    assert tune.main(["--out", str(tmp_path / "t"), "--epochs", "0"]) == 2  # a UsageError is still exit 2
    assert capsys.readouterr().err == "error: --epochs must be >= 1; got 0\n"


def test_the_rule_for_input_errors():
    def raised(fn):
        try:
            fn()
        except Exception as err:  # noqa: BLE001
            return err
        raise AssertionError("no error")

    from kcnn import registry, runs
    from kcnn.data import DataError

    assert _cli.is_input_error(raised(lambda: registry.get_entry("nope")))  # kcnn's raise statement
    assert _cli.is_input_error(runs.RunError("x")) and _cli.is_input_error(DataError("x"))  # kcnn's classes
    assert _cli.is_input_error(PermissionError(13, "Permission denied"))
    assert not _cli.is_input_error(raised(lambda: int("x")))  # a builtin's ValueError outside kcnn
    assert not _cli.is_input_error(raised(lambda: np.zeros(3).reshape(2, 2)))
    assert not _cli.is_input_error(TypeError("x")) and not _cli.is_input_error(ValueError("no traceback"))


# --- malformed state files: one line naming the file -----------------------------------------------------------

def _checkpoint(folder: Path, **changes) -> Path:
    folder.mkdir()
    meta = {"format": "kcnn-checkpoint", "version": 1, "arch": "vgg_cifar", "input_shape": [16, 16, 3],
            "classes": 2, "class_names": ["a", "b"], "preprocessing": "unit"}
    meta.update(changes)
    (folder / "kcnn.json").write_text(json.dumps({k: v for k, v in meta.items() if v is not ...}))
    (folder / "model.keras").write_text("never read: kcnn.json is refused first")
    return folder


@pytest.mark.parametrize("changes, message", [
    (dict(version="1"), "version must be a whole number"),
    (dict(version=1.5), "version must be a whole number"),
    (dict(version=True), "version must be a whole number"),
    (dict(version=99), "has checkpoint version 99; this kcnn reads up to 1"),
    (dict(arch=7), "arch must be the architecture's name"),
    (dict(arch=...), "names no arch"),
    (dict(input_shape="16"), "input_shape must be [height, width, channels]"),
    (dict(input_shape=[16, 16]), "input_shape must be"),
    (dict(input_shape=[16, -1, 3]), "input_shape must be"),
    (dict(class_names="ab"), "class_names must be a list of strings"),
    (dict(classes="2"), "classes must be a positive whole number"),
    (dict(preprocessing=["unit"]), "preprocessing must be a string"),
    (dict(format="other"), "is not a kcnn checkpoint"),
])
def test_a_malformed_kcnn_json_is_a_weights_error_naming_the_file(tmp_path, changes, message):
    from kcnn.transfer import checkpoint
    from kcnn.weights import WeightsError

    folder = _checkpoint(tmp_path / "ckpt", **changes)
    with pytest.raises(WeightsError) as info:
        checkpoint.load_checkpoint(folder)
    text = str(info.value)
    assert message in text and str(folder) in text and "\n" not in text, text


@pytest.mark.parametrize("text, message", [("[1, 2]", "holds a JSON list"), ('"x"', "holds a JSON string"),
                                           ("{", "Unreadable"), ("null", "holds a JSON null")])
def test_a_kcnn_json_that_is_no_object_is_refused(tmp_path, text, message):
    from kcnn.transfer import checkpoint
    from kcnn.weights import WeightsError

    folder = _checkpoint(tmp_path / "ckpt")
    (folder / "kcnn.json").write_text(text)
    with pytest.raises(WeightsError, match=re.escape(message)):
        checkpoint.read_checkpoint_meta(folder)
    assert _cli.is_input_error(WeightsError("x"))


def _state_folder(root: Path, state) -> Path:
    from kcnn import runs

    root.mkdir()
    (root / runs.MARKER).write_text(json.dumps({"format": runs.MARKER_FORMAT, "recipe": "train"}))
    (root / "state.json").write_text(state if isinstance(state, str) else json.dumps(state))
    return root


@pytest.mark.parametrize("state, message", [
    ("[]", "is not a kcnn run state"),
    ("{", "is unreadable"),
    ({"config": [], "history": []}, "config is not an object"),
    ({"config": {}, "history": [1, 2]}, "history is not a list of rows"),
    ({"config": {}, "history": [{"epoch": "1"}]}, "history is not a list of rows"),
    ({"config": {}, "history": [], "phases": {"1": {}}}, "phases is not a list"),
    ({"config": {}, "history": [], "best": [1]}, "best is not null or an object"),
    ({"config": {}, "history": [], "best": {"epoch": None}}, "best is not null or an object"),
    ({"config": {}, "history": [], "epochs_done": "2"}, "epochs_done '2' is not a count"),
    ({"config": {}, "history": [], "checkpoint": "../x.npz"}, "not a checkpoint file of this run folder"),
])
def test_a_malformed_state_json_is_a_run_error_naming_the_file(tmp_path, state, message):
    from kcnn import runs

    folder = _state_folder(tmp_path / "run", state)
    run = runs.RunDir(folder, resume=True, recipe="train")
    with pytest.raises(runs.RunError, match=re.escape(message)) as info:
        run.check()
    assert "state.json" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("text, message", [("[]", "holds a JSON list, not an object"),
                                           ('"search"', "holds a JSON string"),
                                           ("{", "is unreadable (JSONDecodeError)"),
                                           ("7", "holds a JSON number")])
def test_a_malformed_search_json_is_one_line(tmp_path, capsys, text, message):
    from kcnn import runs
    from recipes import tune

    out = tmp_path / "search"
    out.mkdir()
    (out / runs.MARKER).write_text(json.dumps({"format": runs.MARKER_FORMAT, "recipe": "tune"}))
    (out / "search.json").write_text(text)
    assert tune.main(["--out", str(out), "--verbose", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err and "search.json" in err, err
    assert (out / "search.json").read_text() == text


@pytest.mark.parametrize("text", ["data = {x = 1}\n", "epochs = [1, 2]\n", "[train]\nepochs = 3\n",
                                  "seed = 1.5\n", "verbose = true\n", "tta = 1\n"])
def test_a_malformed_config_toml_is_one_line(tmp_path, capsys, text):
    from recipes import train

    config = tmp_path / "config.toml"
    config.write_text(text)
    assert train.main(["--config", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --config {config}: ") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_a_config_toml_that_is_not_utf8_is_one_line(tmp_path, capsys):
    from recipes import train

    config = tmp_path / "config.toml"
    config.write_bytes(b"epochs = \xff\xfe\n")
    assert train.main(["--config", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "not valid TOML" in err and err.count("\n") == 1


# --- help texts ----------------------------------------------------------------------------------------------

def _recipes():
    from recipes import finetune, pretrain, train, tune

    return [(train, train.TrainConfig), (finetune, finetune.FinetuneConfig), (pretrain, pretrain.PretrainConfig),
            (tune, tune.TuneConfig)]


#: A statement of a default: "default" followed by ":" or a space ("(default: 32)", "(default runs/...)"); the
#: word as a value ("--preset default") is not one.
_STATES_DEFAULT = re.compile(r"\bdefault[: ]", re.IGNORECASE)


@pytest.mark.parametrize("index", range(4))
def test_every_option_states_its_default_once(index):
    module, config_cls = _recipes()[index]
    parser = _cli.build_parser(config_cls, module.__name__, "")
    helps = {a.dest: a.help or "" for a in parser._actions if a.dest not in ("help", "config")}
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    assert set(helps) == set(fields)
    for name, text in helps.items():
        own = len(_STATES_DEFAULT.findall(fields[name].metadata.get("help", "")))
        # the field's own words, else "(default: VALUE)": never both
        assert len(_STATES_DEFAULT.findall(text)) == max(1, own), (name, text)
    doubled = {name for name, text in helps.items() if len(_STATES_DEFAULT.findall(text)) > 1}
    # tune's --max-trials names two defaults in its own words (one per kind of tuner)
    assert doubled <= ({"max_trials"} if module.__name__ == "recipes.tune" else set()), doubled


def test_the_help_shows_a_default_stated_in_the_text_once(capsys):
    from recipes import train

    assert train.main(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "side in pixels (default: 32)" in out and "run folder (default runs/train-<time>) --" in out
    assert "peak learning rate (default: the preset's) --" in out
    assert "(default: the preset's) (default" not in out and "(default: never) (default" not in out
