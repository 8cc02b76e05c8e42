"""Model soups: averaged weights of several fine-tuned models of one architecture.

After Wortsman et al., "Model soups: averaging weights of multiple fine-tuned models improves
accuracy without increasing inference time" (ICML 2022). The uniform soup averages every
ingredient; the greedy soup sorts ingredients by held-out accuracy and adds each one only if
the running soup's held-out accuracy does not drop. A soup is an ordinary state dict: evaluate
it, with or without TTA, like any other weights (``--weights soup.safetensors``).

Ingredients are loaded one at a time and summed into a running float64 sum, so memory holds
the sum and one ingredient, not all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .errors import WeightsError
from .models import load_state_dict

__all__ = ["SoupResult", "StateSum", "accuracy_scorer", "finetune_head", "greedy_soup", "save_state_dict", "uniform_soup"]

StateLike = Mapping[str, Tensor] | str | Path


def _load(item: StateLike, i: int) -> tuple[Mapping[str, Tensor], str]:
    if isinstance(item, (str, Path)):
        return load_state_dict(item), str(item)
    return item, f"ingredient {i}"


class StateSum:
    """Running sum of state dicts with the checks a soup needs.

    Floating tensors are summed in float64 and averaged; integer tensors (BatchNorm's
    ``num_batches_tracked``, index buffers) are not averaged: they must be equal across
    ingredients, except counters named ``num_batches_tracked``, where the largest is kept.
    """

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.ref: dict[str, tuple[torch.Size, torch.dtype]] = {}
        self.count = 0
        self.first_name = ""

    def check(self, state: Mapping[str, Tensor], name: str) -> None:
        """Raise :class:`WeightsError` naming the first key that does not match the first
        ingredient (missing, extra, other shape or other kind of dtype)."""
        if not self.ref:  # the first ingredient is the reference
            self.ref = {k: (v.shape, v.dtype) for k, v in state.items()}
            self.first_name = name
            return
        for k in self.ref:
            if k not in state:
                raise WeightsError(f"{name}: key {k!r} is missing (present in {self.first_name})")
        for k, v in state.items():
            if k not in self.ref:
                raise WeightsError(f"{name}: unexpected key {k!r} (not in {self.first_name})")
            shape, dtype = self.ref[k]
            if v.shape != shape:
                raise WeightsError(f"{name}: {k!r} has shape {tuple(v.shape)}, {self.first_name} has {tuple(shape)}")
            if v.is_floating_point() != dtype.is_floating_point:
                raise WeightsError(f"{name}: {k!r} is {v.dtype}, {self.first_name} has {dtype}")

    def add(self, state: Mapping[str, Tensor], name: str = "") -> None:
        self.check(state, name)
        for k, v in state.items():
            v = v.detach().cpu()
            if v.is_floating_point():
                self.sums[k] = self.sums[k] + v.double() if k in self.sums else v.double().clone()
            elif k not in self.sums:
                self.sums[k] = v.clone()
            elif k.endswith("num_batches_tracked"):
                self.sums[k] = torch.maximum(self.sums[k], v)
            elif not torch.equal(self.sums[k], v):
                raise WeightsError(f"{name}: integer tensor {k!r} differs from {self.first_name}; it cannot be averaged")
        self.count += 1

    def mean(self, extra: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """The average (of the sum plus ``extra`` if given, without changing the sum), in
        each tensor's original dtype."""
        n = self.count + (extra is not None)
        if n == 0:
            raise WeightsError("a soup needs at least one ingredient")
        out = {}
        for k, s in self.sums.items():
            dtype = self.ref[k][1]
            if s.is_floating_point():
                total = s + extra[k].double() if extra is not None else s
                out[k] = (total / n).to(dtype)
            elif extra is not None and k.endswith("num_batches_tracked"):
                out[k] = torch.maximum(s, extra[k])
            else:
                out[k] = s.clone()
        return out


def uniform_soup(state_dicts: Iterable[StateLike]) -> dict[str, Tensor]:
    """Average state dicts (or files, loaded one at a time).

    Example:
        >>> a, b = {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, 6.0])}
        >>> uniform_soup([a, b])          # paths to .pth/.safetensors files work too
        {'w': tensor([2., 4.])}
    """
    acc = StateSum()
    for i, item in enumerate(state_dicts):
        state, name = _load(item, i)
        acc.add(state, name)
    return acc.mean()


@dataclass(frozen=True)
class SoupResult:
    """What :func:`greedy_soup` chose.

    Attributes:
        state_dict: the soup.
        chosen: indices of the ingredients in the soup, in the order added.
        scores: held-out score of each ingredient alone.
        soup_score: held-out score of the soup.
        order: ingredient indices sorted by score, best first.
    """

    state_dict: dict[str, Tensor]
    chosen: tuple[int, ...]
    scores: tuple[float, ...]
    soup_score: float
    order: tuple[int, ...]


def greedy_soup(ingredients: Sequence[StateLike], score: Callable[[Mapping[str, Tensor]], float]) -> SoupResult:
    """Greedy soup: ingredients sorted by ``score`` (held-out accuracy, higher is better),
    each added only if the soup's score does not drop.

    Args:
        ingredients: state dicts or weight files (each loaded when needed).
        score: held-out score of a state dict.
    """
    if not ingredients:
        raise WeightsError("a soup needs at least one ingredient")
    scores = []
    acc = StateSum()  # only checks here
    for i, item in enumerate(ingredients):  # score alone, checking compatibility on the way
        state, name = _load(item, i)
        acc.check(state, name)
        scores.append(float(score(state)))
    order = sorted(range(len(ingredients)), key=lambda i: -scores[i])
    soup = StateSum()
    best = order[0]
    soup.add(*_load(ingredients[best], best))
    current, chosen = scores[best], [best]
    for i in order[1:]:
        state, name = _load(ingredients[i], i)
        candidate = soup.mean(extra=state)
        s = float(score(candidate))
        if s >= current:
            soup.add(state, name)
            current = s
            chosen.append(i)
    return SoupResult(soup.mean(), tuple(chosen), tuple(scores), current, tuple(order))


def save_state_dict(state: Mapping[str, Tensor], path: str | Path, metadata: Mapping[str, str] | None = None) -> Path:
    """Write a state dict as safetensors (the format ``--weights`` reads back)."""
    from safetensors.torch import save_file

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(p), metadata=dict(metadata or {}))
    return p


def accuracy_scorer(model: torch.nn.Module, images: Tensor, labels: Tensor, batch: int = 64) -> Callable[[Mapping[str, Tensor]], float]:
    """A ``score`` for :func:`greedy_soup`: top-1 accuracy of ``model`` with the given
    weights on pre-decoded held-out ``images`` ``(N, C, H, W)``."""

    @torch.inference_mode()
    def score(state: Mapping[str, Tensor]) -> float:
        model.load_state_dict(state, strict=True)
        model.eval()
        right = 0
        for i in range(0, len(images), batch):
            right += int((model(images[i : i + batch]).argmax(-1) == labels[i : i + batch]).sum())
        return right / max(len(images), 1)

    return score


def finetune_head(
    model: torch.nn.Module,
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    *,
    lr: float = 0.05,
    seed: int = 0,
    epochs: int = 30,
    batch: int = 32,
) -> dict[str, Tensor]:
    """Fine-tune a new classifier on frozen features of a timm model: a quick way to make soup
    ingredients (several seeds or learning rates from the same zero-initialised head).

    The backbone runs once; the head trains with SGD on cached pooled features. Returns the
    full state dict of ``model`` with the new ``num_classes`` head (``model`` is not changed).

    Example:
        >>> net = timm.create_model("test_resnet", num_classes=10).eval()
        >>> x, y = torch.randn(8, 3, 32, 32), torch.tensor([0, 1, 2, 3] * 2)
        >>> states = [finetune_head(net, x, y, 4, seed=s, epochs=2) for s in range(2)]
        >>> uniform_soup(states)["fc.weight"].shape   # a 4-class head
        torch.Size([4, 96])
    """
    import copy

    with torch.inference_mode():
        feats = torch.cat([model.forward_head(model.forward_features(images[i : i + 64]), pre_logits=True)
                           for i in range(0, len(images), 64)]).clone()  # (N, D)
    net = copy.deepcopy(model)
    net.reset_classifier(num_classes)
    head = net.get_classifier()
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    with torch.enable_grad():
        for _ in range(epochs):
            perm = torch.randperm(len(feats), generator=g)
            for i in range(0, len(feats), batch):
                idx = perm[i : i + batch]
                loss = torch.nn.functional.cross_entropy(head(feats[idx]), labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}
