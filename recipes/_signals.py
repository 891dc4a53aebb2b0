"""SIGTERM (a cluster scheduler, ``docker stop``, a preempted VM) handled like Ctrl-C, in the recipe's process only.

`terminate_as_interrupt` turns SIGTERM into a `Terminated` exception (a KeyboardInterrupt) in the main thread
while the recipe runs, and puts the previous handler back afterwards. Python runs the handler when the
interpreter next gets control, i.e. after the training step (or the ``steps_per_execution`` steps) in flight, so
the run stops where Ctrl-C stops it; the recipes then say where it stands and exit `EXIT_TERMINATED`.
"""
from __future__ import annotations

import contextlib
import signal
import threading

#: The exit code of a run stopped by SIGTERM (128 + 15, what a shell reports for a process killed by it).
EXIT_TERMINATED = 128 + signal.SIGTERM
#: The exit code of a run stopped by Ctrl-C.
EXIT_INTERRUPTED = 128 + signal.SIGINT


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM; raised where Ctrl-C's KeyboardInterrupt would be."""


_state = {"defer": False, "pending": False}


def _raise_terminated(signum, frame):
    if _state["defer"]:  # training: `pending` hands it to the loop, which saves exactly this step first
        _state["pending"] = True
        return
    raise Terminated("terminated (SIGTERM)")


@contextlib.contextmanager
def deferred():
    """Within the block (training), SIGTERM only marks itself `pending`; a SIGTERM that arrived in it and was not
    collected is raised when the block ends."""
    _state["defer"], _state["pending"] = True, False
    try:
        yield
    finally:
        _state["defer"] = False
    if pending() is not None:
        raise Terminated("terminated (SIGTERM)")


def pending() -> "Terminated | None":
    """The `Terminated` to raise when SIGTERM arrived during `deferred` (then cleared), else None."""
    if _state.get("pending"):
        _state["pending"] = False
        return Terminated("terminated (SIGTERM)")
    return None


@contextlib.contextmanager
def terminate_as_interrupt():
    """Within the block, SIGTERM raises `Terminated` in the main thread (elsewhere: nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_code(err: KeyboardInterrupt) -> int:
    """`EXIT_TERMINATED` for a `Terminated`, else `EXIT_INTERRUPTED`."""
    return EXIT_TERMINATED if isinstance(err, Terminated) else EXIT_INTERRUPTED


def what(err: KeyboardInterrupt) -> str:
    """How a message names the stop: "terminated (SIGTERM)" or "interrupted" (Ctrl-C)."""
    return "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"
