"""Classification as its task spec evaluates it: the data loader and the task, with conformal sets, adapted rows and the fp32 check.

:func:`classify_task` is the ``evaluation`` of the ``classify``
:class:`~ttakit.task_spec.TaskSpec`: the :class:`~ttakit.evaluation.evaluate.ClassifyTask` of
the pipeline plus what a classification run adds after its stored rows: conformal set sizes
(``conformal``), rows of the model adapted along the stream (``adapt``; they cannot come from
the stored logits) and, at a reduced precision, the plain row against fp32 on the same images.

Example:
    >>> from types import SimpleNamespace
    >>> lm = LoadedModel(torch.nn.Identity(), "id", "none", {"input_size": (3, 8, 8)}, ["a", "b"])
    >>> task = classify_task(lm, SimpleNamespace(labels=(0, 1)), RunConfig(), None, {"adaptive": 0.5})
    >>> task.adapt, task.scoring.adaptive, task.labels.tolist()
    ((), 0.5, [0, 1])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..adapt import AdaptOptions, check_adaptable
from ..datasets import LabelledImages, detect_dataset
from ..models import LoadedModel
from ..policy import Policy
from ..runtime.backends import Backend
from ..runtime.config import RunConfig
from .adapt_rows import evaluate_adapted
from .classify_logits import ClassifyScoring
from .conformal import ConformalOptions, ConformalScorer
from .evaluate import ClassifyTask
from .precision import evaluate_precision
from .scoring import EvalOptions

__all__ = ["ClassifyRun", "classify_data", "classify_task"]


@dataclass(frozen=True)
class ClassifyRun(ClassifyTask):
    """:class:`~ttakit.evaluation.evaluate.ClassifyTask` with adapted rows and the fp32 check.

    Attributes:
        adapt: adaptation methods; each adds rows ``'<policy> adapt=<method>'`` (the data read
            again, as a stream, through an adapted copy of the model).
        adapt_options: their batch size and reset period.
    """

    adapt: tuple[str, ...] = ()
    adapt_options: AdaptOptions = AdaptOptions()

    def more_rows(self, lm: LoadedModel, data: LabelledImages, policies: Sequence[Policy],
                  merges: Sequence[str] | None, run_config: RunConfig, options: EvalOptions, device: torch.device,
                  progress: Callable[[int], Any] | None) -> dict[str, dict[str, Any]]:
        if not self.adapt:
            return {}
        adapt = replace(self.adapt_options, strict=options.strict)  # --strict refuses steps likely to collapse
        return evaluate_adapted(lm, data, policies, merges, self.adapt, adapt, run_config, options,
                                device, progress=progress, scoring=self.scoring)

    def against_fp32(self, lm: LoadedModel, data: LabelledImages, out: Path, backend: Backend, options: EvalOptions,
                     device: torch.device, progress: Callable[[int], Any] | None) -> dict[str, Any]:
        if backend.precision == "fp32":
            return {}
        return evaluate_precision(lm, data, out, backend, options, device, progress=progress)


def classify_data(source: str | Path, lm: LoadedModel, options: Mapping[str, Any]) -> LabelledImages:
    """The task's data loader: the labelled photos of ``source`` (an ImageFolder tree, a flat
    folder of ``<wnid>_*.JPEG`` files or a ``path,label`` CSV), labelled by ``lm``'s classes."""
    return detect_dataset(source, lm.class_names)


def classify_task(lm: LoadedModel, data: LabelledImages, run_config: RunConfig, scoring: ClassifyScoring | None,
                  options: Mapping[str, Any]) -> ClassifyRun:
    """The task's evaluation: ``scoring`` (default: the ``adaptive`` and ``confidence``
    options), conformal sets with ``conformal`` (alpha) and ``conformal_score``, adapted rows
    with ``adapt`` (methods), ``adapt_batch`` and ``adapt_reset``."""
    if scoring is None:
        scoring = ClassifyScoring(adaptive=options.get("adaptive"), confidence=options.get("confidence") or "max_prob")
    extras = () if options.get("conformal") is None else (ConformalScorer(ConformalOptions(
        alpha=options["conformal"], score=options.get("conformal_score") or "thr")),)
    adapt = options.get("adapt") or ()
    adapt = (adapt,) if isinstance(adapt, str) else tuple(adapt)
    for method in adapt:  # a model with nothing the method adapts is refused before any photo is read
        check_adaptable(method, lm.model)
    return ClassifyRun(lm.class_names, torch.tensor(data.labels, dtype=torch.long), scoring, extras,
                       adapt=adapt,
                       adapt_options=AdaptOptions(batch=options.get("adapt_batch") or 64, reset=options.get("adapt_reset")))
