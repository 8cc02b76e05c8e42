"""Policy search on saved logits: greedy policy search, learned merge weights, adaptive threshold.

Greedy policy search (after Lyzhov et al., "Greedy Policy Search", UAI 2020): starting from an
empty policy, repeatedly add (with replacement) the candidate view that most improves the
temperature-calibrated log-likelihood of the mean-of-probabilities merge, up to a budget.
Adding a view that does not improve the objective stops the search, and the plain view is
always a candidate, so the result is never worse than plain on the selection data.

Learned weights (in the spirit of AugTTA, Shanmugam et al., "Better Aggregation in Test-Time
Augmentation", ICCV 2021): per-view weights and a temperature fitted by minimising the NLL of
the weighted merge on the selection data.

Everything here works on logits ``(N, U, C)`` that :mod:`ttakit.evaluation.evaluate` saved, so
a search costs one evaluation pass, however many candidates it scores. :func:`search_policy`
is the whole recipe (search, optional learned weights, held-out estimate, adaptive
threshold) returning a :class:`~ttakit.policy.Policy`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from ..merge import merge_logits
from ..policy import Policy
from ..tasks.classify import adaptive_cost, get_confidence
from .conformal import ConformalOptions, set_size_policy
from .metrics import TEMPERATURES
from .metrics import nll as nll_metric
from .metrics import topk_accuracy

__all__ = [
    "SearchOptions",
    "SearchResult",
    "calibrated_temperature",
    "choice_probs",
    "correct_and_nll",
    "greedy_search",
    "kfold_estimate",
    "learn_weights",
    "pick_adaptive_threshold",
    "search_policy",
]

@dataclass(frozen=True)
class SearchResult:
    """A chosen policy, as columns of the searched logits.

    Attributes:
        cols: chosen view columns, in order of choice, repeats allowed.
        temperature: calibrated temperature of the merge.
        objective: ``nll`` or ``top1``.
        trace: objective value after each step (lower is better; top1 is negated).
    """

    cols: tuple[int, ...]
    temperature: float
    objective: str
    trace: tuple[float, ...]


def _label_probs(logits: Tensor, labels: Tensor, temps: Sequence[float]) -> Tensor:
    """``(U, T, N)`` probability of the label for each view and temperature."""
    z = logits.double()  # (N, U, C)
    zlab = z.gather(2, labels.view(-1, 1, 1).expand(-1, z.shape[1], 1)).squeeze(2)  # (N, U)
    out = []
    for t in temps:
        lse = torch.logsumexp(z / t, dim=2)  # (N, U)
        out.append((zlab / t - lse).exp().T)  # (U, N)
    return torch.stack(out, dim=1)


def greedy_search(
    logits: Tensor,
    labels: Tensor,
    budget: int,
    objective: str = "nll",
    temperatures: Sequence[float] = TEMPERATURES,
) -> SearchResult:
    """Greedy policy search over the columns of ``logits`` ``(N, U, C)``.

    Args:
        logits: per-view logits of the selection images; column 0 should be the plain view.
        labels: ``(N,)`` class indices.
        budget: maximum number of views in the policy.
        objective: ``nll`` (temperature-calibrated NLL of the mean merge) or ``top1`` (accuracy
            at temperature 1, ties broken by calibrated NLL).

    Example:
        >>> labels = torch.tensor([0, 1, 1, 0])
        >>> good = torch.nn.functional.one_hot(labels, 2).float() * 3       # (N, C)
        >>> logits = torch.stack([good * 0.2, -good, good], dim=1)          # (N, U=3, C)
        >>> greedy_search(logits, labels, budget=3).cols   # the best view, then no view helps
        (2,)
    """
    if objective not in ("nll", "top1"):
        raise ConfigError(f"objective must be nll or top1, got {objective!r}")
    if budget < 1:
        raise ConfigError(f"budget must be at least 1 view, got {budget}")
    N, U, _ = logits.shape
    plab = _label_probs(logits, labels, temperatures)  # (U, T, N)
    run_lab = torch.zeros(len(temperatures), N, dtype=torch.float64)  # sum of chosen views' label probs
    probs1 = torch.softmax(logits.float(), dim=-1) if objective == "top1" else None  # (N, U, C), T = 1
    run_full = torch.zeros(N, logits.shape[2]) if objective == "top1" else None
    cols: list[int] = []
    trace: list[float] = []
    best_t = 1.0
    current = math.inf
    for step in range(budget):
        k = step + 1
        # Calibrated NLL of every candidate policy "chosen + [u]": min over temperatures.
        cand_lab = (run_lab.unsqueeze(0) + plab) / k  # (U, T, N)
        cand_nll = -cand_lab.clamp_min(1e-12).log().mean(dim=2)  # (U, T)
        nll_best, t_idx = cand_nll.min(dim=1)  # (U,)
        if objective == "top1":
            acc = torch.stack([((run_full + probs1[:, u]).argmax(-1) == labels).float().mean() for u in range(U)])
            # Lexicographic: accuracy first, calibrated NLL breaks ties.
            score = -acc.double() + 1e-6 * nll_best / (1.0 + nll_best)
        else:
            score = nll_best
        u = int(score.argmin())
        if float(score[u]) >= current - 1e-12:
            break  # no candidate improves: stop (the plain view was a candidate at step 1)
        current = float(score[u])
        cols.append(u)
        trace.append(current)
        best_t = temperatures[int(t_idx[u])]
        run_lab += plab[u]
        if run_full is not None:
            run_full += probs1[:, u]
    return SearchResult(tuple(cols), best_t, objective, tuple(trace))


def calibrated_temperature(logits: Tensor, labels: Tensor) -> float:
    """Temperature (from the search grid) minimising the NLL of the plain view alone: the fair
    baseline for a calibrated policy. ``logits`` is ``(N, C)``."""
    return greedy_search(logits[:, None], labels, 1, "nll").temperature


def learn_weights(logits: Tensor, labels: Tensor, cols: Sequence[int], steps: int = 100) -> tuple[tuple[float, ...], float]:
    """Fit per-view weights (softmax-parametrised, so non-negative and summing to 1) and a
    temperature minimising the NLL of the weighted mean of probabilities.

    Repeated columns are fitted as one view (their counts set the starting weights).

    Returns:
        ``(weights for each distinct column in first-seen order, temperature)``.
    """
    distinct = list(dict.fromkeys(cols))
    counts = Counter(cols)
    z = logits[:, distinct].double()  # (N, V, C)
    a = torch.tensor([math.log(counts[c]) for c in distinct], dtype=torch.float64, requires_grad=True)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([a, log_t], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")
    zlab_idx = labels.view(-1, 1, 1).expand(-1, z.shape[1], 1)

    def loss_fn() -> Tensor:
        opt.zero_grad()
        logp = torch.log_softmax(z / log_t.exp(), dim=2).gather(2, zlab_idx).squeeze(2)  # (N, V)
        loss = -torch.logsumexp(logp + torch.log_softmax(a, 0), dim=1).mean()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(loss_fn)
    w = torch.softmax(a.detach(), 0)
    return tuple(float(x) for x in w), float(log_t.detach().exp())


def choice_probs(logits: Tensor, cols: Sequence[int], temperature: float,
                 weights: Sequence[float] | None = None) -> Tensor:
    """``(N, C)`` probabilities of the mean merge of ``cols`` at ``temperature``.

    Example:
        >>> import torch
        >>> choice_probs(torch.zeros(4, 3, 10), [0, 2], 1.0).shape
        torch.Size([4, 10])
    """
    w = None if weights is None else torch.tensor(weights)
    return merge_logits(logits[:, list(cols)], "mean", w, temperature)


def evaluate_choice(logits: Tensor, labels: Tensor, cols: Sequence[int], temperature: float,
                    weights: Sequence[float] | None = None) -> dict[str, float]:
    """Top-1 and NLL of the mean merge of ``cols`` at ``temperature``."""
    probs = choice_probs(logits, cols, temperature, weights)
    return {"top1": topk_accuracy(probs, labels), "nll": nll_metric(probs, labels)}


def correct_and_nll(probs: Tensor, labels: Tensor) -> Tensor:
    """``(N, 2)``: each image's top-1 correctness (0/1) and NLL.

    Example:
        >>> import torch
        >>> correct_and_nll(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 0])).round(decimals=3)
        tensor([[1.0000, 0.1050],
                [0.0000, 1.6090]], dtype=torch.float64)
    """
    p = probs.gather(1, labels[:, None])[:, 0].double()
    return torch.stack([(probs.argmax(-1) == labels).double(), -p.clamp_min(1e-12).log()], 1)


def kfold_estimate(
    logits: Tensor, labels: Tensor, budget: int, objective: str = "nll", folds: int = 5, seed: int = 0,
    learn: bool = False, per_image: bool = False,
) -> dict[str, Any]:
    """Held-out estimate of the search: search on k-1 folds, score on the held-out one.

    With fewer photos than ``folds`` it falls back to one photo per fold (leave-one-out) and
    says so under ``note``.

    Returns:
        Mean held-out top-1 and NLL of the searched policy and of the plain view (column 0,
        with its own calibrated temperature), the folds used, and the policy size chosen in
        each fold. With ``per_image``, also ``per_image``: an ``(N, 4)`` tensor of every
        photo's held-out top-1 correctness and NLL under the searched policy, then under plain
        (for paired intervals: :func:`~ttakit.evaluation.stats.compare`).

    Raises:
        ConfigError: fewer than 2 folds, or fewer than 2 photos (each fold holds one out).

    Example:
        >>> labels = torch.tensor([0, 1, 1])
        >>> logits = torch.nn.functional.one_hot(labels, 2).float()[:, None]  # (3, 1, 2)
        >>> kfold_estimate(logits, labels, budget=1, folds=5)["note"]
        '5 folds need at least 5 photos; used 3 folds of one photo each'
    """
    N = len(labels)
    if folds < 2 or N < 2:
        raise ConfigError(f"a {folds}-fold held-out estimate needs at least 2 folds and 2 labelled photos "
                          f"(k folds need k photos, one held out per fold); got {N} photo{'s' * (N != 1)}: "
                          "add photos, or search on separate selection data (`val`)")
    k = min(folds, N)
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(seed))
    parts = torch.tensor_split(perm, k)  # k folds, none empty (chunk() may give fewer)
    tta_top1 = tta_nll = plain_top1 = plain_nll = 0.0
    sizes = []
    rows = torch.zeros(N, 4, dtype=torch.float64)  # held-out (correct, nll) of the policy, then of plain
    for i, held in enumerate(parts):
        train = torch.cat([p for j, p in enumerate(parts) if j != i])
        res = greedy_search(logits[train], labels[train], budget, objective)
        cols, t, w = list(res.cols), res.temperature, None
        if learn:
            w, t = learn_weights(logits[train], labels[train], cols)
            cols = list(dict.fromkeys(cols))
        plain_t = calibrated_temperature(logits[train][:, 0], labels[train])
        a = evaluate_choice(logits[held], labels[held], cols, t, w)
        b = evaluate_choice(logits[held], labels[held], [0], plain_t)
        if per_image:
            rows[held] = torch.cat([correct_and_nll(choice_probs(logits[held], c, tt, ww), labels[held])
                                    for c, tt, ww in ((cols, t, w), ([0], plain_t, None))], 1)
        n = len(held) / N
        tta_top1 += a["top1"] * n
        tta_nll += a["nll"] * n
        plain_top1 += b["top1"] * n
        plain_nll += b["nll"] * n
        sizes.append(len(cols))
    out = {"folds": k, "top1": tta_top1, "nll": tta_nll, "plain_top1": plain_top1, "plain_nll": plain_nll,
           "views_per_fold": sizes}
    if k < folds:
        out["note"] = f"{folds} folds need at least {folds} photos; used {k} folds of one photo each"
    return {**out, "per_image": rows} if per_image else out


def pick_adaptive_threshold(plain_logits: Tensor, n_other_views: int, target_fraction: float,
                            confidence: str = "max_prob") -> float:
    """The largest confidence threshold whose adaptive TTA spends at most ``target_fraction``
    of full TTA's view-forwards on these images (the cost is
    :func:`~ttakit.tasks.classify.adaptive_cost`: the plain forward for all, the
    ``n_other_views`` other views for images below the threshold).

    Example:
        >>> logits = torch.tensor([[3.0, 0.0], [1.0, 0.0], [0.2, 0.0], [5.0, 0.0]])
        >>> t = pick_adaptive_threshold(logits, 1, 0.75)   # 2 images of 4 may get the other view
        >>> (torch.softmax(logits, -1).max(-1).values < t).sum().item()
        2
    """
    N = plain_logits.shape[0]
    if n_other_views <= 0:
        return 1.01
    conf = get_confidence(confidence)(plain_logits).sort().values  # ascending
    full = N * (n_other_views + 1)
    ks = torch.arange(N + 1)
    affordable = ks[adaptive_cost(N, ks, n_other_views) <= target_fraction * full]  # type: ignore[operator]
    allowed = int(affordable.max()) if len(affordable) else 0
    if allowed <= 0:
        return 0.0
    if allowed >= N:
        return 1.01
    # Uncertain means conf < threshold: exactly the `allowed` least confident images.
    return float(conf[allowed])


@dataclass(frozen=True)
class SearchOptions:
    """How :func:`search_policy` chooses a policy.

    Attributes:
        budget: maximum number of views (>= 1).
        objective: ``nll`` (calibrated NLL), ``top1``, or ``set_size`` (mean conformal set
            size at ``1 - conformal`` coverage; see :func:`~ttakit.evaluation.conformal.set_size_policy`).
        folds: k of the k-fold held-out estimate when there is no separate selection data.
        learn_weights: also fit per-view weights and a temperature; kept only where they
            lower the NLL on the selection data.
        target_cost: pick an adaptive threshold spending at most this share of view-forwards.
        name: the policy's name in reports.
        conformal: alpha of the ``set_size`` objective (sets cover ``1 - conformal``).
        conformal_score: the sets' non-conformity score (``thr``, ``aps``, ...).
    """

    budget: int = 5
    objective: str = "nll"
    folds: int = 5
    learn_weights: bool = False
    target_cost: float | None = None
    name: str = "searched"
    conformal: float | None = None
    conformal_score: str = "thr"

    def __post_init__(self) -> None:
        if self.budget < 1:
            raise ConfigError(f"budget must be at least 1 view, got {self.budget}")
        if self.objective not in ("nll", "top1", "set_size"):
            raise ConfigError(f"objective must be nll, top1 or set_size, got {self.objective!r}")
        if (self.objective == "set_size") != (self.conformal is not None):
            raise ConfigError("the set_size objective and a conformal alpha go together "
                              "(`objective='set_size'` with `conformal=0.1`)")
        if self.objective == "set_size" and self.target_cost is not None:
            raise ConfigError("target_cost is for the nll and top1 objectives, not set_size")
        if self.folds < 2:
            raise ConfigError(f"folds must be at least 2, got {self.folds}")
        if self.target_cost is not None and not 0 < self.target_cost <= 1:
            raise ConfigError(f"target_cost must be in (0, 1], got {self.target_cost}")


def search_policy(
    pool: Policy,
    logits: Tensor,
    labels: Tensor,
    options: SearchOptions = SearchOptions(),
    selection: tuple[Tensor, Tensor] | None = None,
    provenance: dict[str, Any] | None = None,
) -> Policy:
    """Choose a policy from ``pool`` on stored logits.

    Args:
        pool: the candidate views; ``logits`` holds one column per pool view, in order.
        logits: ``(N, U, C)`` per-view logits of the data (column 0 the plain view).
        labels: ``(N,)`` labels.
        options: budget, objective, folds, learned weights, adaptive target.
        selection: separate selection data ``(logits, labels)``; the search runs there and
            ``logits`` is the held-out set. Without it the search runs on ``logits`` and the
            held-out estimate is k-fold.
        provenance: extra entries for ``meta`` (data paths, pool text, ...).

    Returns:
        The policy (views, weights, mean merge, temperature) with ``meta`` recording how it
        was chosen: selection and plain metrics, the search trace, the held-out or k-fold
        estimate, and the adaptive threshold if asked.

    Example:
        >>> pool = Policy((View(), View((HFlip(),))))
        >>> labels = torch.tensor([0, 1, 1, 0])
        >>> logits = torch.nn.functional.one_hot(labels, 2).float()[:, None].repeat(1, 2, 1)
        >>> search_policy(pool, logits, labels, SearchOptions(budget=2, folds=2)).view_names
        ['identity']
    """
    sel_logits, sel_labels = selection if selection is not None else (logits, labels)
    if options.objective == "set_size":  # chosen on part of the selection data, calibrated on the rest
        conformal = ConformalOptions(alpha=options.conformal, score=options.conformal_score)  # type: ignore[arg-type]
        return set_size_policy(pool, sel_logits, sel_labels, conformal, options.budget,
                               learn_weights if options.learn_weights else None,
                               (logits, labels) if selection is not None else None, options.name, provenance)
    res = greedy_search(sel_logits, sel_labels, options.budget, options.objective)
    cols, temperature, weights = list(res.cols), res.temperature, None
    how = f"greedy policy search ({options.objective}, budget {options.budget})"
    if options.learn_weights:
        distinct = list(dict.fromkeys(cols))
        w, t = learn_weights(sel_logits, sel_labels, cols)
        learned = evaluate_choice(sel_logits, sel_labels, distinct, t, w)
        greedy = evaluate_choice(sel_logits, sel_labels, cols, temperature)
        if learned["nll"] <= greedy["nll"]:  # keep the weights only where they help on selection data
            cols, weights, temperature = distinct, w, t
            how += " + learned weights"
    chosen = evaluate_choice(sel_logits, sel_labels, cols, temperature, weights)
    # Plain at its own calibrated temperature: the fair baseline for a calibrated NLL.
    plain_t = calibrated_temperature(sel_logits[:, 0], sel_labels)
    plain = evaluate_choice(sel_logits, sel_labels, [0], plain_t)
    meta: dict[str, Any] = {
        **(provenance or {}), "how": how,
        "selection_top1": chosen["top1"], "selection_nll": chosen["nll"],
        "plain_top1": plain["top1"], "plain_nll": plain["nll"],
        "trace": [{"view": pool.views[c].name, "objective": v} for c, v in zip(res.cols, res.trace)],
    }
    if selection is not None:
        meta["heldout"] = {**evaluate_choice(logits, labels, cols, temperature, weights),
                           "plain": evaluate_choice(logits, labels, [0], plain_t)}
    else:
        meta["kfold"] = kfold_estimate(logits, labels, options.budget, options.objective, options.folds,
                                       learn=options.learn_weights)
    views = tuple(pool.views[c] for c in cols)
    if options.target_cost is not None:
        others = sum(not v.is_identity for v in views)
        meta["adaptive"] = pick_adaptive_threshold(sel_logits[:, 0], others, options.target_cost)
        meta["adaptive_target_cost"] = options.target_cost
    return Policy(views, weights=weights, merge="mean", temperature=temperature, name=options.name, meta=meta)
