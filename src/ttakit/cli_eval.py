"""Dataset-level commands of the ``ttakit`` CLI: evaluate, search, soup (registered by cli)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []
