"""Rows of adapted models: every policy again, its views run through a copy adapted to the stream.

Test-time adaptation makes each photo's logits depend on the photos before it, so these rows
cannot come from the per-view logit store: the dataset is read once more as one stream, in its
own order (folder or CSV rows), cut into batches of ``AdaptOptions.batch``. Per batch, each
method's adapter learns from the plain inputs, the union of the policies' views runs through
the adapted copy, and every row is merged and scored by the same code as the stored rows
(:func:`~ttakit.evaluation.classify_logits.classify_stored`, :class:`~ttakit.evaluation.evaluate.RowScores`).
Each row is compared with the unadapted plain model on the same photos.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from ..adapt import ADAPTERS, AdaptOptions
from ..adapt.options import MIN_STEP_BATCH
from ..data import InputRenderer
from ..datasets import LabelledImages, make_loader
from ..errors import ConfigError
from ..models import LoadedModel
from ..policy import Policy
from ..runtime.backends import TorchBackend
from ..runtime.config import RunConfig
from ..runtime.loop import RenderedInputs, run_views
from ..tasks.classify import ClassificationTTA
from ..views import View
from .classify_logits import ClassifyScoring, classify_stored
from .evaluate import RowScores
from .scoring import EvalOptions, policy_runs, union_views
from .stats import compare

__all__ = ["adapted_key", "adapted_logits", "evaluate_adapted"]


def adapted_key(row: str, method: str) -> str:
    """The results key of ``row`` adapted by ``method``.

    Example:
        >>> adapted_key("hflip", "auto")
        'hflip adapt=auto'
    """
    return f"{row} adapt={method}"


def evaluate_adapted(
    lm: LoadedModel,
    data: LabelledImages,
    policies: Sequence[Policy],
    merges: Sequence[str] | None,
    methods: Sequence[str],
    adapt: AdaptOptions,
    run_config: RunConfig,
    options: EvalOptions = EvalOptions(),
    device: torch.device | str = "cpu",
    progress: Callable[[int], Any] | None = None,
    *,
    scoring: ClassifyScoring = ClassifyScoring(),
) -> dict[str, dict[str, Any]]:
    """Score plain and every policy x merge once per adaptation method, on ``data`` as a stream.

    Returns:
        ``{'<row> adapt=<method>': entry}``, each entry as in ``results.json`` (top1, nll, ...,
        ``seconds`` including the adaptation steps) plus its paired comparison with the
        unadapted plain model and ``adapt``, the method.
    """
    data = data.head(options.limit)
    runs = policy_runs(policies, merges)
    views: list[View] = union_views(policies)
    columns = {v.name: i for i, v in enumerate(views)}
    union = Policy(tuple(views), name="union")
    ttas = {m: ClassificationTTA(lm.model, union, norm=lm.normalization, run_config=run_config,
                                 data_config=lm.data_config, adapt=m, adapt_options=adapt) for m in methods}
    rows = {m: [RowScores(r, [columns[v.name] for v in r.policy.views]) for r in runs] for m in methods}
    plain_right: list[torch.Tensor] = []
    plain_nll: list[torch.Tensor] = []
    labels_all = torch.tensor(data.labels, dtype=torch.long)
    last = len(data) - (len(data) - 1) // adapt.batch * adapt.batch if len(data) else 0  # photos in the last batch
    steps = [m for m in methods if not getattr(ADAPTERS.get(m), "needs_batchnorm", True)]  # gradient methods
    if adapt.strict and steps and last and last < MIN_STEP_BATCH:
        raise ConfigError(f"the stream's last batch has {last} photos: {steps[0]} gradient steps on fewer "
                          f"than {MIN_STEP_BATCH} are likely to collapse the model (strict); choose --adapt-batch or "
                          "--limit so that every batch holds at least that many")
    for idx, inputs in _stream(lm, data, views, adapt, options, device):
        labels = labels_all[torch.tensor(idx, dtype=torch.long)]
        with torch.inference_mode():  # the unadapted plain model, the reference of every row
            plain = run_views(TorchBackend(lm.model), inputs, [View()], lm.normalization, run_config)[0].float().cpu()
        logp = torch.log_softmax(plain, -1).gather(1, labels[:, None]).squeeze(1)
        right = plain.argmax(-1) == labels
        plain_right.append(right)
        plain_nll.append(-logp)
        for m, tta in ttas.items():
            t0 = time.perf_counter()
            tta.adapt_step(inputs)
            t1 = time.perf_counter()
            logits = tta.forward_views(inputs).cpu()  # (n, U, C) every view through the adapted copy
            per_view = torch.full((len(views),), (time.perf_counter() - t1) / len(views), dtype=torch.float64)
            for row in rows[m]:
                res = classify_stored(logits, columns, row.run, scoring)
                row.add(res, logits, labels, per_view, right)
                row.seconds += t1 - t0  # every row pays for the adaptation step
        if progress is not None:
            progress(len(idx))
    reference_right, reference_nll = torch.cat(plain_right), torch.cat(plain_nll)
    out: dict[str, dict[str, Any]] = {}
    for m in methods:
        for row in rows[m]:
            key = adapted_key(row.run.key, m)
            cmp = compare(reference_right, torch.cat(row.correct), reference_nll, torch.cat(row.nll))
            out[key] = {**row.result(False), "adapt": m, **cmp.to_dict(), "verdict": cmp.verdict(key)}
    return out


def _stream(lm: LoadedModel, data: LabelledImages, views: Sequence[View], adapt: AdaptOptions, options: EvalOptions,
            device: torch.device | str) -> Iterator[tuple[list[int], RenderedInputs]]:
    """``data`` in its own order, in batches of ``adapt.batch``: ``(indices, rendered inputs)``
    of every input stage that ``views`` need (photos that fail to decode are left out)."""
    batches = [range(s, min(s + adapt.batch, len(data))) for s in range(0, len(data), adapt.batch)]
    loader = make_loader(data.paths, InputRenderer({v.stage for v in views}, lm.data_config), batches, options.workers)
    for idx, x, _bad in loader:
        if x is not None:
            yield list(idx), RenderedInputs(x).to(device)


def adapted_logits(lm: LoadedModel, data: LabelledImages, pool: Policy, method: str, adapt: AdaptOptions,
                   run_config: RunConfig, options: EvalOptions = EvalOptions(), device: torch.device | str = "cpu",
                   progress: Callable[[int], Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every view of ``pool`` through a copy adapted by ``method`` to ``data`` as one stream
    (its own order): ``(logits (N, U, C) with one column per pool view, indices (N,) of the
    photos that decoded)``, the adapted counterpart of the stored logits a search reads.

    Example:
        >>> z, idx = adapted_logits(lm, data, create_policy("hflip"), "bn", AdaptOptions(batch=8), RunConfig())  # doctest: +SKIP
    """
    tta = ClassificationTTA(lm.model, pool, norm=lm.normalization, run_config=run_config, data_config=lm.data_config,
                            adapt=method, adapt_options=adapt)
    out, kept = [], []
    for idx, inputs in _stream(lm, data.head(options.limit), list(pool.views), adapt, options, device):
        tta.adapt_step(inputs)
        out.append(tta.forward_views(inputs).cpu())
        kept += idx
        if progress is not None:
            progress(len(idx))
    return torch.cat(out), torch.tensor(kept, dtype=torch.long)
