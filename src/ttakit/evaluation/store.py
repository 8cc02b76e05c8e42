"""The on-disk store of every task's per-view outputs: one file per chunk, a run fingerprint, resume and reuse.

A run of ``ttakit evaluate`` is split into *chunks* of ``batch_size`` images. Each chunk's
per-view outputs (``U`` = distinct views over all policies, the identity first) are written
as soon as they are computed, so a killed run resumes at the first missing chunk, and a later
run that asks only for views the folder holds reuses them. What a chunk holds is the task's:
classification's logits ``(n, U, C)``, segmentation's class maps and their masks,
detection's de-augmented boxes; every chunk also holds ``indices`` and ``seconds``.

The layout of a run folder (kept as it is, so folders written by earlier versions resume)::

    DIR/<subdir>/run.json                        the fingerprint (see :func:`fingerprint`)
    DIR/<subdir>/chunk_<start:09d>.safetensors   one chunk's tensors; metadata "skipped"

``subdir`` is the task's: ``logits`` (classification), ``segmentation``, ``detections``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..errors import DatasetError
from ..models import LoadedModel
from ..views import View

__all__ = ["LogitStore", "OutputStore", "fingerprint", "plan_chunks"]


def plan_chunks(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` image ranges of the chunks.

    Example:
        >>> plan_chunks(5, 2)
        [(0, 2), (2, 4), (4, 5)]
    """
    return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


# run.json fields that describe a run without identifying it: the views (a later run may ask
# for fewer) and the backend's precision-check figures (measured once, kept for the record).
_NOT_COMPARED = ("views", "backend_check")


class OutputStore:
    """``DIR/<subdir>/``: one safetensors file per chunk plus ``run.json``, the fingerprint of
    what was asked. A later run on the same folder must ask the same model, data and chunking,
    and views that the folder holds (the same or fewer): it then reuses the stored outputs.
    ``subdir`` names the folder: each task's own (``logits`` for classification, the default;
    ``segmentation``; ``detections``)."""

    def __init__(self, out_dir: str | Path, fingerprint: dict[str, Any], subdir: str = "logits") -> None:
        self.dir = Path(out_dir) / subdir
        self.fingerprint = fingerprint
        meta = self.dir / "run.json"
        if meta.exists():
            old = json.loads(meta.read_text())
            same_but_views = {k: v for k, v in old.items() if k not in _NOT_COMPARED} == {
                k: v for k, v in fingerprint.items() if k not in _NOT_COMPARED}
            if same_but_views and set(fingerprint["views"]) <= set(old["views"]):
                # Every view asked for is stored: reuse the run (its views, its order).
                self.fingerprint = old
            elif old != fingerprint:
                diff = sorted(k for k in set(old) | set(fingerprint)
                              if k != "backend_check" and old.get(k) != fingerprint.get(k))
                raise DatasetError(
                    f"{self.dir.parent} holds a different run (differs in: {', '.join(diff)}); "
                    "use another `out_dir`, or delete this folder to start over"
                )
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            meta.write_text(json.dumps(fingerprint, indent=1))

    def path(self, start: int) -> Path:
        return self.dir / f"chunk_{start:09d}.safetensors"

    def has(self, start: int) -> bool:
        return self.path(start).exists()

    def write(self, start: int, payload: dict[str, Tensor], skipped: list[tuple[int, str]]) -> None:
        tmp = self.path(start).with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in payload.items()}, str(tmp), metadata={"skipped": json.dumps(skipped)})
        tmp.replace(self.path(start))  # atomic: a killed run never leaves half a chunk

    def read(self, start: int) -> tuple[dict[str, Tensor], list[tuple[int, str]]]:
        with safe_open(str(self.path(start)), framework="pt") as f:
            skipped = [tuple(s) for s in json.loads(f.metadata()["skipped"])]
        return load_file(str(self.path(start))), skipped  # type: ignore[return-value]

    def chunks(self) -> Iterator[tuple[dict[str, Tensor], list[tuple[int, str]]]]:
        for start, _ in plan_chunks(self.fingerprint["n_images"], self.fingerprint["batch_size"]):
            yield self.read(start)


LogitStore = OutputStore  # the old name (it stores every task's outputs, not only logits); deprecated


def fingerprint(
    lm: LoadedModel,
    data: Any,
    views: Sequence[View],
    batch_size: int,
    fields: Mapping[str, Any],
) -> dict[str, Any]:
    """What identifies a run's stored outputs: model, weights, data, views, chunking and the
    task's ``fields`` (what identifies its data and labels, e.g. a hash of them)."""
    return {
        "model": lm.name,
        "weights": lm.weights,
        "data": data.source,
        "n_images": len(data),
        **dict(fields),
        "views": [v.name for v in views],
        "batch_size": batch_size,
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in lm.data_config.items()},
    }
