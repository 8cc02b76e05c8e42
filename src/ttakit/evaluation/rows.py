"""One row type and one per-image CSV for every task: :class:`Row`, its header and timing, ``per_image.csv``.

Every task's scorer keeps one :class:`Row` per results row while it streams over the stored
chunks (the policy run, its views' stored columns, its model time), extended with the task's
own state (a metric accumulator, per-image counts, merged boxes). Every task's
``results.json`` row (:meth:`Row.entry`) starts the same way (:func:`row_header`: merge,
views, view_names, weights when the policy has them), then holds the task's metrics, then its
model time (:func:`timing`: seconds, images_per_s). Every task's ``per_image.csv`` has the same
shape (:class:`PerImageCsv`): ``index`` (the dataset index), ``path``, the task's columns about
the image itself (its label, mask or COCO id), then each row's per-image metrics as
``<row key>_<metric>``.

Example:
    >>> from ttakit.evaluation.scoring import PolicyRun
    >>> from ttakit.policy import create_policy
    >>> run = PolicyRun("hflip", create_policy("hflip"), "mean")
    >>> row_header(run) | timing(2.0, 10)
    {'merge': 'mean', 'views': 2, 'view_names': ['identity', 'hflip'], 'seconds': 2.0, 'images_per_s': 5.0}
    >>> row = Row(run, [0, 1]); row.charge(torch.tensor([0.5, 1.5, 9.0]))
    >>> row.entry({"top1": 0.5}, 10)
    {'merge': 'mean', 'views': 2, 'view_names': ['identity', 'hflip'], 'top1': 0.5, 'seconds': 2.0, 'images_per_s': 5.0}
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from torch import Tensor

from .scoring import PolicyRun

__all__ = ["PerImageCsv", "Row", "row_header", "timing"]


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


@dataclass
class Row:
    """One results row while it is scored, the same for every task. A task's scorer extends it
    with its own streaming state (fields after these, keyword-only) and builds the row's
    ``results.json`` entry with :meth:`entry`.

    Attributes:
        run: the row (a policy with one merge).
        cols: the stored column of each of the policy's views.
        seconds: model time spent on the row's views so far.
    """

    run: PolicyRun
    cols: list[int]
    seconds: float = 0.0

    def charge(self, seconds: Tensor) -> None:
        """Add one chunk's model time: ``seconds`` ``(U,)`` of every stored view, summed over
        the row's own views."""
        self.seconds += float(seconds[self.cols].sum())

    def entry(self, metrics: Mapping[str, Any], n_images: int) -> dict[str, Any]:
        """The ``results.json`` row: :func:`row_header`, the task's ``metrics``, :func:`timing`."""
        return {**row_header(self.run), **metrics, **timing(self.seconds, n_images)}


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

    def __enter__(self) -> PerImageCsv:
        if self.path is not None:
            self._file = self.path.open("w", newline="", encoding="utf-8")
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
        if self._file is not None:
            self._file.close()
