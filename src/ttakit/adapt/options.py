"""The settings of test-time adaptation: one frozen dataclass, every field commented."""

from __future__ import annotations

from dataclasses import dataclass

from ..validate import check_bool, check_int, check_positive, check_range

__all__ = ["MIN_STEP_BATCH", "AdaptOptions"]

MIN_STEP_BATCH = 8  # fewer photos per gradient step: entropy minimisation tends to collapse the model


@dataclass(frozen=True)
class AdaptOptions:
    """How a stream adapts a model; ``None`` fields take the method's own default.

    Attributes:
        batch: photos per adaptation step (the stream is cut into batches of this size, in order).
        reset: restore the original weights and statistics every ``reset`` batches (RDumb,
            Press et al. 2023); ``None``: never.
        prior: pseudo-count ``N`` of source images blended into the test statistics
            (Schneider et al. 2020); ``None``: the method's default (``bn``: 16; ``tent``,
            ``eata``: 0, pure batch statistics as published; ``auto``: the batch size).
        window: test images pooled into the statistics across batches (``0``: the current batch
            only); ``None``: the method's default (``auto``: 512, others 0).
        lr: learning rate of the normalisation layers' affine parameters (SGD, momentum 0.9);
            ``None``: 0.00025 x batch/64 (the Tent and EATA ImageNet setting).
        depth: share of the normalisation layers, counted from the input, that use test
            statistics; deeper layers keep the source statistics (``None``: the method's
            default, all layers; ``auto``: see :mod:`~ttakit.adapt.guard`).
        entropy_margin: EATA's ``E0`` as a fraction of ``ln(classes)``: only images whose
            prediction entropy is below it take part in a step (0.4 in the paper).
        redundancy_margin: EATA's ``d``: images whose prediction has a cosine similarity above
            ``1 - d`` with the running mean prediction are skipped as redundant (0.05).
        fisher_alpha: weight of EATA's Fisher anti-forgetting term (2000 in the paper); the
            Fisher information comes from the first batch at the original weights, with the
            model's own predictions as labels (no clean data is needed).
        strict: ``tent``/``eata`` gradient steps on a batch of fewer than
            :data:`MIN_STEP_BATCH` photos raise instead of warning (such steps tend to collapse
            the model onto a few classes).

    Example:
        >>> AdaptOptions(batch=0)
        Traceback (most recent call last):
        ...
        ttakit.errors.ArgumentError: adapt batch must be a positive integer, got 0
    """

    batch: int = 64
    reset: int | None = None
    prior: float | None = None
    window: int | None = None
    lr: float | None = None
    depth: float | None = None
    entropy_margin: float = 0.4
    redundancy_margin: float = 0.05
    fisher_alpha: float = 2000.0
    strict: bool = False  # refuse, instead of warning about, gradient steps on fewer than MIN_STEP_BATCH photos

    def __post_init__(self) -> None:
        check_int("adapt batch", self.batch)
        if self.reset is not None:
            check_int("adapt reset", self.reset)
        if self.prior is not None and not (isinstance(self.prior, (int, float)) and self.prior == float("inf")):
            check_range("adapt prior (a pseudo-count of source images)", self.prior, 0, float("inf"), high_open=True)
        if self.depth is not None:
            check_range("adapt depth (a share of the layers)", self.depth, 0, 1, low_open=True)
        if self.window is not None:
            check_int("adapt window (images)", self.window, 0)
        if self.lr is not None:
            check_positive("adapt lr", self.lr)
        check_range("adapt entropy_margin", self.entropy_margin, 0, 1, low_open=True)
        check_range("adapt redundancy_margin", self.redundancy_margin, 0, 1)
        check_range("adapt fisher_alpha", self.fisher_alpha, 0, float("inf"), high_open=True)
        check_bool("adapt strict", self.strict)

    @property
    def step_lr(self) -> float:
        """The learning rate used: ``lr``, else 0.00025 scaled linearly with the batch size."""
        return self.lr if self.lr is not None else 0.00025 * self.batch / 64
