"""The policy language: text such as ``hflip*scale(1,1.1)`` read into views (families, chains, presets).

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
* ``autocontrast[=CUTOFF]``, ``equalize``, ``gamma=G``, ``unsharp=RADIUS``, ``median=SIZE`` are
  *photo corrections* (:mod:`ttakit.corrections`): they repair the source photo before its input
  stage (``input=256:1.0|autocontrast``, ``autocontrast|hflip``, ``gamma(0.7,1.4)``); a bare
  correction name is one view. Like input stages they need photos.
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
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .corrections import CORRECTIONS, parse_correction
from .errors import PolicyError
from .params import POSITIONS
from .presets import PRESETS
from .registry import Registry
from .stages import Input
from .transforms import TRANSFORMS, Crop, HFlip, parse_transform
from .views import View

__all__ = ["FAMILIES", "parse_policy", "parse_view", "product", "union"]

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


# --------------------------------------------------------------------------- families
def _one_view(key: str, value: str | None) -> View:
    """The view of one ``key=value`` (an input stage, a correction or a transform; ``None``: no value)."""
    if key in CORRECTIONS:
        c = parse_correction(key, value)
        return View(corrections=() if c is None else (c,))
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


# Named families beyond one-transform-per-value: NAME(values) -> views.
FAMILIES = Registry[Callable[[Sequence[str]], tuple[View, ...]]]("view family")
FAMILIES.add("five_crop", _crop_family(POSITIONS))
FAMILIES.add("ten_crop", lambda v: product((View(), View((HFlip(),))), _crop_family(POSITIONS)(v)))
FAMILIES.add("center_crop", _crop_family(("center",)))
# A bare family name without values (presets of the same name are looked up first).
_FAMILY_DEFAULTS: dict[str, tuple[str, ...]] = {"rot90": ("0", "1", "2", "3")}


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
        if key in PRESETS:
            return self.preset(key)
        if key in _FAMILY_DEFAULTS:
            return self.family(key, _FAMILY_DEFAULTS[key])
        if key in CORRECTIONS:  # a bare correction is one view (`gamma` alone says it needs a value)
            return (_one_view(key, None),)
        if key in TRANSFORMS or key == Input.key:
            raise self.error(f"{key!r} needs a value: {key}=VALUE, or {key}(V1,V2,...) for one view per value")
        return self.preset(key)  # neither: UnknownNameError, listing the presets

    def preset(self, key: str) -> tuple[View, ...]:
        text = PRESETS.get(key).resolve(key, self.data_config)
        return _Parser(text, self.depth + 1, self.data_config).parse()

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
        if key in FAMILIES:
            return FAMILIES.get(key)(values)
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
