"""Keep the calling thread's alternate signal stack across calls into native runtimes.

Why: OpenVINO 2026.4 sets the calling thread's alternate signal stack (``sigaltstack``) when it
compiles a model and, when that model is freed, puts back the stack it found. With two compiled
models freed in the order they were made, the second restores the first one's stack, which is
already freed memory. From then on any signal whose handler runs on that stack (every Python
signal handler does: SIGINT's, the SIGCHLD handler torch's DataLoader installs for its workers)
makes the kernel kill the process with SIGSEGV, silently (faulthandler's handler cannot run
either). It was seen as a crash of a later, unrelated ``subprocess.run``.

:func:`kept_signal_stack` puts the stack found on entry back on exit, so the runtime keeps no
stack of its own on the thread and its restores always put back a stack that is still alive.
Linux only (elsewhere it does nothing).

Example:
    >>> with kept_signal_stack():
    ...     pass  # e.g. core.compile_model(...)
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["current_signal_stack", "kept_signal_stack"]


class _StackT(ctypes.Structure):  # struct stack_t (Linux)
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc()


def current_signal_stack() -> tuple[int, int, int] | None:
    """The calling thread's alternate signal stack as ``(address, size, flags)``; ``None`` off Linux."""
    if _LIBC is None:
        return None
    old = _StackT()
    if _LIBC.sigaltstack(None, ctypes.byref(old)) != 0:
        return None
    return (old.ss_sp or 0, old.ss_size, old.ss_flags)


@contextmanager
def kept_signal_stack() -> Iterator[None]:
    """Run the body, then put back the alternate signal stack the thread had on entry."""
    if _LIBC is None:
        yield
        return
    before = _StackT()
    saved = _LIBC.sigaltstack(None, ctypes.byref(before)) == 0
    try:
        yield
    finally:
        if saved:
            now = _StackT()
            _LIBC.sigaltstack(None, ctypes.byref(now))
            if (now.ss_sp, now.ss_size, now.ss_flags) != (before.ss_sp, before.ss_size, before.ss_flags):
                # SS_DISABLE (flag 2) on entry: disable again; otherwise the entry stack itself.
                _LIBC.sigaltstack(ctypes.byref(before), None)
