"""Photo corrections: views that repair the decoded source photo (contrast, gamma, sharpness, noise).

A correction is a frozen parameter holder that maps a PIL photo to a PIL photo with PIL's own
functions. It runs on the decoded source photo, before the view's input stage resizes it (in
the DataLoader workers during ``evaluate``), so it sees the photo's full resolution and costs
no extra decode. It moves no pixel: a view's dense, keypoint and box inverses ignore it.

In policy text each correction is one transform (``|`` chains it with others; it always runs
first, on the photo, in the order written)::

    autocontrast          ImageOps.autocontrast, no cutoff
    autocontrast=1        ... cutting 1% of the darkest and brightest pixels
    equalize              ImageOps.equalize (histogram equalisation)
    gamma=0.7             each channel v -> 255 (v / 255) ** 0.7 (below 1 brightens)
    unsharp=2             ImageFilter.UnsharpMask(radius 2, percent 150, threshold 3);
                          unsharp=2:200:0 sets percent and threshold
    median=3              ImageFilter.MedianFilter(3) (a 3x3 median: removes noise)

Example:
    >>> c = parse_correction("gamma", "0.7")
    >>> c.name, parse_correction(*c.name.split("=")) == c
    ('gamma=0.7', True)
    >>> Corrected((AutoContrast(1.0), Median(3)), None).name
    'autocontrast=1|median=3'
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from PIL import Image, ImageFilter, ImageOps

from .errors import PolicyError
from .params import KeyName, read_float, read_int
from .registry import Registry

if TYPE_CHECKING:  # annotations only: the input stage's module imports this one
    from .stages import Input

__all__ = [
    "AutoContrast",
    "CORRECTIONS",
    "Corrected",
    "Correction",
    "Equalize",
    "Gamma",
    "Median",
    "Unsharp",
    "correct",
    "parse_correction",
    "stage_of",
]


def _text(v: float) -> str:
    """A number as it reads back: ``2`` for 2.0, ``0.7`` for 0.7."""
    v = float(v)
    return str(int(v)) if v.is_integer() else repr(v)


class Correction(KeyName, ABC):
    """One photo correction: ``correction(photo) -> photo``, an RGB PIL image of the same size."""

    @classmethod
    def from_arg(cls, arg: str | None) -> Correction | None:
        """Build from the text after ``=`` (``None``: no value); ``None`` when it changes nothing."""
        if arg is not None:
            raise PolicyError(f"{cls.key} takes no value, got {cls.key}={arg}")
        return cls()

    @abstractmethod
    def __call__(self, img: Image.Image) -> Image.Image: ...

    def __str__(self) -> str:
        return self.name


CORRECTIONS = Registry[type[Correction]]("correction")


@CORRECTIONS.register("autocontrast")
@dataclass(frozen=True)
class AutoContrast(Correction):
    """Stretch each channel to the full range (``ImageOps.autocontrast``): repairs dark and
    washed-out photos.

    Attributes:
        cutoff: percent of the darkest and of the brightest pixels ignored, in [0, 50).
    """

    cutoff: float = 0.0
    key: ClassVar[str] = "autocontrast"

    def __post_init__(self) -> None:
        if not 0 <= self.cutoff < 50:
            raise PolicyError(f"autocontrast cutoff is a percent in [0, 50), got {self.cutoff}")

    def arg(self) -> str | None:
        return None if self.cutoff == 0 else _text(self.cutoff)

    @classmethod
    def from_arg(cls, arg: str | None) -> Correction | None:
        return cls(0.0 if arg is None else read_float(arg, "autocontrast cutoff"))

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.autocontrast(img, cutoff=self.cutoff)


@CORRECTIONS.register("equalize")
@dataclass(frozen=True)
class Equalize(Correction):
    """Equalise each channel's histogram (``ImageOps.equalize``)."""

    key: ClassVar[str] = "equalize"

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.equalize(img)


@CORRECTIONS.register("gamma")
@dataclass(frozen=True)
class Gamma(Correction):
    """A gamma curve on every channel through a lookup table: ``v -> 255 (v / 255) ** gamma``
    rounded (``gamma`` below 1 brightens the shadows, above 1 darkens them).

    Attributes:
        gamma: the exponent, positive; 1 is the identity.
    """

    gamma: float
    key: ClassVar[str] = "gamma"

    def __post_init__(self) -> None:
        if not self.gamma > 0:
            raise PolicyError(f"gamma must be positive, got {self.gamma}")

    def arg(self) -> str | None:
        return _text(self.gamma)

    @classmethod
    def from_arg(cls, arg: str | None) -> Correction | None:
        if arg is None:
            raise PolicyError("gamma needs a value, e.g. gamma=0.7 (below 1 brightens)")
        g = read_float(arg, "gamma")
        return None if g == 1.0 else cls(g)

    def lut(self) -> list[int]:
        """The 256-entry table of one channel."""
        return [min(255, int(255.0 * (v / 255.0) ** self.gamma + 0.5)) for v in range(256)]

    def __call__(self, img: Image.Image) -> Image.Image:
        return img.point(self.lut() * len(img.getbands()))


@CORRECTIONS.register("unsharp")
@dataclass(frozen=True)
class Unsharp(Correction):
    """Sharpen with an unsharp mask (``ImageFilter.UnsharpMask``): repairs blur.

    Attributes:
        radius: blur radius of the mask, in photo pixels (positive).
        percent: strength, in percent.
        threshold: smallest brightness change that is sharpened.
    """

    radius: float
    percent: int = 150
    threshold: int = 3
    key: ClassVar[str] = "unsharp"

    def __post_init__(self) -> None:
        if not self.radius > 0 or self.percent < 0 or self.threshold < 0:
            raise PolicyError(f"unsharp needs radius > 0, percent >= 0 and threshold >= 0, got "
                              f"{self.radius}:{self.percent}:{self.threshold}")

    def arg(self) -> str | None:
        if (self.percent, self.threshold) == (150, 3):
            return _text(self.radius)
        return f"{_text(self.radius)}:{self.percent}:{self.threshold}"

    @classmethod
    def from_arg(cls, arg: str | None) -> Correction | None:
        parts = (arg or "").split(":")
        if arg is None or len(parts) not in (1, 3):
            raise PolicyError(f"unsharp expects RADIUS[:PERCENT:THRESHOLD] (e.g. unsharp=2), got {arg!r}")
        if len(parts) == 1:
            return cls(read_float(parts[0], "unsharp radius"))
        return cls(read_float(parts[0], "unsharp radius"), read_int(parts[1], "unsharp percent"),
                   read_int(parts[2], "unsharp threshold"))

    def __call__(self, img: Image.Image) -> Image.Image:
        return img.filter(ImageFilter.UnsharpMask(self.radius, self.percent, self.threshold))


@CORRECTIONS.register("median")
@dataclass(frozen=True)
class Median(Correction):
    """Replace each pixel by the median of its ``size x size`` neighbourhood
    (``ImageFilter.MedianFilter``): removes noise; ``median=1`` is the identity.

    Attributes:
        size: odd window side, in photo pixels.
    """

    size: int = 3
    key: ClassVar[str] = "median"

    def __post_init__(self) -> None:
        if self.size < 3 or self.size % 2 == 0:
            raise PolicyError(f"median size must be odd and at least 3, got {self.size}")

    def arg(self) -> str | None:
        return str(self.size)

    @classmethod
    def from_arg(cls, arg: str | None) -> Correction | None:
        size = 3 if arg is None else read_int(arg, "median size")
        return None if size == 1 else cls(size)

    def __call__(self, img: Image.Image) -> Image.Image:
        return img.filter(ImageFilter.MedianFilter(self.size))


def parse_correction(key: str, arg: str | None) -> Correction | None:
    """Build one correction from its key and text value (``None``: it changes nothing).

    Raises:
        UnknownNameError: ``key`` is no correction (the message lists them).
        PolicyError: a malformed value.
    """
    return CORRECTIONS.get(key).from_arg(arg)


def correct(img: Image.Image, corrections: tuple[Correction, ...]) -> Image.Image:
    """``img`` after each correction in turn."""
    for c in corrections:
        img = c(img)
    return img


@dataclass(frozen=True)
class Corrected:
    """A rendered input stage whose photo is corrected first: the key under which a view with
    corrections is rendered (views differing only in corrections never share a rendering).

    Attributes:
        corrections: applied to the decoded photo, in order.
        source: the geometric input stage afterwards (``None``: the model's own preprocessing).
    """

    corrections: tuple[Correction, ...]
    source: Input | None = None

    @property
    def name(self) -> str:
        return "|".join(([self.source.name] if self.source is not None else []) + [c.name for c in self.corrections])

    def __call__(self, img: Image.Image) -> Image.Image:
        return correct(img, self.corrections)

    def __str__(self) -> str:
        return self.name


def stage_of(source: Input | None, corrections: tuple[Correction, ...]) -> Input | Corrected | None:
    """The rendering key of a view: its input stage as it is, or :class:`Corrected` when the
    view corrects the photo."""
    return Corrected(corrections, source) if corrections else source
