"""The rows of an evaluation (a policy with one merge) and the run options every task shares.

The pieces every task's scorer and the report need: the row definition (a policy with one
merge, :class:`PolicyRun`, built by :func:`policy_runs`), the distinct views of a run's
policies and the run options. How a task turns its stored outputs into a row's predictions
is the task's own: classification's (stored logits, adaptive threshold, confidence) is in
:mod:`~ttakit.evaluation.classify_logits`; a row's streaming state is
:class:`~ttakit.evaluation.rows.Row`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


from ..errors import ConfigError
from ..merge import get_merge
from ..policy import Policy
from ..views import View

__all__ = ["EvalOptions", "PolicyRun", "policy_runs", "union_views"]


@dataclass(frozen=True)
class PolicyRun:
    """One row of the results: a policy with one merge.

    Attributes:
        key: name in ``results.json`` (the policy as written, ``@merge`` added when several
            merges are asked for; ``plain`` for the plain model).
        policy: the policy.
        merge: the merge name (resolved once, in :func:`policy_runs`).
    """

    key: str
    policy: Policy
    merge: str

    @property
    def is_plain(self) -> bool:
        return self.key == "plain"


@dataclass(frozen=True)
class EvalOptions:
    """Settings of an evaluation run.

    Attributes:
        batch_size: images per chunk (and per DataLoader batch), >= 1.
        workers: threads decoding images (:class:`~ttakit.datasets.DecodeLoader`), >= 0.
        limit: evaluate only the first N images (>= 1), or all.
        strict: any unreadable file is an error instead of a skip.
        quiet: no progress bar.

    Example:
        >>> EvalOptions(batch_size=0)
        Traceback (most recent call last):
        ...
        ttakit.errors.ConfigError: batch_size must be a positive integer, got 0
    """

    batch_size: int = 32
    workers: int = 2
    limit: int | None = None
    strict: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        for name, low in (("batch_size", 1), ("workers", 0), ("limit", 1)):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < low):
                kind = "a positive" if low else "a non-negative"
                raise ConfigError(f"{name} must be {kind} integer, got {value!r}")


def union_views(policies: Sequence[Policy]) -> list[View]:
    """Distinct views of all policies, the identity first (it is always needed for 'plain')."""
    seen: dict[str, View] = {"identity": View()}
    for p in policies:
        for v in p.views:
            seen.setdefault(v.name, v)
    return list(seen.values())


def policy_runs(
    policies: Sequence[Policy],
    merges: Sequence[str] | None,
    *,
    resolve: Callable[[str], Any] = get_merge,
    default: Callable[[Policy], str] = lambda p: p.merge or "mean",
    plain_merge: str = "mean",
) -> list[PolicyRun]:
    """The plain row, then every policy x merge, every task's rows built the same way.

    Args:
        policies: the policies, named as they are to appear.
        merges: the merges asked for (``None``: each policy's ``default``).
        resolve: looks a merge name up (raises on an unknown name), called once per row here.
        default: the merge of a policy when none is asked for.
        plain_merge: the merge recorded for the plain row.

    Example:
        >>> [r.key for r in policy_runs([create_policy("hflip")], ["mean", "max"])]
        ['plain', 'hflip@mean', 'hflip@max']
    """
    runs = [PolicyRun("plain", Policy((View(),), name="plain"), plain_merge)]
    for p in policies:
        chosen = list(merges) if merges else [default(p)]
        for m in chosen:
            resolve(m)
            key = p.name if len(chosen) == 1 else f"{p.name}@{m}"
            runs.append(PolicyRun(key, p, m))
    return runs
