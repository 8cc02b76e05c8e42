"""Classification's stored logits: their identity in a fingerprint, reading them back, and merging them into a row's predictions.

The logits of a classification run are stored as they are, ``(n, U, C)`` per chunk (see
:class:`~ttakit.evaluation.store.OutputStore`); every later use (scoring, the report,
calibration, search) sends them through the one classification path here.

Example:
    >>> from ttakit.evaluation.scoring import PolicyRun
    >>> logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0]]])        # (n=1, U=2 views, C=2)
    >>> run = PolicyRun("hflip", create_policy("hflip"), "mean")
    >>> classify_stored(logits, {"identity": 0, "hflip": 1}, run, ClassifyScoring()).probs
    tensor([[0.5000, 0.5000]])
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..datasets import LabelledImages
from ..errors import DatasetError
from ..tasks.classify import ClassificationResult, ClassifyRule, classify_views, get_confidence
from ..views import View
from .scoring import PolicyRun
from .store import OutputStore

__all__ = ["ClassifyScoring", "classify_stored", "data_hash", "load_logits"]


@dataclass(frozen=True)
class ClassifyScoring:
    """How classification rows are scored from the stored logits (choices of classification
    alone, so not in the shared :class:`~ttakit.evaluation.scoring.EvalOptions`).

    Attributes:
        adaptive: confidence threshold of adaptive TTA: a row's other views count only for the
            images whose plain confidence is below it (``None``: every view for every image;
            a policy's own ``meta["adaptive"]`` applies when this is ``None``).
        confidence: ``max_prob`` or ``margin``, the confidence that ``adaptive`` compares.

    Example:
        >>> ClassifyScoring(confidence="bogus")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ttakit.errors.UnknownNameError: ...
    """

    adaptive: float | None = None
    confidence: str = "max_prob"

    def __post_init__(self) -> None:
        get_confidence(self.confidence)  # resolved here, once: an unknown name fails before any photo is read


def data_hash(data: LabelledImages) -> str:
    """sha256 prefix of a labelled set's ``path<TAB>label`` lines (its identity in a fingerprint)."""
    return hashlib.sha256("\n".join(f"{p}\t{y}" for p, y in zip(data.paths, data.labels)).encode()).hexdigest()[:16]


def load_logits(out_dir: str | Path) -> tuple[Tensor, Tensor, list[str], Tensor]:
    """Read a run's saved logits back: ``(logits (N, U, C), labels (N,), view names,
    image indices (N,))`` for the images that decoded."""
    meta = Path(out_dir) / "logits" / "run.json"
    if not meta.exists():
        raise DatasetError(f"{out_dir}: no saved logits (evaluate into `out_dir={str(out_dir)!r}` first)")
    store = OutputStore(out_dir, json.loads(meta.read_text()))
    parts = [p for p, _ in store.chunks()]
    return (
        torch.cat([p["logits"] for p in parts]),
        torch.cat([p["labels"] for p in parts]),
        list(store.fingerprint["views"]),
        torch.cat([p["indices"] for p in parts]),
    )


def classify_stored(logits: Tensor, columns: dict[str, int], run: PolicyRun,
                    scoring: ClassifyScoring = ClassifyScoring()) -> ClassificationResult:
    """Merge stored logits ``(n, U, C)`` for one row through the one classification path
    (:func:`~ttakit.tasks.classify.classify_views`), adaptive as ``scoring`` or the policy say."""
    threshold = None if run.is_plain else scoring.adaptive
    rule = ClassifyRule.from_policy(run.policy, run.merge, threshold, scoring.confidence)
    if run.is_plain:
        rule = ClassifyRule(rule.merge)  # the plain model: no temperature, never adaptive

    def fetch(rows: Tensor | None, views: Sequence[View]) -> Tensor:
        sub = logits if rows is None else logits[rows]
        return sub[:, [columns[v.name] for v in views]]

    return classify_views(fetch, logits.shape[0], run.policy.views, rule)
