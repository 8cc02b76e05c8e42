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


def _read() -> _StackT | None:
    """The calling thread's ``stack_t``; ``None`` off Linux or where libc refuses."""
    if _LIBC is None:
        return None
    stack = _StackT()
    return stack if _LIBC.sigaltstack(None, ctypes.byref(stack)) == 0 else None


def current_signal_stack() -> tuple[int, int, int] | None:
    """The calling thread's alternate signal stack as ``(address, size, flags)``; ``None`` off Linux."""
    stack = _read()
    return None if stack is None else (stack.ss_sp or 0, stack.ss_size, stack.ss_flags)


@contextmanager
def kept_signal_stack() -> Iterator[None]:
    """Run the body, then put back the alternate signal stack the thread had on entry."""
    before = _read()
    try:
        yield
    finally:
        if before is not None and current_signal_stack() != (before.ss_sp or 0, before.ss_size, before.ss_flags):
            # SS_DISABLE (flag 2) on entry: disable again; otherwise the entry stack itself.
            _LIBC.sigaltstack(ctypes.byref(before), None)
