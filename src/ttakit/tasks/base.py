"""The base every task wrapper shares: model, policy, normalisation, run config, view weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import timm
import torch
from PIL import Image
from torch import Tensor, nn

from ..data import InputRenderer, PhotoLike, to_photo
from ..policy import Policy, PolicyLike, create_policy
from ..runtime.backends import Backend, resolve_backend
from ..runtime.config import RunConfig, model_device, prepare_model
from ..runtime.loop import RenderedInputs, ViewInputs, run_views
from ..transforms import Normalization
from ..views import View
from .geometry import Geometry, stage_matrices

__all__ = ["Images", "TTABase"]

# What a wrapper accepts: preprocessed (B, C, H, W) float images, inputs already rendered per
# input stage, or photos (one or a list of paths, PIL images, (C, H, W) uint8 tensors).
Images = Union[Tensor, ViewInputs, PhotoLike, Sequence[PhotoLike]]


class TTABase(nn.Module):
    """A model wrapped with a policy; subclasses decide what to do with each view's output.

    Args:
        model: the network (any callable ``nn.Module`` taking ``(N, C, H, W)`` images).
        policy: preset name, policy text, JSON path or :class:`~ttakit.policy.Policy`.
        norm: the model's input normalisation (photometric views need it); taken from
            ``model.pretrained_cfg`` when not given.
        run_config: micro-batch size, memory format and autocast; device defaults if ``None``.
            With ``channels_last`` the model's parameters are converted once, in place.
        data_config: timm data config (input size, interpolation, crop, mean, std) used to
            turn photos into model inputs; resolved from the model when not given.
        backend: what runs the model: ``"torch"`` (default), ``"onnxruntime"``, ``"openvino"``
            (an fp32 ONNX export, cached) or a :class:`~ttakit.runtime.backends.Backend`.
    """

    def __init__(
        self,
        model: nn.Module,
        policy: PolicyLike,
        *,
        norm: Normalization | None = None,
        run_config: RunConfig | None = None,
        data_config: Mapping[str, Any] | None = None,
        backend: str | Backend | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.data_config = dict(data_config or timm.data.resolve_data_config({}, model=model))
        self.policy: Policy = create_policy(policy, self.data_config)
        self.norm = norm or Normalization(tuple(self.data_config["mean"]), tuple(self.data_config["std"]))
        # A Backend is not an nn.Module, so this plain attribute is not registered as a submodule
        # (state_dict, .to() and .eval() stay the model's).
        self.backend: Backend = resolve_backend(backend, model, input_size=tuple(self.data_config["input_size"][-2:]))
        self.run_config = run_config or self.backend.run_config(model_device(model))
        prepare_model(model, self.run_config)
        w = self.policy.weights
        # None means equal weights, which merges may treat more cheaply than explicit ones.
        self.register_buffer("view_weights", None if w is None else torch.tensor(w, dtype=torch.float32), persistent=False)

    @property
    def views(self) -> tuple[View, ...]:
        return self.policy.views

    def weights_or_ones(self) -> Tensor:
        """``(V,)`` view weights, ones where the policy gives none."""
        return self.view_weights if self.view_weights is not None else torch.ones(len(self.views))

    def inputs(self, x: Images) -> Tensor | ViewInputs:
        """Preprocessed tensors and rendered inputs as they are; photos decoded once and
        rendered for every input stage of the policy, on the model's device."""
        if isinstance(x, Tensor) and x.is_floating_point() or isinstance(x, ViewInputs):
            return x
        single = isinstance(x, (str, Path, Image.Image)) or isinstance(x, Tensor) and x.ndim == 3
        photos = [to_photo(p) for p in ([x] if single else list(x))]  # type: ignore[union-attr]
        renderer = InputRenderer({v.stage for v in self.views}, self.data_config)
        sizes = [(p.height, p.width) for p in photos]
        return RenderedInputs(renderer.batch(photos), sizes).to(model_device(self.model))

    def geometry(self, inputs: Tensor | ViewInputs) -> Geometry:
        """What undoing views on ``inputs`` needs (sizes, photo windows), without the model."""
        return Geometry.of(inputs, self.data_config)

    def stage_matrices(self, inputs: Tensor | ViewInputs, view: View) -> Tensor | None:
        """``(B, 3, 3)`` maps from the plain input's normalised coordinates to those of
        ``view``'s input stage, one per photo (see :func:`ttakit.tasks.geometry.stage_matrices`)."""
        return stage_matrices(view, getattr(inputs, "photo_sizes", None), self.data_config)

    def run(self, x: Tensor | ViewInputs, views: Sequence[View] | None = None) -> list[Any]:
        """Each view's raw model output, batch dimension first (see :func:`run_views`)."""
        return run_views(self.backend, x, self.views if views is None else views, self.norm, self.run_config)
