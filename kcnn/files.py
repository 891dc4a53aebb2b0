"""The one ownership rule: every file or folder kcnn deletes or replaces goes through this module.

kcnn deletes and replaces only what kcnn made:

- a *temporary* file or folder kcnn created in this process, named by `temp_sibling` / `make_temp_dir`
  (``.NAME.PID.tmp``, ``.NAME.PID.raw.keras``, ``NAME.partial-PID-XXXXXXXX``, ``kcnn-*`` folders holding
  `TEMP_MARKER`) and nothing else: `replace`, `discard`, `publish_dir`, `remove_temp_dir`;
- in a folder holding a kcnn marker, the entries whose names kcnn writes there (the recipe's patterns):
  `clear_owned`, `remove_owned`; any other entry makes `clear_owned` refuse, naming it, before it deletes anything;
- a file the caller saw appear during its own call (a failed download): `discard_new`.

Nothing else in the package calls ``os.replace``, ``os.rename``, ``unlink`` or ``shutil.rmtree``
(``tests/test_files.py`` reads the sources to keep it so).
"""
from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

#: Temporary files of kcnn's atomic writes: ``.NAME.PID.tmp`` and ``.NAME.PID.raw.keras``.
TEMP_FILE = re.compile(r"^\..+\.\d+\.(tmp|raw\.keras)$")
#: Temporary folders kcnn fills before renaming them into place: ``NAME.partial-PID-XXXXXXXX``.
TEMP_DIR = re.compile(r"^.+\.partial-\d+-[0-9a-f]{8}$")
#: The file `make_temp_dir` puts in the folders it creates (a worker's scratch run folder).
TEMP_MARKER = ".kcnn-temp"


class FilesError(ValueError):
    """A file or folder kcnn cannot write, replace or delete as asked (one line naming it and the fix)."""


class NotOurs(FilesError):
    """kcnn was asked to delete or replace something it did not make; the message names it and the fix."""


class DiskError(FilesError):
    """An OS error while writing, as one line naming the path and the reason (disk full, read-only, ...)."""


def disk_error(path, err: OSError) -> DiskError:
    reason = {errno.ENOSPC: "the disk is full", errno.EROFS: "the file system is read-only",
              errno.EACCES: "permission denied", errno.EPERM: "permission denied",
              errno.EDQUOT: "the disk quota is exceeded"}.get(err.errno, err.strerror or str(err))
    return DiskError(f"cannot write {path}: {reason}; free space or choose a writable --out")


# --- temporary files and folders ---------------------------------------------------------------------------------

def temp_sibling(path, kind: str = "tmp") -> Path:
    """The temporary name kcnn writes ``path`` under before `replace`: ``.NAME.PID.tmp`` (or ``.raw.keras``)."""
    path = Path(path)
    if kind not in ("tmp", "raw.keras"):
        raise ValueError(f"temp_sibling: kind must be 'tmp' or 'raw.keras'; got {kind!r}")
    return path.with_name(f".{path.name}.{os.getpid()}.{kind}")


def _check_temp_file(path: Path, what: str) -> None:
    if not TEMP_FILE.match(path.name):
        raise NotOurs(f"{what} {path}: not one of kcnn's temporary files; kcnn replaces and deletes only its own")


def replace(tmp, path) -> None:
    """Rename kcnn's temporary file ``tmp`` (from `temp_sibling`) over ``path``: the atomic end of a write."""
    tmp = Path(tmp)
    _check_temp_file(tmp, "replace")
    os.replace(tmp, path)


def discard(path) -> None:
    """Delete kcnn's temporary file ``path`` if it exists (an interrupted or failed write)."""
    path = Path(path)
    _check_temp_file(path, "discard")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder: flushed, synced, renamed.

    On any error the temporary file is removed and ``path`` is left as it was; OS errors become one-line
    `DiskError`s naming the path (disk full, read-only, permission denied).
    """
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            discard(tmp)
        raise disk_error(path, err) from None


def atomic_write_text(path, text: str) -> None:
    """`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def partial_dir(directory) -> Path:
    """A fresh temporary name beside ``directory`` to fill before `publish_dir` (``NAME.partial-PID-XXXXXXXX``)."""
    directory = Path(directory)
    return directory.with_name(f"{directory.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _check_temp_dir(tmp: Path, what: str) -> None:
    if not TEMP_DIR.match(tmp.name):
        raise NotOurs(f"{what} {tmp}: not one of kcnn's temporary folders")


def publish_dir(tmp, directory) -> bool:
    """Rename the filled folder ``tmp`` (from `partial_dir`) to ``directory``, then delete ``tmp`` if it is still
    there. Returns False when ``directory`` already existed (another process published first): it is left as it is.
    """
    tmp = Path(tmp)
    _check_temp_dir(tmp, "publish_dir")
    try:
        os.rename(tmp, directory)  # atomic; fails if the target exists
        return True
    except OSError:
        return False
    finally:
        discard_partial_dir(tmp)


def discard_partial_dir(tmp) -> None:
    """Delete the temporary folder ``tmp`` from `partial_dir` (a write that failed before `publish_dir`)."""
    tmp = Path(tmp)
    _check_temp_dir(tmp, "discard_partial_dir")
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(tmp, directory) -> None:
    """Put the filled folder ``tmp`` (from `partial_dir`) at ``directory``, deleting the folder there first.

    The caller has established that ``directory`` is kcnn's own earlier output (recipes.export: the run's
    export.json names it); a symlink or a file there is refused.
    """
    tmp, directory = Path(tmp), Path(directory)
    _check_temp_dir(tmp, "replace_dir")
    if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
        discard_partial_dir(tmp)
        raise NotOurs(f"replace_dir {directory}: not a folder kcnn wrote; left as it is")
    if directory.exists():
        shutil.rmtree(directory)
    os.rename(tmp, directory)


def make_temp_dir(prefix: str) -> Path:
    """A new folder under the system's temporary folder, ``kcnn-PREFIX...``, marked as kcnn's (`TEMP_MARKER`)."""
    path = Path(tempfile.mkdtemp(prefix=f"kcnn-{prefix}"))
    (path / TEMP_MARKER).write_text("made by kcnn.files.make_temp_dir; removed by remove_temp_dir\n")
    return path


def remove_temp_dir(path) -> None:
    """Delete a folder `make_temp_dir` made: in the system's temporary folder, named ``kcnn-*``, holding
    `TEMP_MARKER`. Anything else is refused (`NotOurs`) and left as it is."""
    path = Path(path)
    inside = Path(tempfile.gettempdir()).resolve() in path.resolve().parents
    if not (inside and path.name.startswith("kcnn-") and (path / TEMP_MARKER).is_file() and not path.is_symlink()):
        raise NotOurs(f"remove_temp_dir {path}: not a temporary folder kcnn made; left as it is")
    shutil.rmtree(path, ignore_errors=True)


def discard_new(path, existed_before: bool) -> None:
    """Delete the file ``path`` that appeared during the caller's own call (a download that failed half-way);
    a file that ``existed_before`` the call is never touched."""
    path = Path(path)
    if not existed_before and path.is_file() and not path.is_symlink():
        path.unlink()


# --- folders kcnn made -----------------------------------------------------------------------------------------------

def owned(name: str, patterns) -> bool:
    """Whether an entry called ``name`` is one kcnn writes in a folder with these glob ``patterns``."""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns) or bool(TEMP_FILE.match(name))


def foreign_entries(folder, patterns) -> list[str]:
    """The names in ``folder`` that kcnn does not write there (sorted)."""
    return sorted(child.name for child in Path(folder).iterdir() if not owned(child.name, patterns))


def check_only_own(folder, patterns, *, what: str = "--overwrite", error: type = None) -> None:
    """Refuse (``error``, default `NotOurs`) a ``folder`` that holds entries kcnn does not write there, naming up to
    five of them: what every ``--overwrite`` checks before it deletes anything."""
    others = foreign_entries(folder, patterns)
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise (error or NotOurs)(f"{what} {folder}: it also holds files kcnn did not write ({shown}); kcnn deletes "
                                 "only its own: move them out, or choose another --out")


def clear_owned(folder, patterns, *, what: str = "--overwrite") -> list[str]:
    """Delete the entries of kcnn's ``folder`` that match ``patterns`` (and kcnn's temporary files).

    Refuses first, deleting nothing, when the folder holds anything else (`check_only_own`). Returns the names
    deleted.
    """
    folder = Path(folder)
    check_only_own(folder, patterns, what=what)
    removed = []
    for child in sorted(folder.iterdir()):
        _remove_entry(child)
        removed.append(child.name)
    return removed


def remove_owned(folder, name: str, patterns) -> None:
    """Delete the entry ``name`` of kcnn's ``folder`` if it is there; refused unless it matches ``patterns``."""
    if not owned(name, patterns) or Path(name).name != name:
        raise NotOurs(f"remove {Path(folder) / name}: not a file kcnn writes there; left as it is")
    path = Path(folder) / name
    if path.exists() or path.is_symlink():
        _remove_entry(path)


def _remove_entry(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
