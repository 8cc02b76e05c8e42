"""Atomic file writes: a temporary file in the same folder, then ``os.replace``.

A reader (or a resumed run) sees the old file or the whole new one, never half of it; a
write that fails leaves no temporary file behind.

Example:
    >>> write_atomic("/tmp/_ttakit_atomic.txt", "done\\n")
    >>> open("/tmp/_ttakit_atomic.txt").read()
    'done\\n'
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["atomic_open", "write_atomic"]


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: object) -> Iterator[IO]:
    """Open a temporary file next to ``path`` for writing; on a clean exit it replaces
    ``path`` at once, on an error it is deleted (``path`` is left as it was)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:  # type: ignore[call-overload]
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)
