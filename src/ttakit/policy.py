"""Policies: ordered lists of views, built from presets, text, JSON files or code.

Policy text
-----------
A small expression language, the same on the command line and in Python::

    hflip                      identity + horizontal flip            (2 views)
    hflip*scale(0.9,1,1.1)     Cartesian product, left applied first  (6 views)
    d4 + scale(1.1)            union of two policies (duplicates dropped)
    rot90(1,3)                 one view per value (0 would add the identity)
    hflip|scale=0.9            a single view, written as its name
    (hflip+vflip)*resize(288)  parentheses group
    hflip*input(224:1.0,256:1.0)  input stages: views re-sampled from the source photo (4 views)

* ``NAME(v1, v2, ...)`` is a *family*: one view per value, each value written as after ``=``
  in a view name; a value meaning "no change" (``scale(1)``, ``rot90(0)``, ``hflip(0)``) gives
  the identity view. ``hflip`` and ``vflip`` without values mean ``(0, 1)``, ``rot90`` means
  ``(0, 1, 2, 3)``.
* ``NAME=VALUE`` is one transform, one view; ``|`` chains transforms into one view (a bare
  name next to ``|`` is one transform: ``input=288:1.0|hflip`` is one mirrored view).
* ``input=SIZE:CROP_PCT[:POS]`` is an *input stage*: the source photo's short side resized to
  ``SIZE / CROP_PCT`` with the model's interpolation, then a ``SIZE`` square cut at POS (centre
  by default); ``input=256:1.0`` is the whole centre square at 256 px. It always runs first,
  wherever it is written, and needs photos, not preprocessed tensors.
* ``A*B`` applies every view of A, then every view of B (ttach's ``Compose``).
* ``A+B`` keeps the views of A, then those of B not already present.
* A bare preset name (``none``, ``hflip``, ``vflip``, ``flip``, ``d4``, ``five_crop``,
  ``ten_crop``, ``multiscale``, ``tutorial``, ``fixres``, ``search_pool``) stands for its
  policy; see :func:`list_presets`. ``fixres`` and ``search_pool`` follow the model's size.
* Families for crops: ``five_crop(SIZE)``, ``ten_crop(SIZE)`` and ``center_crop(SIZE)``,
  where SIZE is pixels (``192``, ``192x160``) or a fraction with a decimal point (``0.875``).

Transform values: ``rot90`` quarter turns; ``rotate`` degrees; ``scale`` zoom factor at the same
size; ``resize`` a size (``288``) or a factor (``1.25``); ``crop`` ``POS:SIZE`` with POS one of
center, tl, tr, bl, br; ``shift`` ``DX:DY`` pixels; ``brightness`` and ``contrast`` factors.

Policy JSON
-----------
``{"views": ["identity", "hflip", "hflip|scale=0.9"], "merge": "mean", "weights": [...],
"temperature": 1.0, "meta": {...}}``; only ``views`` is required. :func:`save_policy` writes it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from .errors import PolicyError
from .transforms import Crop, HFlip, Input, Transform, View, parse_transform

__all__ = [
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
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise PolicyError("policy weights must be non-negative with a positive sum")
        if not self.temperature > 0:
            raise PolicyError(f"temperature must be positive, got {self.temperature}")
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

# --------------------------------------------------------------------------- combinators


def _dedupe(views: Iterable[View]) -> tuple[View, ...]:
    seen: dict[str, View] = {}
    for v in views:
        seen.setdefault(v.name, v)
    return tuple(seen.values())


def product(*parts: Sequence[View]) -> tuple[View, ...]:
    """Cartesian product: every view of the first part followed by every view of the next."""
    out: tuple[View, ...] = (View(),)
    for part in parts:
        out = tuple(a.then(b) for a in out for b in part)
    return out


def union(*parts: Sequence[View]) -> tuple[View, ...]:
    """Concatenation without repeated views (first occurrence kept)."""
    return _dedupe(v for part in parts for v in part)


# --------------------------------------------------------------------------- families & presets
def _one_view(key: str, value: str | None) -> View:
    """The view of one ``key=value`` (an input stage or a transform; ``None``: no value)."""
    if key == Input.key:
        if value is None:
            raise PolicyError("input needs a value, e.g. input=256:1.0 (SIZE:CROP_PCT[:POSITION])")
        return View(source=Input.from_arg(value))
    t = parse_transform(key, value)
    return View(() if t is None else (t,))


def _family(key: str, values: Sequence[str]) -> tuple[View, ...]:
    return tuple(_one_view(key, value) for value in values)


def _crop_family(positions: Sequence[str]) -> Callable[[Sequence[str]], tuple[View, ...]]:
    def build(values: Sequence[str]) -> tuple[View, ...]:
        if len(values) != 1:
            raise PolicyError(f"crop families take one size, e.g. five_crop(192); got {len(values)} values")
        return tuple(View((Crop.from_arg(f"{p}:{values[0]}"),)) for p in positions)

    return build


_FIVE = ("center", "tl", "tr", "bl", "br")
_FAMILIES: dict[str, Callable[[Sequence[str]], tuple[View, ...]]] = {
    "five_crop": _crop_family(_FIVE),
    "ten_crop": lambda v: product((View(), View((HFlip(),))), _crop_family(_FIVE)(v)),
    "center_crop": _crop_family(("center",)),
}
# A bare family name without values (presets of the same name are looked up first).
_FAMILY_DEFAULTS: dict[str, tuple[str, ...]] = {"rot90": ("0", "1", "2", "3")}

# A preset is policy text, or a function of the model's timm data config returning text (for
# views whose sizes follow the model's input size); it may also name the merge it was made for.
PresetText = Union[str, Callable[[Mapping[str, Any]], str]]


@dataclass(frozen=True)
class Preset:
    """A named policy.

    Attributes:
        text: policy text, or a function of the model's data config returning it.
        description: one line for ``--help`` and the README.
        merge: the merge this preset was made for (``None``: the caller's).
    """

    text: PresetText
    description: str = ""
    merge: str | None = None

    def resolve(self, name: str, data_config: Mapping[str, Any] | None) -> str:
        if isinstance(self.text, str):
            return self.text
        if data_config is None:
            raise PolicyError(f"preset {name!r} depends on the model's input size; give the model's data config "
                              "(ClassificationTTA and the command line do)")
        return self.text(data_config)


_PRESETS: dict[str, Preset] = {}


def register_preset(name: str, text: PresetText, description: str = "", merge: str | None = None) -> None:
    """Register ``name`` as a preset for the policy ``text`` (usable in any policy text).

    Example:
        >>> register_preset("flip_zoom", "hflip*scale(1,1.15)", "flips at two zooms")
        >>> len(parse_policy("flip_zoom"))
        4
        >>> del _PRESETS["flip_zoom"]
    """
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise PolicyError(f"preset names are lower-case identifiers, got {name!r}")
    _PRESETS[name] = Preset(text, description, merge)


def list_presets() -> dict[str, str]:
    """Preset names with the policy text each stands for (model-dependent ones described)."""
    return {k: v.text if isinstance(v.text, str) else f"<{v.description}>" for k, v in _PRESETS.items()}


def model_size(data_config: Mapping[str, Any]) -> int:
    """The model's square input side (the short side for a non-square input)."""
    return int(min(data_config["input_size"][-2:]))


def larger_size(data_config: Mapping[str, Any], factor: float = 1.15) -> int:
    """A larger test size for the model: timm's ``test_input_size`` where the model has one,
    else about ``factor`` times its input size, rounded to a multiple of 32."""
    test = data_config.get("test_input_size")
    size = model_size(data_config)
    if test is not None and min(test[-2:]) > size:
        return int(min(test[-2:]))
    return max(size + 32, int(round(size * factor / 32)) * 32)


def default_pool(data_config: Mapping[str, Any]) -> str:
    """The default candidate views of ``ttakit search``: the plain input and its mirror; input
    stages re-sampled from the source photo (the whole image, crop fractions 0.8-0.9, larger
    sizes up to ~1.4x the model's, the four corner crops) and their mirrors; a zoom and the
    brightness/contrast changes that help on dark or flat photos. Rotations and shifts are left
    out: on ImageNet photos they lower accuracy (see README), and each costs a forward.

    Example:
        >>> len(parse_policy(default_pool({"input_size": (3, 224, 224)})))
        25
    """
    s = model_size(data_config)
    big = [int(round(s * f / 32)) * 32 for f in (1.15, 1.3, 1.43)]  # 256, 288, 320 for 224
    inputs = [f"input={s}:{c}" for c in (0.8, 0.9, 1.0)] + [f"input={b}:1.0" for b in big]
    corners = [f"input={s}:0.875:{p}" for p in ("tl", "tr", "bl", "br")]
    stages = " + ".join(inputs + corners)
    return f"identity + hflip=1 + ({stages})*hflip(0,1) + scale=1.1 + brightness=1.2 + contrast=1.2"


def _fixres(data_config: Mapping[str, Any]) -> str:
    return f"identity + input={larger_size(data_config)}:1.0"


register_preset("none", "identity", "the plain model (1 view)")
register_preset("hflip", "hflip(0,1)", "identity and horizontal flip (2 views)")
register_preset("vflip", "vflip(0,1)", "identity and vertical flip (2 views)")
register_preset("flip", "hflip(0,1)*vflip(0,1)", "both flips, as ttach's flip_transform (4 views)")
register_preset("d4", "hflip(0,1)*rot90(0,1,2,3)", "dihedral group: flips x quarter turns (8 views)")
register_preset("five_crop", "five_crop(0.875)", "centre and four corner crops (5 views)")
register_preset("ten_crop", "ten_crop(0.875)", "five crops and their mirror images (10 views)")
register_preset("multiscale", "resize(0.875,1.0,1.125)", "three input resolutions of the plain input (3 views)")
register_preset("tutorial", "identity + input=256:1.0",
                "the timm TTA tutorial: the plain input and Resize(256)+CenterCrop(256) of the photo, logits summed",
                merge="sum")
register_preset("fixres", _fixres, "plain input + the whole centre square at a larger size (FixRes, 2 views)")
register_preset("search_pool", default_pool, "the default candidate views of ttakit search")


# --------------------------------------------------------------------------- parser
_TOKEN = re.compile(r"\s*(?:(?P<op>[()*+|,])|(?P<word>[^\s()*+|,]+))")
_OPS = frozenset("()*+|,")


def _tokenize(text: str) -> list[str]:
    tokens, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            if text[pos:].strip() == "":
                break
            raise PolicyError(f"cannot read policy text {text!r} at position {pos}")
        tokens.append(m.group("op") or m.group("word"))
        pos = m.end()
    return tokens


class _Parser:
    """Recursive-descent parser: expr := term ('+' term)*; term := atom (('*'|'|') atom)*;
    atom := '(' expr ')' | NAME | NAME '(' values ')' | NAME '=' VALUE."""

    def __init__(self, text: str, depth: int = 0, data_config: Mapping[str, Any] | None = None) -> None:
        self.text, self.tokens, self.i, self.depth = text, _tokenize(text), 0, depth
        self.data_config = data_config
        if depth > 8:
            raise PolicyError("presets nest too deeply (a preset that names itself?)")

    def error(self, msg: str) -> PolicyError:
        return PolicyError(f"malformed policy {self.text!r}: {msg}")

    def peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, what: str = "more") -> str:
        """Consume the next token, whatever it is (``what`` describes it for errors)."""
        tok = self.peek()
        if tok is None:
            raise self.error(f"expected {what} at the end")
        self.i += 1
        return tok

    def expect(self, token: str) -> None:
        """Consume the next token, which must be ``token``."""
        tok = self.take(repr(token))
        if tok != token:
            raise self.error(f"expected {token!r}, found {tok!r}")

    def parse(self) -> tuple[View, ...]:
        if not self.tokens:
            raise self.error("empty")
        views = self.expr()
        if self.peek() is not None:
            raise self.error(f"unexpected {self.peek()!r}")
        return views

    def expr(self) -> tuple[View, ...]:
        parts = [self.term()]
        while self.peek() == "+":
            self.i += 1
            parts.append(self.term())
        return union(*parts) if len(parts) > 1 else parts[0]

    def term(self) -> tuple[View, ...]:
        parts = [self.atom()]
        while self.peek() in ("*", "|"):
            self.i += 1
            parts.append(self.atom())
        return product(*parts)

    def atom(self) -> tuple[View, ...]:
        tok = self.take("a view, preset or '('")
        if tok == "(":
            views = self.expr()
            self.expect(")")
            return views
        if tok in _OPS:
            raise self.error(f"unexpected {tok!r}")
        key, eq, value = tok.partition("=")
        chained = self.peek() == "|" or (self.i >= 2 and self.tokens[self.i - 2] == "|")
        if eq or (chained and self.peek() != "(" and key not in ("identity",)):
            # `a|b` chains single transforms: a bare `hflip` there is the flip, not the preset.
            return (_one_view(key, value if eq else None),)
        if self.peek() == "(":
            return self.family(key, self.values())
        if key == "identity":
            return (View(),)
        if key in _PRESETS:
            return _Parser(_PRESETS[key].resolve(key, self.data_config), self.depth + 1, self.data_config).parse()
        if key in _FAMILY_DEFAULTS:
            return self.family(key, _FAMILY_DEFAULTS[key])
        raise PolicyError(f"unknown preset or transform {key!r}; presets: {', '.join(_PRESETS)}")

    def values(self) -> list[str]:
        self.expect("(")
        values = []
        while True:
            tok = self.take("a value or ')'")
            if tok in _OPS:
                raise self.error(f"expected a value, found {tok!r}")
            values.append(tok)
            sep = self.take("',' or ')'")
            if sep == ")":
                return values
            if sep != ",":
                raise self.error(f"expected ',' or ')', found {sep!r}")

    def family(self, key: str, values: Sequence[str]) -> tuple[View, ...]:
        if key in _FAMILIES:
            return _FAMILIES[key](values)
        return _family(key, values)


def parse_view(name: str) -> View:
    """Read one view back from its name (``identity``, ``hflip``, ``hflip|scale=0.9``): each
    ``|``-separated part is one transform, ``key`` or ``key=value``, never a preset.

    Example:
        >>> parse_view("hflip|scale=0.9").transforms
        (HFlip(), Scale(factor=0.9))
    """
    name = name.strip()
    if name == "identity":
        return View()
    view = View()
    for part in name.split("|"):
        key, eq, value = part.strip().partition("=")
        view = view.then(_one_view(key, value if eq else None))
    return view


def parse_policy(text: str, data_config: Mapping[str, Any] | None = None) -> tuple[View, ...]:
    """Parse policy text (see the module docstring) into views. ``data_config`` (the model's
    timm data config) is needed by presets whose sizes follow the model (``fixres``).

    Example:
        >>> [v.name for v in parse_policy("hflip*scale(1,1.1)")]
        ['identity', 'scale=1.1', 'hflip', 'hflip|scale=1.1']
    """
    return _Parser(text, data_config=data_config).parse()


# --------------------------------------------------------------------------- JSON & factory
def _policy_from_dict(d: Mapping[str, Any], source: str) -> Policy:
    if not isinstance(d, Mapping) or "views" not in d:
        raise PolicyError(f"{source}: a policy JSON is an object with a 'views' list")
    views: list[View] = []
    for item in d["views"]:
        if not isinstance(item, str):
            raise PolicyError(f"{source}: each view is a name such as 'hflip|scale=0.9', got {item!r}")
        views.append(parse_view(item))  # duplicates kept: a chosen policy may repeat a view
    weights = d.get("weights")
    return Policy(
        views=tuple(views),
        weights=None if weights is None else tuple(float(w) for w in weights),
        merge=d.get("merge"),
        temperature=float(d.get("temperature", 1.0)),
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
        preset = _PRESETS.get(spec.strip())
        return Policy(parse_policy(spec, data_config), merge=preset.merge if preset else None, name=spec.strip())
    if isinstance(spec, Sequence) and all(isinstance(v, View) for v in spec):
        return Policy(tuple(spec))
    if isinstance(spec, Sequence) and all(isinstance(v, Transform) for v in spec):
        return Policy((View(tuple(spec)),))
    raise PolicyError(f"cannot make a policy from {type(spec).__name__}; pass a preset name, text, JSON path or views")
