"""The shared TTA loop and the classification wrapper.

:func:`run_views` is the one loop every task uses: it streams the ``B x V`` augmented images
through the model in micro-batches (built on the fly, so memory is bounded by the
micro-batch, not by ``V``), grouping views whose images have the same size so that even a
single input image fills a micro-batch. Tasks differ only in what they do with each view's
output afterwards: classification stacks logits and merges them; dense tasks first map each
prediction back to the original geometry (see :mod:`ttakit.dense`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import check_shape
from .merge import get_merge, merge_logits
from .policy import Policy, PolicyLike, create_policy
from .transforms import Normalization, View

__all__ = [
    "CONFIDENCE",
    "ClassificationTTA",
    "RunConfig",
    "TTAResult",
    "default_run_config",
    "prepare_model",
    "run_views",
    "timed",
    "tune_run_config",
]


@dataclass(frozen=True)
class RunConfig:
    """How images are fed to the model; none of it changes the results beyond float rounding.

    Attributes:
        micro_batch: images per model forward.
        channels_last: feed NHWC tensors (and convert the model once), faster for CNNs on CPU
            and on tensor-core GPUs.
        amp_dtype: autocast dtype (``torch.bfloat16``/``torch.float16``) or ``None`` for full
            precision.
    """

    micro_batch: int = 4
    channels_last: bool = True
    amp_dtype: torch.dtype | None = None


def default_run_config(device: torch.device | str = "cpu") -> RunConfig:
    """Defaults per device type: on CPU small micro-batches stay in cache (measured 2-3x
    faster per image than a batch of 64, see BENCHMARKS.md); GPUs want large batches."""
    kind = torch.device(device).type
    if kind == "cuda":
        return RunConfig(micro_batch=128, channels_last=True)
    return RunConfig(micro_batch=4, channels_last=True)


def _cache_path() -> Path:
    root = os.environ.get("TTAKIT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "ttakit")
    return Path(root) / "run_config.json"


def tune_run_config(
    model: nn.Module,
    input_size: tuple[int, int],
    device: torch.device | str = "cpu",
    candidates: Sequence[int] | None = None,
    cache: bool = True,
    key: str | None = None,
) -> RunConfig:
    """Measure which micro-batch size and memory format run ``model`` fastest per image on
    ``device``, once, and remember it (``~/.cache/ttakit/run_config.json``; ``TTAKIT_CACHE``
    moves it) under the device, model class, input size and torch version.

    The model's memory format is left as it was found.
    """
    dev = torch.device(device)
    if candidates is None:  # CPUs like cache-sized batches; GPUs want to be filled
        candidates = (32, 64, 128, 256) if dev.type == "cuda" else (4, 8, 16, 32)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu{os.cpu_count()}"
    ident = key or f"{name}|{type(model).__name__}|{sum(p.numel() for p in model.parameters())}|{input_size}|{torch.__version__}"
    path = _cache_path()
    table = json.loads(path.read_text()) if cache and path.exists() else {}
    if ident in table:
        return RunConfig(**table[ident])
    first = next(model.parameters(), None)
    was_cl = first is not None and first.ndim == 4 and first.is_contiguous(memory_format=torch.channels_last)
    timings: dict[tuple[bool, int], float] = {}
    with torch.inference_mode():
        for _ in range(2):  # the first pass warms every kernel up; the second is kept
            for cl in (True, False):
                model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
                for mb in candidates:
                    x = torch.randn(mb, 3, *input_size, device=dev)
                    x = x.contiguous(memory_format=torch.channels_last) if cl else x
                    model(x)
                    times = sorted(timed(lambda: model(x), dev) / mb for _ in range(3))
                    timings[(cl, mb)] = times[1]  # median per image
    cl, mb = min(timings, key=timings.__getitem__)
    best = RunConfig(mb, cl)
    model.to(memory_format=torch.channels_last if was_cl else torch.contiguous_format)
    if cache:
        table[ident] = {"micro_batch": best.micro_batch, "channels_last": best.channels_last}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(table, indent=1))
    return best


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall time of ``fn()``, waiting for the GPU to finish where there is one."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def prepare_model(model: nn.Module, config: RunConfig) -> nn.Module:
    """Put the model's parameters in the memory format ``config`` feeds it (once, in place):
    channels-last inputs on a contiguous model take a slow path."""
    model.to(memory_format=torch.channels_last if config.channels_last else torch.contiguous_format)
    return model


# --------------------------------------------------------------------------- output trees
def _tree_cat(parts: Sequence[Any]) -> Any:
    first = parts[0]
    if isinstance(first, Tensor):
        return torch.cat(parts, dim=0)
    if isinstance(first, dict):
        return {k: _tree_cat([p[k] for p in parts]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_tree_cat([p[i] for p in parts]) for i in range(len(first)))
    raise TypeError(f"model output of type {type(first).__name__} is not a tensor, dict or tuple of tensors")


def _tree_slice(out: Any, start: int, stop: int) -> Any:
    if isinstance(out, Tensor):
        return out[start:stop]
    if isinstance(out, dict):
        return {k: _tree_slice(v, start, stop) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return type(out)(_tree_slice(v, start, stop) for v in out)
    raise TypeError(f"model output of type {type(out).__name__} is not a tensor, dict or tuple of tensors")


# --------------------------------------------------------------------------- the loop
def run_views(
    model: Callable[[Tensor], Any],
    x: Tensor,
    views: Sequence[View],
    norm: Normalization,
    config: RunConfig,
) -> list[Any]:
    """Run ``model`` on every view of the batch ``x``.

    Args:
        model: maps ``(N, C, h, w)`` images to a tensor, dict or tuple of tensors with batch
            dimension ``N``.
        x: ``(B, C, H, W)`` normalised images.
        views: the views to run.
        norm: the model's input normalisation (used by photometric views).
        config: micro-batch size, memory format and autocast.

    Returns:
        One output per view, in ``views`` order, each with batch dimension ``B``.
    """
    check_shape("images", x.shape, "(B, C, H, W)")
    B, size = x.shape[0], tuple(x.shape[-2:])
    mb = max(1, config.micro_batch)
    pieces: list[list[tuple[int, Any]]] = [[] for _ in views]  # per view: (b0, output slice)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, view in enumerate(views):
        groups.setdefault(view.output_size(size), []).append(i)
    amp = (
        torch.autocast(device_type=x.device.type, dtype=config.amp_dtype)
        if config.amp_dtype is not None
        else torch.autocast(device_type=x.device.type, enabled=False)
    )
    for idx in groups.values():
        # Walk the (view, image) pairs of this size group in chunks of `mb`; a chunk may span
        # several views, so one image with many views still fills each forward.
        total, pos = len(idx) * B, 0
        while pos < total:
            end = min(pos + mb, total)
            runs, batch = [], []
            p = pos
            while p < end:
                v, b0 = divmod(p, B)
                b1 = min(B, b0 + (end - p))
                batch.append(views[idx[v]].apply(x[b0:b1], norm))
                runs.append((idx[v], b0, b1))
                p += b1 - b0
            inp = torch.cat(batch) if len(batch) > 1 else batch[0]
            if config.channels_last:
                inp = inp.contiguous(memory_format=torch.channels_last)
            with amp:
                out = model(inp)
            offset = 0
            for vi, b0, b1 in runs:
                pieces[vi].append((b0, _tree_slice(out, offset, offset + b1 - b0)))
                offset += b1 - b0
            pos = end
    return [_tree_cat([o for _, o in sorted(p, key=lambda t: t[0])]) for p in pieces]


# --------------------------------------------------------------------------- classification
def _max_prob(logits: Tensor) -> Tensor:
    return torch.softmax(logits.float(), dim=-1).max(dim=-1).values


def _margin(logits: Tensor) -> Tensor:
    top2 = torch.softmax(logits.float(), dim=-1).topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


CONFIDENCE: dict[str, Callable[[Tensor], Tensor]] = {
    "max_prob": _max_prob,  # largest softmax probability of the plain view
    "margin": _margin,  # top-1 minus top-2 probability of the plain view
}


@dataclass(frozen=True)
class TTAResult:
    """What :meth:`ClassificationTTA.predict` returns.

    Attributes:
        probs: ``(B, C)`` merged probabilities.
        plain_logits: ``(B, C)`` logits of the un-augmented image.
        view_forwards: images sent through the model, summed over views.
        augmented: ``(B,)`` bool, which inputs got the full policy (all True without adaptive).
    """

    probs: Tensor
    plain_logits: Tensor | None
    view_forwards: int
    augmented: Tensor


class ClassificationTTA(nn.Module):
    """Test-time augmentation around an image classifier.

    Args:
        model: maps ``(N, C, H, W)`` normalised images to ``(N, num_classes)`` logits.
        policy: preset name, policy text, JSON path or :class:`~ttakit.policy.Policy`.
        merge: merge mode (see :mod:`ttakit.merge`); ``None`` uses the policy's, else ``mean``.
        norm: the model's input normalisation, needed by brightness/contrast views; taken
            from ``model.pretrained_cfg`` when not given.
        run_config: micro-batch size, memory format and autocast; device defaults if ``None``.
            With ``channels_last`` the model's parameters are converted once, in place.
        adaptive: confidence threshold for adaptive TTA: the plain view runs first and only
            inputs whose confidence is below it get the other views (``None``: the policy's
            ``meta["adaptive"]`` if it has one, else every view for every input).
        confidence: ``"max_prob"`` (default) or ``"margin"`` (top-1 minus top-2 probability).

    Example:
        >>> lm = ttakit.load_model()
        >>> tta = ClassificationTTA(lm.model, "hflip", norm=lm.normalization)
        >>> probs = tta(images)          # (B, 1000)
        >>> logits = tta.forward_views(images)  # (B, 2, 1000)
    """

    def __init__(
        self,
        model: nn.Module,
        policy: PolicyLike = "none",
        merge: str | None = None,
        *,
        norm: Normalization | None = None,
        run_config: RunConfig | None = None,
        adaptive: float | None = None,
        confidence: str = "max_prob",
    ) -> None:
        super().__init__()
        self.model = model
        self.policy: Policy = create_policy(policy)
        self.merge_name = merge or self.policy.merge or "mean"
        self._merge = get_merge(self.merge_name)
        if confidence not in CONFIDENCE:
            raise ValueError(f"confidence must be one of {', '.join(CONFIDENCE)}, got {confidence!r}")
        self._confidence = CONFIDENCE[confidence]
        self.confidence_name = confidence
        # A policy chosen by `ttakit search --target-cost` carries its threshold.
        self.adaptive = adaptive if adaptive is not None else self.policy.meta.get("adaptive")
        self.norm = norm or _model_normalization(model)
        self.run_config = run_config or default_run_config(model_device(model))
        prepare_model(model, self.run_config)
        w = self.policy.weights
        self.register_buffer("view_weights", None if w is None else torch.tensor(w, dtype=torch.float32), persistent=False)

    @property
    def views(self) -> tuple[View, ...]:
        return self.policy.views

    def with_run_config(self, **changes: Any) -> ClassificationTTA:
        """A copy with some :class:`RunConfig` fields changed (same model object)."""
        return ClassificationTTA(
            self.model, self.policy, self.merge_name, norm=self.norm,
            run_config=replace(self.run_config, **changes), adaptive=self.adaptive,
            confidence=self.confidence_name,
        )

    @torch.inference_mode()
    def forward_views(self, x: Tensor, views: Sequence[View] | None = None) -> Tensor:
        """Per-view logits ``(B, V, C)`` for ``(B, C, H, W)`` images."""
        outs = run_views(self.model, x, views or self.views, self.norm, self.run_config)
        return torch.stack([o.float() for o in outs], dim=1)  # (B, V, C)

    def merge_views(self, logits: Tensor) -> Tensor:
        """Merge ``(B, V, C)`` logits with this wrapper's merge, weights and temperature."""
        return merge_logits(logits, self._merge, self.view_weights, self.policy.temperature)

    @torch.inference_mode()
    def predict(self, x: Tensor) -> TTAResult:
        """Merged probabilities with the plain logits and the cost in view-forwards."""
        B, V = x.shape[0], len(self.views)
        if self.adaptive is None:
            logits = self.forward_views(x)
            plain = next((logits[:, i] for i, v in enumerate(self.views) if v.is_identity), None)
            return TTAResult(self.merge_views(logits), plain, B * V, torch.ones(B, dtype=torch.bool))
        others = [v for v in self.views if not v.is_identity]
        plain = self.forward_views(x, [View()])[:, 0]  # (B, C)
        uncertain = self._confidence(plain) < self.adaptive  # (B,)
        # Confident inputs keep the plain prediction: no other view is run for them.
        probs = torch.softmax(plain.float(), dim=-1)
        n = int(uncertain.sum())
        if n and others:
            rest = self.forward_views(x[uncertain], others)  # (n, V - |ident|, C)
            cols, j = [], 0
            for v in self.views:
                if v.is_identity:
                    cols.append(plain[uncertain])
                else:
                    cols.append(rest[:, j])
                    j += 1
            probs[uncertain] = self.merge_views(torch.stack(cols, dim=1))
        cost = B + n * len(others)
        return TTAResult(probs, plain, cost, uncertain.cpu())

    def forward(self, x: Tensor) -> Tensor:
        """Merged class probabilities ``(B, C)``."""
        return self.predict(x).probs


def _model_normalization(model: nn.Module) -> Normalization:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "mean" in cfg and "std" in cfg:
        return Normalization(tuple(cfg["mean"]), tuple(cfg["std"]))
    return Normalization()


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
