"""``auto``: batch-norm adaptation behind a label-free guard that falls back to the plain model.

Adapting hurts in three situations that the stream itself can reveal (measured on the even
half of 500 ImageNet photos, ImageNet-C severity 3, ``tf_efficientnet_lite0``; the odd half
and other photos were never used to choose anything here):

1. *No low-level shift* (clean photos; also noise, JPEG and pixelation, whose pixel
   statistics barely move): test statistics then only add sampling noise and label bias, and
   every variant lost 4 to 15 points on clean photos. ``auto`` measures the shift where the
   corruption lives and the class does not: the symmetric KL divergence between the test and
   source Gaussians of the first :data:`SHIFT_LAYERS` normalisation layers. Clean batches
   scored <= 0.01 (either order), noise/JPEG/pixelate 0.02-0.04, brightness 0.1-0.2,
   defocus 0.3, fog 0.45-0.6, contrast 0.5-0.8; ``auto`` adapts only above
   :data:`SHIFT_MIN` = 0.05 (5 x the largest clean batch).
2. *Label-shifted batches* (a stream in class order): one batch's statistics carry its
   classes. ``auto`` pools the statistics of the last 512 images (``window``) and gives the
   source statistics the weight of one batch (``prior`` = the batch size), so the first batch
   moves them half way and the pooled stream soon outweighs them while no single batch does.
3. *Adapted predictions that look worse*: per batch the plain model runs too; when the
   adapted predictions are clearly less certain than the plain ones (mean entropy higher by
   more than :data:`ENTROPY_SLACK`, 15%: on the even fog photos, pooled statistics that gained
   8-9 points still raised the entropy by 6-11%) or collapse onto few classes (fewer than half the plain model's
   distinct predictions), the batch keeps the plain predictions; a collapse also forgets the
   pooled statistics (a reset, as RDumb).

No gradient steps: Tent-style updates are what collapse on label-shifted streams (SAR, Niu
et al. 2023) and cost three forwards; statistics alone gave the gains measured.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .methods import ADAPTERS, StreamAdapter, frozen_copy, entropy
from .norm import stream_norms
from .options import AdaptOptions

__all__ = ["ENTROPY_SLACK", "SHIFT_LAYERS", "SHIFT_MIN", "AutoAdapter"]

SHIFT_LAYERS = 4  # the first normalisation layers, whose statistics describe pixels, not classes
SHIFT_MIN = 0.05  # symmetric KL below which the stream counts as unshifted
ENTROPY_SLACK = 0.15  # adapted mean entropy may exceed the plain one by this share (pooled statistics of
# a few batches add sampling noise that raises entropy even where they help: fog, even photos)


class AutoAdapter(StreamAdapter):
    """``bn`` with pooled statistics, used only while the stream says they help (see module doc).

    Attributes:
        decisions: per batch, ``"adapted"``, ``"unshifted"``, ``"less certain"`` or ``"collapse"``.
        shifts: per batch, the measured low-level shift.

    Example:
        >>> net = timm.create_model("test_resnet", num_classes=10).eval()
        >>> auto = AutoAdapter(net, AdaptOptions(batch=8))
        >>> logits = auto.step(torch.randn(8, 3, 64, 64))     # one stream batch
        >>> logits.shape, auto.decisions[0] in ("adapted", "unshifted", "less certain", "collapse")
        (torch.Size([8, 10]), True)
    """

    name = "auto"
    default_window = 512

    def __init__(self, model: nn.Module, options: AdaptOptions = AdaptOptions()) -> None:
        self.default_prior = float(options.batch)  # one batch never outweighs the source statistics
        super().__init__(model, options)
        self.plain = frozen_copy(model)
        self.adapted = False  # the guard's decision for the last batch
        self.decisions: list[str] = []
        self.shifts: list[float] = []

    @property
    def views_model(self) -> nn.Module:
        return self.model if self.adapted else self.plain

    def shift(self) -> float:
        """The low-level shift of the statistics collected last (mean over the first layers)."""
        norms = list(stream_norms(self.model))[:SHIFT_LAYERS]
        return float(torch.stack([m.shift() for m in norms]).mean()) if norms else 0.0

    def _decide(self, plain: Tensor, adapted: Tensor) -> str:
        shift = self.shift()
        self.shifts.append(shift)
        if shift < SHIFT_MIN:
            return "unshifted"
        if len(adapted.argmax(-1).unique()) < 0.5 * len(plain.argmax(-1).unique()):
            for m in stream_norms(self.model):
                m.forget()
            return "collapse"
        if entropy(adapted).mean() > entropy(plain).mean() * (1 + ENTROPY_SLACK):
            return "less certain"
        return "adapted"

    def _step(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            plain = self.plain(x)
            adapted = self.model(x)
        decision = self._decide(plain, adapted)
        self.decisions.append(decision)
        self.adapted = decision == "adapted"
        return adapted if self.adapted else plain


ADAPTERS.add("auto", AutoAdapter)
