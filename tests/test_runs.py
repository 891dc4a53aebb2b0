"""The run folder: kcnn deletes only what kcnn made, state files are checked, writes are atomic."""
import json
import os

import numpy as np
import pytest

from kcnn import files, runs


def _files(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_overwrite_refuses_a_folder_kcnn_did_not_make(tmp_path):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "thesis.txt").write_text("three years of work")
    for overwrite in (False, True):
        with pytest.raises(runs.RunError, match="kcnn did not make"):
            runs.RunDir(out, overwrite=overwrite, recipe="finetune").open()
    assert _files(out) == ["thesis.txt"]
    assert (out / "thesis.txt").read_text() == "three years of work"


def test_overwrite_replaces_a_kcnn_run_and_resume_with_overwrite_is_refused(tmp_path):
    out = tmp_path / "run"
    runs.RunDir(out, config={"a": 1}, recipe="train").open()
    assert runs.holds_kcnn_run(out) and runs.read_marker(out)["recipe"] == "train"
    (out / "model.keras").write_text("x")
    (out / "report.json").write_text("{}")
    with pytest.raises(runs.RunError, match="finished run.*--overwrite"):
        runs.RunDir(out, recipe="train").open()
    with pytest.raises(runs.RunError, match="contradict"):
        runs.RunDir(out, overwrite=True, resume=True, recipe="train").open()
    runs.RunDir(out, overwrite=True, config={"a": 2}, recipe="train").open()
    assert _files(out) == ["config.toml", "kcnn-run.json", "state.json"]
    assert "a = 2" in (out / "config.toml").read_text()


def test_empty_folder_is_used_and_resume_needs_a_run(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    with pytest.raises(runs.RunError, match="no run to resume"):
        runs.RunDir(out, resume=True).open()
    assert _files(out) == []
    runs.RunDir(out).open()
    assert runs.holds_kcnn_run(out)


def test_resume_must_be_the_same_recipe_and_settings(tmp_path):
    out = tmp_path / "r"
    runs.RunDir(out, config={"lr": 0.1}, recipe="finetune").open()
    with pytest.raises(runs.RunError, match="holds a finetune run, not a train run"):
        runs.RunDir(out, resume=True, config={"lr": 0.1}, recipe="train").open()
    with pytest.raises(runs.RunError, match=r"settings differ.*lr: 0.1 -> 0.2"):
        runs.RunDir(out, resume=True, config={"lr": 0.2}, recipe="finetune").open()
    resumed = runs.RunDir(out, resume=True, config={"lr": 0.1, "resume": True}, recipe="finetune").open()
    assert resumed.epochs_done == 0


def test_checkpoints_are_atomic_and_the_state_names_only_existing_files(tmp_path):
    out = tmp_path / "r"
    run = runs.RunDir(out, config={}, recipe="train").open()
    run.checkpoint({"epoch": 1, "phase": "a", "lr": 0.1, "loss": 2.0}, {"w": np.arange(3.0)})
    run.checkpoint({"epoch": 2, "phase": "a", "lr": 0.1, "loss": 1.5}, {"w": np.arange(3.0) * 2})
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-0002.npz"]
    assert not list(out.glob(".*tmp"))
    resumed = runs.RunDir(out, resume=True, recipe="train").open()
    assert resumed.epochs_done == 2
    np.testing.assert_array_equal(resumed.load_checkpoint()["w"], [0.0, 2.0, 4.0])
    rows = (out / "history.csv").read_text().splitlines()
    assert rows[0] == "epoch,phase,lr,loss" and len(rows) == 3


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "checkpoint-0001.npz/../../x", "model.keras", 7])
def test_a_crafted_checkpoint_name_in_state_json_is_refused(tmp_path, name):
    out = tmp_path / "r"
    run = runs.RunDir(out, config={}, recipe="train").open()
    run.checkpoint({"epoch": 1, "phase": "a", "lr": 0.1, "loss": 2.0}, {"w": np.zeros(2)})
    victim = tmp_path / "x"
    victim.write_text("keep me")
    state = json.loads((out / "state.json").read_text())
    state["checkpoint"] = name
    (out / "state.json").write_text(json.dumps(state))
    with pytest.raises(runs.RunError, match="not a checkpoint file of this run folder"):
        runs.RunDir(out, resume=True, recipe="train").open()
    assert victim.read_text() == "keep me"


def test_a_failed_write_leaves_no_temporary_file_and_the_old_file_intact(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    runs.atomic_write_text(target, "good")

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(files.DiskError, match=r"cannot write .*state.json: the disk is full"):
        runs.atomic_write_text(target, "half")
    assert target.read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_read_only_folder_is_one_line(tmp_path, monkeypatch):
    """Root (as CI runs) writes into read-only folders, so the OS's answer to everyone else is simulated too:
    creating anything inside the folder raises PermissionError(13), as mkdir does there for other users."""
    import errno
    from pathlib import Path

    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    real_mkdir = Path.mkdir

    def refused(self, *args, **kwargs):
        if folder in Path(self).parents:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refused)
    try:
        with pytest.raises(files.DiskError, match="permission denied") as caught:
            runs.RunDir(folder / "run", recipe="train").open()
    finally:
        folder.chmod(0o700)
    message = str(caught.value)
    assert "\n" not in message and str(folder / "run") in message and "Traceback" not in message
    assert list(folder.iterdir()) == []  # nothing written, no temporary file left


def test_toml_round_trip():
    import tomllib

    config = {"data": "digits", "epochs": 3, "lr": 1e-3, "augment": None, "flag": True, "sizes": [1, 2],
              "path": "a \"quoted\" \\ path", "phase": [{"epochs": 2, "train": "head"}, {"epochs": 1, "train": "all"}]}
    parsed = tomllib.loads(runs.dumps_toml(config))
    assert parsed == {k: v for k, v in config.items() if v is not None}


def test_toml_round_trip_of_every_kind_of_value(tmp_path):
    import math
    import tomllib
    from pathlib import Path

    config = {"int": -3, "float": 2.5e-7, "nan": float("nan"), "inf": float("inf"), "minus_inf": float("-inf"),
              "bool": False, "unset": None, "path": Path("/tmp/a b/c"), "long": "x" * 10_000,
              "text": 'quote " backslash \\ newline \n tab \t unicode \u00e9', "tuple": (1, 2),
              "empty": [], "nested": {"table": {"deeper": {"n": 1, "unset": None}}, "list": [[1, 2], ["a"]]},
              "phase": [{"epochs": 2, "train": ["block1", "block2"], "lr": 1e-3}, {"epochs": 1, "bn": "train"}],
              "numpy": np.float32(0.5), "numpy_int": np.int64(7)}
    back = tomllib.loads(runs.dumps_toml(config))
    assert math.isnan(back.pop("nan"))
    assert back == {"int": -3, "float": 2.5e-7, "inf": math.inf, "minus_inf": -math.inf, "bool": False,
                    "path": "/tmp/a b/c", "long": "x" * 10_000, "text": config["text"], "tuple": [1, 2],
                    "empty": [], "nested": {"table": {"deeper": {"n": 1}}, "list": [[1, 2], ["a"]]},
                    "phase": [{"epochs": 2, "train": ["block1", "block2"], "lr": 1e-3}, {"epochs": 1, "bn": "train"}],
                    "numpy": 0.5, "numpy_int": 7}
    for bad, where in (({"sizes": [1, None]}, "config.sizes"), ({"x": {"obj": object()}}, "config.x.obj")):
        with pytest.raises(runs.RunError, match=f"cannot write {where}"):
            runs.dumps_toml(bad)
        with pytest.raises(runs.RunError):  # refused before the folder is written
            runs.RunDir(tmp_path / "run", config=bad).open()
        assert not (tmp_path / "run").exists()
