"""The base every task wrapper shares: model, policy, normalisation, run config, view weights; a Plan with a model in front."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import timm
import torch
from torch import Tensor, nn

from ..errors import ArgumentError
from ..policy import Policy, PolicyLike, create_policy
from ..runtime.backends import Backend, TorchBackend, resolve_backend
from ..runtime.config import RunConfig, kept_as_given, model_device, prepared
from ..runtime.loop import ViewInputs, model_runner
from ..transforms import Normalization
from ..validate import as_config
from ..views import View
from .geometry import Geometry, stage_matrices
from .plan import Images, OutputsHead, Plan, TaskHead, as_inputs

__all__ = ["Images", "TTABase"]


class TTABase(nn.Module):
    """A model wrapped with a policy: a :class:`~ttakit.tasks.plan.Plan` whose batches the
    model (or its backend) runs; subclasses give the task's head.

    The caller's model comes back as it was given after every call: its memory format (it is
    converted to channels-last only for the duration of a call that feeds it channels-last
    images), train/eval mode and ``requires_grad``.

    Args:
        model: the network (any callable ``nn.Module`` taking ``(N, C, H, W)`` images).
        policy: preset name, policy text, JSON path or :class:`~ttakit.policy.Policy`.
        norm: the model's input normalisation (photometric views need it); taken from
            ``model.pretrained_cfg`` when not given.
        run_config: micro-batch size, memory format and autocast; device defaults if ``None``.
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
        if not isinstance(model, nn.Module):
            raise ArgumentError(f"model must be a torch nn.Module, got {type(model).__name__} {model!r:.60}")
        if run_config is not None:
            run_config = as_config(RunConfig, run_config, "run_config")
        if data_config is not None and not isinstance(data_config, Mapping):
            raise ArgumentError(f"data_config must be a dict (timm's data config), got {type(data_config).__name__}")
        self.model = model
        self.data_config = dict(data_config or timm.data.resolve_data_config({}, model=model))
        self.policy: Policy = create_policy(policy, self.data_config)
        self.norm = norm or Normalization(tuple(self.data_config["mean"]), tuple(self.data_config["std"]))
        # A Backend is not an nn.Module, so this plain attribute is not registered as a submodule
        # (state_dict, .to() and .eval() stay the model's). Exporting one leaves the model as given.
        with kept_as_given(model):
            self.backend: Backend = resolve_backend(backend, model, input_size=tuple(self.data_config["input_size"][-2:]))
        self.run_config = run_config or self.backend.run_config(model_device(model))
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
        return as_inputs(x, self.views, self.data_config, model_device(self.model))

    def geometry(self, inputs: Tensor | ViewInputs) -> Geometry:
        """What undoing views on ``inputs`` needs (sizes, photo windows), without the model."""
        return Geometry.of(inputs, self.data_config)

    def stage_matrices(self, inputs: Tensor | ViewInputs, view: View) -> Tensor | None:
        """``(B, 3, 3)`` maps from the plain input's normalised coordinates to those of
        ``view``'s input stage, one per photo (see :func:`ttakit.tasks.geometry.stage_matrices`)."""
        return stage_matrices(view, getattr(inputs, "photo_sizes", None), self.data_config)

    def plan(self, head: TaskHead | None = None, views: Sequence[View] | None = None) -> Plan:
        """The model-free plan this wrapper runs: its policy (or ``views``), data config,
        normalisation and micro-batch, rendering on the model's device."""
        policy = self.policy if views is None else Policy(tuple(views))
        return Plan(policy, head or OutputsHead(), data_config=self.data_config, norm=self.norm,
                    micro_batch=self.run_config.micro_batch, device=model_device(self.model))

    @contextlib.contextmanager
    def _model_ready(self) -> Iterator[None]:
        """The model in the run config's memory format for the block, then as it was given."""
        feeds_model = isinstance(self.backend, TorchBackend) and self.backend.module is self.model
        with prepared(self.model, self.run_config) if feeds_model else kept_as_given(self.model):
            yield

    def execute(self, x: Images, head: TaskHead | None = None, views: Sequence[View] | None = None) -> Any:
        """Run the plan of ``head`` (default: raw outputs) on ``x`` with this wrapper's model
        or backend feeding every batch; the plan's result."""
        plan = self.plan(head, views)
        with self._model_ready():
            return plan.run(model_runner(self.backend, self.run_config), self.inputs(x))

    def run(self, x: Tensor | ViewInputs, views: Sequence[View] | None = None) -> list[Any]:
        """Each view's raw model output, batch dimension first, in ``views`` order."""
        return self.execute(x, None, views)
