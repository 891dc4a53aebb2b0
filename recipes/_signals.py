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


def _raise_terminated(signum, frame):
    raise Terminated("terminated (SIGTERM)")


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


def again(err: KeyboardInterrupt, message: str) -> KeyboardInterrupt:
    """An exception of ``err``'s kind (Ctrl-C or SIGTERM) carrying ``message``, naming the signal for SIGTERM."""
    if isinstance(err, Terminated):
        return Terminated(message.replace("interrupted", "terminated (SIGTERM)", 1))
    return KeyboardInterrupt(message)
