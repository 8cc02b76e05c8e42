"""Run configuration: how images are fed to the model (micro-batch, memory format, autocast).

None of these settings changes a result beyond float rounding; they only change speed. The
defaults depend on the device; :func:`tune_run_config` measures the best micro-batch once per
device and model and caches it in ttakit's cache folder (:func:`cache_dir`).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ArgumentError
from ..validate import check_bool, check_int

__all__ = [
    "RunConfig",
    "cache_dir",
    "default_run_config",
    "kept_as_given",
    "model_device",
    "prepare_model",
    "prepared",
    "timed",
    "torch_threads",
    "tune_run_config",
]


@dataclass(frozen=True)
class RunConfig:
    """How images are fed to the model.

    Attributes:
        micro_batch: images per model forward (>= 1).
        channels_last: feed NHWC tensors (and convert the model once), faster for CNNs on CPU
            and on tensor-core GPUs.
        amp_dtype: autocast dtype (``torch.bfloat16``/``torch.float16``) or ``None`` for full
            precision.

    Example:
        >>> RunConfig(micro_batch=8).micro_batch
        8
        >>> RunConfig(micro_batch=0)
        Traceback (most recent call last):
        ...
        ttakit.errors.ArgumentError: micro_batch must be a positive integer, got 0
    """

    micro_batch: int = 4
    channels_last: bool = True
    amp_dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        check_int("micro_batch", self.micro_batch)
        check_bool("channels_last", self.channels_last)
        if self.amp_dtype not in (None, torch.bfloat16, torch.float16):
            raise ArgumentError(f"amp_dtype must be torch.bfloat16, torch.float16 or None, got {self.amp_dtype!r}")


def default_run_config(device: torch.device | str = "cpu") -> RunConfig:
    """Defaults per device type: on CPU small micro-batches stay in cache (measured 2-3x
    faster per image than a batch of 64, see BENCHMARKS.md); GPUs want large batches."""
    if torch.device(device).type == "cuda":
        return RunConfig(micro_batch=128, channels_last=True)
    return RunConfig(micro_batch=4, channels_last=True)


def cache_dir() -> Path:
    """ttakit's cache folder: ``$TTAKIT_CACHE``, else ``$XDG_CACHE_HOME/ttakit``, else
    ``~/.cache/ttakit`` (tuned run configs, exported backend models)."""
    root = os.environ.get("TTAKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "ttakit")
    return Path(root)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall time of ``fn()`` in seconds, waiting for the GPU to finish where there is one."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def prepare_model(model: nn.Module, config: RunConfig) -> nn.Module:
    """Put the model's parameters in the memory format ``config`` feeds it (in place):
    channels-last inputs on a contiguous model take a slow path. Prefer :func:`prepared`,
    which gives the model back as it was."""
    # Outside inference mode even when called in it: the copies stay ordinary parameters.
    with torch.inference_mode(False), torch.no_grad():
        model.to(memory_format=torch.channels_last if config.channels_last else torch.contiguous_format)
    return model


@contextlib.contextmanager
def kept_as_given(model: nn.Module) -> Iterator[nn.Module]:
    """Run the block, then give ``model`` back as it was given: each module's train/eval
    mode, each parameter's ``requires_grad`` and each 4-D tensor's memory format.

    Example:
        >>> net = torch.nn.Conv2d(3, 4, 3).train()
        >>> with kept_as_given(net):
        ...     _ = net.eval().to(memory_format=torch.channels_last).requires_grad_(False)
        >>> net.training, net.weight.requires_grad, net.weight.is_contiguous()
        (True, True, True)
    """
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.ndim == 4]
    formats = [(t, t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()) for t in tensors]
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training
        with torch.inference_mode(False), torch.no_grad():
            for p, flag in grads:
                if p.requires_grad != flag:
                    p.requires_grad_(flag)
            for t, cl in formats:
                fmt = torch.channels_last if cl else torch.contiguous_format
                if not t.is_contiguous(memory_format=fmt):
                    t.data = t.data.contiguous(memory_format=fmt)


@contextlib.contextmanager
def prepared(model: nn.Module, config: RunConfig) -> Iterator[nn.Module]:
    """The model in the memory format ``config`` feeds it for the block (see
    :func:`prepare_model`), then given back as it was given (:func:`kept_as_given`)."""
    with kept_as_given(model):
        yield prepare_model(model, config)


def tune_run_config(
    model: nn.Module | Callable[[Tensor], Any],
    input_size: tuple[int, int],
    device: torch.device | str = "cpu",
    candidates: Sequence[int] | None = None,
    cache: bool = True,
    key: str | None = None,
) -> RunConfig:
    """Measure which micro-batch size and memory format run ``model`` fastest per image on
    ``device``, once, and remember it (``cache_dir() / "run_config.json"``) under the device,
    model class, input size and torch version.

    ``model`` may also be a backend (any callable, see :mod:`ttakit.runtime.backends`): it is
    named by its ``cache_key`` and only the micro-batch is tuned (contiguous inputs; the ONNX
    runtimes take NCHW arrays). The model's memory format is left as it was found.
    """
    dev = torch.device(device)
    if candidates is None:  # CPUs like cache-sized batches; GPUs want to be filled
        candidates = (32, 64, 128, 256) if dev.type == "cuda" else (4, 8, 16, 32)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu{os.cpu_count()}"
    is_module = isinstance(model, nn.Module)
    what = sum(p.numel() for p in model.parameters()) if is_module else getattr(model, "cache_key", "")
    ident = key or f"{name}|{type(model).__name__}|{what}|{input_size}|{torch.__version__}"
    path = cache_dir() / "run_config.json"
    table = json.loads(path.read_text()) if cache and path.exists() else {}
    if ident in table:
        return RunConfig(**table[ident])
    first = next(model.parameters(), None) if is_module else None
    was_cl = first is not None and first.ndim == 4 and first.is_contiguous(memory_format=torch.channels_last)
    timings: dict[tuple[bool, int], float] = {}
    with torch.inference_mode():
        for _ in range(2):  # the first pass warms every kernel up; the second is kept
            for cl in ((True, False) if is_module else (False,)):
                if is_module:
                    model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
                for mb in candidates:
                    x = torch.randn(mb, 3, *input_size, device=dev)
                    x = x.contiguous(memory_format=torch.channels_last) if cl else x
                    model(x)
                    times = sorted(timed(lambda: model(x), dev) / mb for _ in range(3))
                    timings[(cl, mb)] = times[1]  # median per image
    cl, mb = min(timings, key=timings.__getitem__)
    best = RunConfig(mb, cl)
    if is_module:
        model.to(memory_format=torch.channels_last if was_cl else torch.contiguous_format)
    if cache:
        table[ident] = {"micro_batch": best.micro_batch, "channels_last": best.channels_last}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(table, indent=1))
    return best


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the previous count.

    Scoring and drawing work on many small tensors, where intra-op threads only add overhead
    (on a busy machine they spin: measured 10-50x slower per small op with 2 threads than 1).

    Example:
        >>> with torch_threads(1):
        ...     torch.get_num_threads()
        1
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
