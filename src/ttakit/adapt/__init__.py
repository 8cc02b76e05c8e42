"""Test-time adaptation: adapted copies of a classifier that learn from the test stream itself.

Methods (:data:`ADAPTERS`): ``bn`` (test statistics with a prior, Schneider et al. 2020),
``tent`` (entropy minimisation of the normalisation layers' affine parameters, Wang et al.
2021), ``eata`` (reliable, non-redundant images only, with anti-forgetting, Niu et al. 2022)
and ``auto`` (a label-free guard that decides from the stream alone whether adapting helps;
see :mod:`~ttakit.adapt.guard`). The caller's model is never changed.

Example:
    >>> net = timm.create_model("test_resnet", num_classes=10).eval()
    >>> adapter = create_adapter("auto", net, AdaptOptions(batch=8))
    >>> adapter.step(torch.randn(8, 3, 64, 64)).shape    # one stream batch: adapt, then predict
    torch.Size([8, 10])
"""

from .guard import AutoAdapter
from .methods import (ADAPTERS, BNAdapter, EATAAdapter, StreamAdapter, TentAdapter, check_adaptable, create_adapter,
                      entropy, list_adapters)
from .options import AdaptOptions

__all__ = [
    "ADAPTERS",
    "AdaptOptions",
    "AutoAdapter",
    "BNAdapter",
    "EATAAdapter",
    "StreamAdapter",
    "TentAdapter",
    "check_adaptable",
    "create_adapter",
    "entropy",
    "list_adapters",
]
