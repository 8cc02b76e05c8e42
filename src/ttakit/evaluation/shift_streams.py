"""Shifted streams of the user's own photos, and every candidate's per-view logits on them.

A search ``--shifts`` deals the photos out to shift families in turn (photo ``i`` to stream
``i mod S``: every family gets different photos, and the cost is one pass over the photos
whatever the number of families), renders each family's copies once (:mod:`ttakit.shifts`,
at ImageNet-C's working size, saved as JPEG quality 85 as ImageNet-C was) and runs every pool
view through the plain model and through each adaptation method's copy, each family's
photos as one stream in their own order. Copies and logits are cached under ``root``, so a
second search on the same photos only chooses again.

Example:
    >>> plan = ShiftPlan(families=("clean", "fog", "jpeg"), limit=6)
    >>> plan.streams(6)
    [('clean', 0, [0, 3]), ('fog', 3, [1, 4]), ('jpeg', 3, [2, 5])]
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..adapt import AdaptOptions, list_adapters
from ..data import load_image
from ..datasets import LabelledImages
from ..errors import ConfigError
from ..models import LoadedModel
from ..policy import Policy
from ..runtime.config import RunConfig
from ..shifts import expand_families, shift_image, working_copy
from .adapt_rows import adapted_logits
from .scoring import EvalOptions

__all__ = ["CLEAN", "DEFAULT_FAMILIES", "ShiftPlan", "StreamLogits", "estimate_seconds", "render_stream", "shift_logits"]

CLEAN = "clean"  # the photos as they are: a family of their own, so a choice must not cost there
# One or two families of each group, measured to move the plain model (benchmarks/bench_shift_families.py).
DEFAULT_FAMILIES = (CLEAN, "gaussian_noise", "impulse_noise", "defocus_blur", "motion_blur", "fog", "contrast",
                    "brightness", "jpeg", "pixelate")


@dataclass(frozen=True)
class ShiftPlan:
    """Which shifted streams a search scores its candidates on.

    Attributes:
        families: shift families (:data:`ttakit.shifts.SHIFTS`), group names (``noise``, ...)
            or ``clean``; at least 3, as each is left out in turn and the rest choose.
        severities: severities (1-5) of every family; each (family, severity) is a stream.
        limit: photos used, the first ``limit`` of the data (``None``: all).
        methods: adaptation candidates (``none``: the plain model); gradient methods
            (``tent``, ``eata``) cost a backward pass per batch and are opt-in.
        adapt_batch: photos per adaptation step.
        seed: seed of the shifted copies (photo ``i`` draws with ``seed + i``).
    """

    families: tuple[str, ...] = DEFAULT_FAMILIES
    severities: tuple[int, ...] = (3,)
    limit: int | None = None
    methods: tuple[str, ...] = ("none", "bn", "auto")
    adapt_batch: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        fams = [f for f in self.families if f != CLEAN]
        object.__setattr__(self, "families", ((CLEAN,) if CLEAN in self.families else ())
                           + tuple(expand_families(fams) if fams else ()))
        if len(self.families) < 3:
            raise ConfigError(f"shift families: leaving one family out needs at least 3, got {list(self.families)}")
        if not self.severities or any(s not in (1, 2, 3, 4, 5) for s in self.severities):
            raise ConfigError(f"shift severities must be 1-5, got {list(self.severities)}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"shift photo limit must be a positive number of photos, got {self.limit}")
        known = ["none", *list_adapters()]
        bad = [m for m in self.methods if m not in known]
        if bad or "none" not in self.methods:
            raise ConfigError(f"adaptation candidates must include none and be among {', '.join(known)}; "
                              f"got {list(self.methods)}")
        if self.adapt_batch < 1:
            raise ConfigError(f"adapt batch must be a positive integer, got {self.adapt_batch}")

    def streams(self, n: int) -> list[tuple[str, int, list[int]]]:
        """``(family, severity, photo indices)`` of each stream, the photos dealt in turn
        (``clean`` has severity 0)."""
        pairs = [(f, 0 if f == CLEAN else s) for f in self.families for s in (self.severities if f != CLEAN else (0,))]
        n = n if self.limit is None else min(n, self.limit)
        return [(f, s, list(range(k, n, len(pairs)))) for k, (f, s) in enumerate(pairs)]


@dataclass(frozen=True)
class StreamLogits:
    """Every candidate's per-view logits on the shifted streams, concatenated in stream order.

    Attributes:
        logits: ``{method: (N, U, C)}``, one column per pool view (``none``: the plain model).
        labels: ``(N,)``.
        families: ``(N,)`` the index in ``names`` of each photo's family.
        names: the family names.
    """

    logits: dict[str, torch.Tensor]
    labels: torch.Tensor
    families: torch.Tensor
    names: tuple[str, ...]


def render_stream(data: LabelledImages, family: str, severity: int, indices: list[int], folder: Path,
            seed: int) -> LabelledImages:
    """The photos ``indices`` of ``data`` shifted by ``family`` at ``severity`` (photo ``i``
    drawn with ``seed + i``), as a dataset in that order; made once under ``folder`` (existing
    copies are kept); ``clean`` is the photos themselves."""
    if family == CLEAN:
        return LabelledImages(tuple(data.paths[i] for i in indices), tuple(data.labels[i] for i in indices),
                              data.layout, data.source)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in indices:
        out = folder / f"{i:06d}.jpg"
        if not out.exists():
            copy = shift_image(working_copy(load_image(data.paths[i])), family, severity, seed + i)
            tmp = out.with_suffix(".tmp")
            copy.save(tmp, "JPEG", quality=85)
            os.replace(tmp, out)
        paths.append(str(out))
    return LabelledImages(tuple(paths), tuple(data.labels[i] for i in indices), data.layout, str(folder))


def _cached_logits(path: Path, key: dict[str, Any], make: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """``make()``'s logits, saved at ``path`` with ``key`` and read back while the key matches."""
    if path.exists():
        saved = torch.load(path, weights_only=True)
        if saved.get("key") == json.dumps(key, sort_keys=True):
            return saved["logits"]
    logits, kept = make()
    if len(kept) != key["photos"]:
        raise ConfigError(f"{len(kept)} of {key['photos']} shifted photos decoded under {path.parent}; "
                          "remove the unreadable photos from DATA")
    tmp = path.with_suffix(".tmp")
    torch.save({"key": json.dumps(key, sort_keys=True), "logits": logits}, tmp)
    os.replace(tmp, path)
    return logits


def shift_logits(lm: LoadedModel, data: LabelledImages, pool: Policy, plan: ShiftPlan, root: str | Path,
                 run_config: RunConfig, options: EvalOptions = EvalOptions(), device: torch.device | str = "cpu",
                 progress: Callable[[int], Any] | None = None) -> StreamLogits:
    """Render the plan's streams under ``root`` and run every pool view through every method
    (see the module doc). Cached: a stream's copies and each method's logits are reused while
    the pool, photos, batch and seed are the same."""
    parts: dict[str, list[torch.Tensor]] = {m: [] for m in plan.methods}
    labels, fams = [], []
    names = tuple(plan.families)
    adapt = AdaptOptions(batch=plan.adapt_batch)
    views = [v.name for v in pool.views]
    for family, severity, idx in plan.streams(len(data)):
        if not idx:
            continue
        folder = Path(root) / f"{family}-{severity}"
        stream = render_stream(data, family, severity, idx, folder, plan.seed)
        for m in plan.methods:
            key = {"views": views, "photos": len(stream), "batch": plan.adapt_batch, "seed": plan.seed,
                   "paths": [Path(p).name for p in stream.paths[:3]], "model": lm.name}
            folder.mkdir(parents=True, exist_ok=True)
            parts[m].append(_cached_logits(
                folder / f"logits-{m}.pt", key,
                lambda m=m: adapted_logits(lm, stream, pool, m if m != "none" else None, adapt, run_config,  # type: ignore[misc]
                                           options, device, progress)))
        labels.append(torch.tensor(stream.labels, dtype=torch.long))
        fams.append(torch.full((len(stream),), names.index(family), dtype=torch.long))
    return StreamLogits({m: torch.cat(p) for m, p in parts.items()}, torch.cat(labels), torch.cat(fams), names)


def estimate_seconds(lm: LoadedModel, data: LabelledImages, pool: Policy, plan: ShiftPlan,
                     run_config: RunConfig, device: torch.device | str = "cpu", photos: int = 4) -> dict[str, float]:
    """The expected cost of :func:`shift_logits`, measured on ``photos`` photos: the seconds
    per view-forward at each pool view's input size and per shifted copy, times the counts.

    Returns:
        ``{"seconds", "forwards", "per_forward", "per_copy", "photos"}``.
    """
    n = len(data) if plan.limit is None else min(len(data), plan.limit)
    sample = data.head(min(photos, len(data)))
    side = int(lm.data_config["input_size"][-1])
    sizes = [getattr(v.source, "size", side) if v.source is not None else side for v in pool.views]
    area = float(np.mean([(s / side) ** 2 for s in sizes]))  # a forward costs about its pixels
    x = torch.randn(len(sample), *lm.data_config["input_size"], device=device)
    with torch.inference_mode():
        lm.model(x[:1])  # warm-up
        t0 = time.perf_counter()
        lm.model(x)
        per_forward = (time.perf_counter() - t0) / len(sample)
    shifted = [f for f in plan.families if f != CLEAN]
    t0 = time.perf_counter()
    for k, f in enumerate(shifted[:photos]):
        shift_image(working_copy(load_image(sample.paths[k % len(sample)])), f, plan.severities[0], 0)
    per_copy = (time.perf_counter() - t0) / max(1, min(photos, len(shifted)))
    n_copies = sum(len(i) for f, _, i in plan.streams(n) if f != CLEAN)
    # Every method runs every view; an adapting method also steps on the plain inputs (one more forward).
    forwards = n * (len(pool.views) * len(plan.methods) + len(plan.methods) - 1)
    seconds = forwards * per_forward * area + n_copies * per_copy
    return {"seconds": seconds, "forwards": forwards, "per_forward": per_forward * area, "per_copy": per_copy,
            "photos": n}

