"""``auto``: test-time adaptation behind a label-free guard that falls back to the plain model.

PLACEHOLDER (rule tuned below).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .methods import ADAPTERS, StreamAdapter, _frozen_copy, entropy
from .options import AdaptOptions

__all__ = ["AutoAdapter"]


class AutoAdapter(StreamAdapter):
    """Pooled test statistics, used only while the stream says they help."""

    name = "auto"
    default_window = 512

    def __init__(self, model: nn.Module, options: AdaptOptions = AdaptOptions()) -> None:
        self.default_prior = float(options.batch)  # one batch never outweighs the source statistics
        super().__init__(model, options)
        self.plain = _frozen_copy(model)
        self.adapted = False  # the guard's decision for the last batch

    @property
    def views_model(self) -> nn.Module:
        return self.model if self.adapted else self.plain

    def _step(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            plain = self.plain(x)
            adapted = self.model(x)
        self.adapted = bool(entropy(adapted).mean() < entropy(plain).mean())
        return adapted if self.adapted else plain


ADAPTERS.add("auto", AutoAdapter)
