"""The one ownership rule (kcnn.files): kcnn deletes and replaces only what kcnn made, on every path."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from kcnn import files, runs

ROOT = Path(__file__).resolve().parents[1]
#: Calls that delete or replace; only kcnn/files.py may make them.
DESTRUCTIVE = {("os", "replace"), ("os", "rename"), ("os", "remove"), ("os", "unlink"), ("os", "rmdir"),
               ("shutil", "rmtree"), ("shutil", "move")}
DESTRUCTIVE_METHODS = {"unlink", "rmdir", "rename", "replace"}


def _destructive_calls(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value
        name = node.func.attr
        if isinstance(owner, ast.Name) and (owner.id, name) in DESTRUCTIVE:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {owner.id}.{name}")
        elif name in ("unlink", "rmdir"):  # Path.unlink / Path.rmdir
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} .{name}()")
        elif name in ("rename", "replace") and not (isinstance(owner, ast.Name) and owner.id in ("os",)):
            # Path.rename / Path.replace take one argument; str.replace takes two or three
            if len(node.args) == 1 and not node.keywords and not isinstance(owner, ast.Constant):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} .{name}(one argument)")
    return found


def test_nothing_outside_kcnn_files_deletes_or_replaces():
    sources = sorted((ROOT / "kcnn").rglob("*.py")) + sorted((ROOT / "recipes").rglob("*.py"))
    assert len(sources) > 40
    offenders = [hit for path in sources if path.name != "files.py" or path.parent.name != "kcnn"
                 for hit in _destructive_calls(path)]
    assert offenders == []
    # the scan itself sees what it must: kcnn/files.py has each kind
    kinds = {hit.split()[-1] for hit in _destructive_calls(ROOT / "kcnn" / "files.py")}
    assert {"os.replace", "os.rename", "shutil.rmtree", ".unlink()"} <= kinds


def _run_folder(path: Path, recipe="train") -> Path:
    path.mkdir()
    (path / runs.MARKER).write_text(json.dumps({"format": runs.MARKER_FORMAT, "recipe": recipe}))
    for name in ("model.keras", "report.json", "config.toml", "curves.png"):
        (path / name).write_text("kcnn's")
    (path / "logs").mkdir()
    (path / "logs" / "events").write_text("kcnn's")
    return path


def test_overwrite_refuses_a_run_folder_holding_a_file_kcnn_did_not_write(tmp_path):
    folder = _run_folder(tmp_path / "run")
    (folder / "my_notes.txt").write_text("the user's")
    with pytest.raises(runs.RunError, match=r"also holds files kcnn did not write \(my_notes.txt\)"):
        runs.check_out(folder, recipe="train", overwrite=True)
    with pytest.raises(files.NotOurs, match="my_notes.txt"):
        files.clear_owned(folder, runs.RUN_FILES)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [runs.MARKER, "model.keras", "report.json", "config.toml", "curves.png", "logs", "my_notes.txt"])
    (folder / "my_notes.txt").unlink()
    assert runs.check_out(folder, recipe="train", overwrite=True) == "overwrite"
    assert set(files.clear_owned(folder, runs.RUN_FILES)) == {runs.MARKER, "model.keras", "report.json",
                                                              "config.toml", "curves.png", "logs"}
    assert list(folder.iterdir()) == []


def test_run_dir_overwrite_keeps_nothing_of_the_old_run_and_touches_no_other_file(tmp_path):
    folder = _run_folder(tmp_path / "run")
    outside = tmp_path / "outside.txt"
    outside.write_text("the user's")
    run = runs.RunDir(folder, overwrite=True, config={"lr": 0.1}).open()
    assert sorted(p.name for p in run.path.iterdir()) == ["config.toml", runs.MARKER, "state.json"]
    assert outside.read_text() == "the user's"


def test_only_kcnn_temporary_files_and_folders_are_removed(tmp_path):
    user = tmp_path / "data.csv"
    user.write_text("the user's")
    for call in (files.discard, lambda p: files.replace(p, tmp_path / "x"), files.remove_temp_dir,
                 files.discard_partial_dir, lambda p: files.publish_dir(p, tmp_path / "y")):
        with pytest.raises(files.NotOurs):
            call(user)
    with pytest.raises(files.NotOurs):
        files.remove_temp_dir(tmp_path)  # a folder, but not one make_temp_dir made
    assert user.read_text() == "the user's"
    made = files.make_temp_dir("worker0-")
    (made / "state.json").write_text("{}")
    files.remove_temp_dir(made)
    assert not made.exists()
    tmp = files.temp_sibling(tmp_path / "out.json")
    tmp.write_text("new")
    files.replace(tmp, tmp_path / "out.json")
    assert (tmp_path / "out.json").read_text() == "new" and not tmp.exists()
    with pytest.raises(files.NotOurs):
        files.remove_owned(tmp_path, "data.csv", runs.RUN_FILES)
    with pytest.raises(files.NotOurs):
        files.remove_owned(tmp_path, "../data.csv", ("*",))
    files.discard_new(user, existed_before=True)
    assert user.exists()


def test_a_distributed_worker_removes_only_its_own_temporary_folder(tmp_path):
    from kcnn import distribute

    elsewhere = tmp_path / "chief-run"
    elsewhere.mkdir()
    with pytest.raises(files.NotOurs):
        distribute.finish_worker(runs.RunDir(elsewhere), _NotChief())
    assert elsewhere.is_dir()


class _NotChief:
    """A strategy whose task is a worker, not the chief (what `is_chief` reads)."""

    class extended:
        should_checkpoint = False

    cluster_resolver = None
