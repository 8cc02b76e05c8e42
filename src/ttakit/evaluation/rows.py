"""One row schema and one per-image CSV for every task: a row's header and timing, ``per_image.csv``.

Every task's ``results.json`` row starts the same way (:func:`row_header`: merge, views,
view_names, weights when the policy has them), then holds the task's metrics, then its model
time (:func:`timing`: seconds, images_per_s). Every task's ``per_image.csv`` has the same
shape (:class:`PerImageCsv`): ``index`` (the dataset index), ``path``, the task's columns about
the image itself (its label, mask or COCO id), then each row's per-image metrics as
``<row key>_<metric>``.

Example:
    >>> from ttakit.evaluation.scoring import PolicyRun
    >>> from ttakit.policy import create_policy
    >>> run = PolicyRun("hflip", create_policy("hflip"), "mean")
    >>> row_header(run) | timing(2.0, 10)
    {'merge': 'mean', 'views': 2, 'view_names': ['identity', 'hflip'], 'seconds': 2.0, 'images_per_s': 5.0}
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from ..files import atomic_open
from .scoring import PolicyRun

__all__ = ["PerImageCsv", "row_header", "timing"]


def row_header(run: PolicyRun) -> dict[str, Any]:
    """The fields every task's row opens with: merge (``none`` for plain), views, view_names,
    and the view weights when the policy has them."""
    policy = run.policy
    return {
        "merge": "none" if run.is_plain else run.merge,
        "views": len(policy.views),
        "view_names": policy.view_names,
        **({} if policy.weights is None else {"weights": list(policy.weights)}),
    }


def timing(seconds: float, n_images: int) -> dict[str, Any]:
    """The fields every task's row closes with: its model time and throughput."""
    return {"seconds": round(seconds, 4), "images_per_s": round(n_images / seconds, 2) if seconds > 0 else None}


def _cell(value: Any) -> Any:
    """A CSV cell: floats with 6 decimals, NaN and None as empty."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return f"{value:.6f}" if isinstance(value, float) else value


class PerImageCsv:
    """``per_image.csv``: ``index, path, <image columns>, <key>_<metric> ...`` (a no-op when
    ``path`` is None). Used as a context manager; :meth:`write` adds one image.

    Args:
        path: the file to write, or None.
        image_columns: the task's columns about the image itself (e.g. ``label``, ``mask``).
        keys: the results rows, in order.
        metrics: each row's per-image metrics; ``""`` names the column ``<key>`` alone.
    """

    def __init__(self, path: Path | None, image_columns: Sequence[str], keys: Sequence[str],
                 metrics: Sequence[str]) -> None:
        self.path = path
        self.header = ["index", "path", *image_columns,
                       *[f"{k}_{m}" if m else k for k in keys for m in metrics]]
        self.width = len(metrics) * len(keys)
        self._file: Any = None
        self._writer: Any = None
        self._atomic: Any = None

    def __enter__(self) -> PerImageCsv:
        if self.path is not None:  # written next to it, in place only once every image is in (atomic)
            self._atomic = atomic_open(self.path, "w", newline="", encoding="utf-8")
            self._file = self._atomic.__enter__()
            self._writer = csv.writer(self._file)
            self._writer.writerow(self.header)
        return self

    def write(self, index: int, path: str, image: Sequence[Any], values: Sequence[Any]) -> None:
        """One image: its dataset ``index`` and ``path``, its own columns, then every row's
        metrics in ``keys`` x ``metrics`` order."""
        if len(values) != self.width:
            raise ValueError(f"per_image.csv: {len(values)} values for {self.width} row columns")
        if self._writer is not None:
            self._writer.writerow([index, path, *image, *(_cell(v) for v in values)])

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._atomic is not None:
            self._atomic.__exit__(kind, exc, tb)  # replaces the file on success, deletes it on an error
