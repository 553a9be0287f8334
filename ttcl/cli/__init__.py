# PYTHON_ARGCOMPLETE_OK (argcomplete completes the console script only where it sees this mark)
"""The command line (`ttcl run|check|fmt|graph|cost|eval|optimize|train-prm|repl|doc|completion`): the argparse
entry in `app`, one module per command family, and the REPL.

`main` here is the console entry (`ttcl = "ttcl.cli:main"`): it imports the rest itself, so a
Ctrl-C while the command is still loading ends it with "interrupted", not a traceback.
"""

from __future__ import annotations

import sys

INTERRUPTED = 130  # the exit status of a command ended by Ctrl-C (128 + SIGINT), as shells report it


def main(argv: list[str] | None = None) -> int:
    """Run the `ttcl` command; returns the exit code (130 when interrupted)."""
    try:
        _redeliver_stray_interrupts()
        from ttcl.cli.app import main as run

        code = run(argv)
    except KeyboardInterrupt:
        code = interrupted()
    _forget_interrupt()  # the exit status is what the command returned, whatever it caught
    return code


def interrupted() -> int:
    """Say so in one line, without the console library (it may be what was loading)."""
    try:
        sys.stderr.write("interrupted\n")
        sys.stderr.flush()
    except (OSError, KeyboardInterrupt):
        pass
    return INTERRUPTED


def _redeliver_stray_interrupts() -> None:
    """A Ctrl-C that lands in a callback Python runs for itself (importlib drops a module's
    lock in a weakref callback after each import) cannot be raised there: Python prints
    "Exception ignored in ... KeyboardInterrupt" with a traceback, and carries on loading.
    Send the signal again instead, from another thread: it is then raised in the command's
    own code, just after the callback, and ends the command like any Ctrl-C."""
    import _thread
    import os
    import signal

    previous = sys.unraisablehook
    if getattr(previous, "redelivers_interrupts", False):
        return

    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            # a bare thread: it cannot run before this hook returns, as this thread holds the GIL
            _thread.start_new_thread(os.kill, (os.getpid(), signal.SIGINT))
        else:
            previous(unraisable)

    hook.redelivers_interrupts = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def _forget_interrupt() -> None:
    """A KeyboardInterrupt raised inside `exec` of a string (dataclasses and namedtuples make
    their methods so, at import) is remembered by CPython as unhandled even once caught, and
    `python -m ttcl` then ends by killing itself with SIGINT instead of exiting with our
    status. The next `exec` of a string that succeeds clears that record."""
    try:
        exec("pass", {})
    except KeyboardInterrupt:
        pass


__all__ = ["main"]
