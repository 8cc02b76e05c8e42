"""ImageNet-1k class metadata from timm, read once per process.

Why: ``timm.data.ImageNetInfo()`` reads its files again on every construction (about 50 ms
here), and loading a model or a folder of ImageNet photos asks for the names each time.

Example:
    >>> imagenet_wnids()[281], imagenet_descriptions()[281]
    ('n02123045', 'tabby, tabby cat')
"""

from __future__ import annotations

import functools

import timm

__all__ = ["imagenet_descriptions", "imagenet_wnids"]


@functools.lru_cache(maxsize=1)
def _info() -> tuple[tuple[str, ...], tuple[str, ...]]:
    info = timm.data.ImageNetInfo()
    n = info.num_classes()
    return tuple(info.label_names()), tuple(info.index_to_description(i) for i in range(n))


def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 WordNet ids (``n01440764``, ...), in class-index order."""
    return _info()[0]


def imagenet_descriptions() -> tuple[str, ...]:
    """The 1000 class descriptions (``'tench, Tinca tinca'``, ...), in class-index order."""
    return _info()[1]
