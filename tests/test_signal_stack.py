"""kept_signal_stack puts the thread's alternate signal stack back (runtime/signal_stack.py);
tests/test_fork_safety.py runs the OpenVINO scenario it exists for, in a child process."""

from __future__ import annotations

import ctypes
import sys

import pytest

from ttakit.runtime.signal_stack import current_signal_stack, kept_signal_stack

LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sigaltstack is read through Linux's libc")


@LINUX
def test_kept_signal_stack_puts_back_the_entry_stack() -> None:
    from ttakit.runtime.signal_stack import _LIBC, _StackT

    entry = current_signal_stack()
    buf = ctypes.create_string_buffer(1 << 16)
    with kept_signal_stack():
        mine = _StackT(ctypes.cast(buf, ctypes.c_void_p), 0, len(buf))
        assert _LIBC.sigaltstack(ctypes.byref(mine), None) == 0
        assert current_signal_stack()[0] == ctypes.addressof(buf)  # changed inside
    assert current_signal_stack() == entry
