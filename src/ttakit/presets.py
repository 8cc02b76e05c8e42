"""Presets: named policies, as policy text or a function of the model's data config, in one registry.

A bare preset name in policy text (``d4``, ``tutorial``) stands for its policy; see
:func:`list_presets`. ``fixres`` and ``search_pool`` follow the model's input size.

Example:
    >>> list_presets()["tutorial"]
    'identity + input=256:1.0|hflip'
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Union

from .errors import PolicyError
from .registry import Registry

__all__ = ["PRESETS", "Preset", "correction_pool", "default_pool", "larger_size", "list_presets", "model_size",
           "register_preset", "source_pool"]

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


PRESETS = Registry[Preset]("preset", sort=False)  # listed in registration order, simplest first


def register_preset(name: str, text: PresetText, description: str = "", merge: str | None = None) -> None:
    """Register ``name`` as a preset for the policy ``text`` (usable in any policy text).

    Raises:
        PolicyError: ``name`` is not a lower-case identifier.
        ValueError: ``name`` is already registered.

    Example:
        >>> register_preset("flip_zoom", "hflip*scale(1,1.15)", "flips at two zooms")
        >>> len(parse_policy("flip_zoom"))
        4
        >>> _ = PRESETS.remove("flip_zoom")
    """
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise PolicyError(f"preset names are lower-case identifiers, got {name!r}")
    PRESETS.add(name, Preset(text, description, merge))


def list_presets() -> dict[str, str]:
    """Preset names with the policy text each stands for (model-dependent ones described)."""
    return {k: v.text if isinstance(v.text, str) else f"<{v.description}>" for k, v in PRESETS.items()}


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


def source_pool(data_config: Mapping[str, Any]) -> str:
    """The re-sampled views of the default pool: the plain input and its mirror; input stages
    re-sampled from the source photo (the whole image, crop fractions 0.8-0.9, larger sizes up
    to ~1.4x the model's, the four corner crops) and their mirrors; a zoom and the
    brightness/contrast changes that help on dark or flat photos. Rotations and shifts are left
    out: on ImageNet photos they lower accuracy (see README), and each costs a forward.

    Example:
        >>> len(parse_policy(source_pool({"input_size": (3, 224, 224)})))
        25
    """
    s = model_size(data_config)
    big = [int(round(s * f / 32)) * 32 for f in (1.15, 1.3, 1.43)]  # 256, 288, 320 for 224
    inputs = [f"input={s}:{c}" for c in (0.8, 0.9, 1.0)] + [f"input={b}:1.0" for b in big]
    corners = [f"input={s}:0.875:{p}" for p in ("tl", "tr", "bl", "br")]
    stages = " + ".join(inputs + corners)
    return f"identity + hflip=1 + ({stages})*hflip(0,1) + scale=1.1 + brightness=1.2 + contrast=1.2"


def correction_pool(data_config: Mapping[str, Any]) -> str:
    """Candidate photo corrections for a search (:mod:`ttakit.corrections`, the ``corrections``
    preset): the contrast stretch and a strong unsharp mask, alone and on the whole image at
    the larger size; each adds one evaluated view to a search pass. Measured against the
    re-sampled pool by ``benchmarks/bench_corrections.py``; add them with
    ``--pool "search_pool + corrections"``.

    Example:
        >>> correction_pool({"input_size": (3, 224, 224)})
        'autocontrast=1 + unsharp=2:250:0 + input=256:1.0|autocontrast=1 + input=256:1.0|unsharp=2:250:0'
    """
    big = int(round(model_size(data_config) * 1.15 / 32)) * 32  # 256 for 224
    corrections = ("autocontrast=1", "unsharp=2:250:0")
    return " + ".join([*corrections, *(f"input={big}:1.0|{c}" for c in corrections)])


def default_pool(data_config: Mapping[str, Any]) -> str:
    """The default candidate views of ``ttakit search``: the re-sampled views of
    :func:`source_pool` (photo corrections join it where measurements show they help: see
    :func:`correction_pool`).

    Example:
        >>> len(parse_policy(default_pool({"input_size": (3, 224, 224)})))
        25
    """
    return source_pool(data_config)


def shift_pool(data_config: Mapping[str, Any]) -> str:
    """The default candidate views of ``ttakit search --shifts`` (the ``shift_pool`` preset):
    few, as every view runs once per adaptation candidate: the flip, the whole photo at the
    model's size and larger, and the photo corrections that undo shifts (contrast stretch,
    median filter against noise, unsharp mask against blur).

    Example:
        >>> len(parse_policy(shift_pool({"input_size": (3, 224, 224)})))
        10
    """
    s = model_size(data_config)
    big = int(round(s * 1.15 / 32)) * 32  # 256 for 224
    return (f"identity + hflip=1 + (input={s}:1.0 + input={big}:1.0)*hflip(0,1) + autocontrast=1 + "
            f"autocontrast=1|hflip=1 + median=3 + unsharp=2:250:0")


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
register_preset("tutorial", "identity + input=256:1.0|hflip",
                "the timm TTA tutorial: the plain input and Resize(256)+CenterCrop(256)+flip of the photo, "
                "logits summed",
                merge="sum")
register_preset("fixres", _fixres, "plain input + the whole centre square at a larger size (FixRes, 2 views)")
register_preset("search_pool", default_pool, "the default candidate views of ttakit search")
register_preset("shift_pool", shift_pool, "the default candidate views of ttakit search --shifts (10 views)")
register_preset("corrections", correction_pool, "candidate photo corrections for a search (4 views)")
