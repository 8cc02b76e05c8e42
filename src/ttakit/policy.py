"""Policies: ordered lists of views with their merge settings, made from presets, text, JSON files or code.

The text language is in :mod:`ttakit.policy_text`, the presets in :mod:`ttakit.presets`; both
are re-exported here.

Policy JSON
-----------
``{"views": ["identity", "hflip", "hflip|scale=0.9"], "merge": "mean", "weights": [...],
"temperature": 1.0, "meta": {...}}``; only ``views`` is required. :func:`save_policy` writes it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from .errors import PolicyError
from .policy_text import parse_policy, parse_view, product, union
from .presets import PRESETS, Preset, default_pool, larger_size, list_presets, register_preset
from .transforms import Transform
from .views import View

__all__ = [
    "PRESETS",
    "Policy",
    "PolicyLike",
    "Preset",
    "create_policy",
    "default_pool",
    "larger_size",
    "list_presets",
    "load_policy",
    "parse_policy",
    "parse_view",
    "product",
    "register_preset",
    "save_policy",
    "union",
]


@dataclass(frozen=True)
class Policy:
    """An ordered list of views, with optional merge settings chosen for it.

    Attributes:
        views: the views, run in this order; the identity view is ``View()``.
        weights: one non-negative weight per view for the merge (``None``: equal weights).
        merge: merge mode preferred by this policy (``None``: the caller's choice).
        temperature: logits are divided by it before merging (fitted by ``search``).
        name: the text the user wrote for it, used in reports.
        meta: free-form provenance (how ``search`` chose it, ...); not compared.
    """

    views: tuple[View, ...]
    weights: tuple[float, ...] | None = None
    merge: str | None = None
    temperature: float = 1.0
    name: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not self.views:
            raise PolicyError("a policy needs at least one view")
        if self.weights is not None:
            if len(self.weights) != len(self.views):
                raise PolicyError(f"policy has {len(self.views)} views but {len(self.weights)} weights")
            if not all(isinstance(w, (int, float)) and math.isfinite(w) and w >= 0 for w in self.weights) \
                    or sum(self.weights) <= 0:
                raise PolicyError(f"policy weights must be finite, non-negative numbers with a positive sum, "
                                  f"got {list(self.weights)}")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature > 0):
            raise PolicyError(f"temperature must be a finite number > 0, got {self.temperature}")
        if not self.name:
            object.__setattr__(self, "name", "+".join(v.name for v in self.views))

    def __len__(self) -> int:
        return len(self.views)

    @property
    def view_names(self) -> list[str]:
        return [v.name for v in self.views]

    @property
    def is_identity(self) -> bool:
        return all(v.is_identity for v in self.views)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"views": self.view_names}
        if self.merge is not None:
            d["merge"] = self.merge
        if self.weights is not None:
            d["weights"] = list(self.weights)
        if self.temperature != 1.0:
            d["temperature"] = self.temperature
        if self.meta:
            d["meta"] = dict(self.meta)
        return d


PolicyLike = Union[str, Path, Policy, View, Sequence[View]]


# --------------------------------------------------------------------------- JSON & factory
def _policy_from_dict(d: Mapping[str, Any], source: str) -> Policy:
    if not isinstance(d, Mapping) or "views" not in d:
        raise PolicyError(f"{source}: a policy JSON is an object with a 'views' list")
    views: list[View] = []
    for item in d["views"]:
        if not isinstance(item, str):
            raise PolicyError(f"{source}: each view is a name such as 'hflip|scale=0.9', got {item!r}")
        views.append(parse_view(item))  # duplicates kept: a chosen policy may repeat a view
    weights, temperature = d.get("weights"), d.get("temperature", 1.0)
    try:
        weights = None if weights is None else tuple(float(w) for w in weights)
        temperature = float(temperature)
    except (TypeError, ValueError) as e:
        raise PolicyError(f"{source}: weights must be a list of numbers and temperature a number, "
                          f"got {d.get('weights')!r} and {d.get('temperature')!r}") from e
    return Policy(
        views=tuple(views),
        weights=weights,
        merge=d.get("merge"),
        temperature=temperature,
        name=str(d.get("name", "")) or Path(source).stem,
        meta=dict(d.get("meta", {})),
    )


def load_policy(path: str | Path) -> Policy:
    """Read a policy JSON file (see the module docstring)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except OSError as e:
        raise PolicyError(f"{p}: cannot read policy file ({e.strerror or e})") from e
    except json.JSONDecodeError as e:
        raise PolicyError(f"{p}: not valid JSON ({e.msg} at line {e.lineno})") from e
    return _policy_from_dict(data, str(p))


def save_policy(policy: Policy, path: str | Path) -> Path:
    """Write ``policy`` as JSON that :func:`load_policy` and :func:`create_policy` read back."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"name": policy.name, **policy.to_dict()}, indent=2) + "\n")
    return p


def create_policy(spec: PolicyLike, data_config: Mapping[str, Any] | None = None) -> Policy:
    """Resolve anything that names a policy: a preset name, policy text, a path to a JSON
    file, a :class:`Policy`, a :class:`View` or a sequence of views. A bare preset name brings
    its merge (``tutorial`` sums logits). ``data_config`` is the model's timm data config, needed
    by presets whose sizes follow the model.

    Example:
        >>> create_policy("hflip").view_names
        ['identity', 'hflip']
    """
    if isinstance(spec, Policy):
        return spec
    if isinstance(spec, View):
        return Policy((spec,))
    if isinstance(spec, Path) or (isinstance(spec, str) and spec.lower().endswith(".json")):
        return load_policy(spec)
    if isinstance(spec, str):
        preset = PRESETS.get(spec.strip()) if spec.strip() in PRESETS else None
        return Policy(parse_policy(spec, data_config), merge=preset.merge if preset else None, name=spec.strip())
    if isinstance(spec, Sequence) and all(isinstance(v, View) for v in spec):
        return Policy(tuple(spec))
    if isinstance(spec, Sequence) and all(isinstance(v, Transform) for v in spec):
        return Policy((View(tuple(spec)),))
    raise PolicyError(f"cannot make a policy from {type(spec).__name__}; pass a preset name, text, JSON path or views")
