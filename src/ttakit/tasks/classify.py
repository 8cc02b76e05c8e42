"""Classification TTA: per-view logits merged into class probabilities, optionally adaptive.

:func:`classify_views` is the one classification path: :class:`ClassificationTTA` (and so
``ttakit predict`` and ``ttakit views``) calls it with a function that runs the model, and
:mod:`ttakit.evaluation` calls it with a function that reads stored logits, so adaptive TTA
and its cost are computed by the same code everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from ..adapt import AdaptOptions, StreamAdapter, create_adapter, list_adapters
from ..conformal import SCORES, Calibration, conformity_scores, get_score, prediction_sets
from ..conformal_record import calibration_record, record_mismatch
from ..errors import ConfigError, PolicyError, ShapeError, check_shape
from ..merge import get_merge, list_merges, merge_logits
from ..policy import Policy, PolicyLike
from ..registry import Registry
from ..runtime.backends import Backend, TorchBackend
from ..runtime.config import RunConfig
from ..runtime.export import GraphHead, normalised_weights
from ..runtime.loop import ViewInputs, as_view_inputs, model_runner
from ..transforms import Normalization
from ..validate import as_config, check_finite
from ..views import View
from .base import Images, TTABase
from ..task_spec import Option, TaskColumns, TaskSpec, register_task
from .geometry import Geometry
from .plan import Fetch

__all__ = [
    "CONFIDENCE",
    "ClassificationResult",
    "ClassificationTTA",
    "ClassifyGraph",
    "ClassifyHead",
    "ClassifyRule",
    "adaptive_cost",
    "classify_head",
    "classify_views",
    "get_confidence",
]


def _max_prob(logits: Tensor) -> Tensor:
    return torch.softmax(logits.float(), dim=-1).max(dim=-1).values


def _margin(logits: Tensor) -> Tensor:
    top2 = torch.softmax(logits.float(), dim=-1).topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


CONFIDENCE = Registry[Callable[[Tensor], Tensor]]("confidence", sort=False)  # plain logits (B, C) -> (B,)
CONFIDENCE.add("max_prob", _max_prob)  # largest softmax probability of the plain view
CONFIDENCE.add("margin", _margin)  # top-1 minus top-2 probability of the plain view


def get_confidence(name: str) -> Callable[[Tensor], Tensor]:
    """The confidence function called ``name`` (``max_prob`` or ``margin``).

    Raises:
        UnknownNameError: for an unknown name (a :class:`~ttakit.errors.ConfigError`), listing
            the known ones.
    """
    return CONFIDENCE.get(name)


def adaptive_cost(n_images: int, n_uncertain: int | Tensor, n_other_views: int) -> int | Tensor:
    """View-forwards spent by adaptive TTA: the plain view for every image, the other views
    for the uncertain ones only."""
    return n_images + n_uncertain * n_other_views


@dataclass(frozen=True)
class ClassifyRule:
    """How per-view logits become one prediction; every name already resolved.

    Attributes:
        merge: merge function (see :mod:`ttakit.merge`).
        weights: ``(V,)`` view weights, or ``None`` for equal weights.
        temperature: logits are divided by it before merging.
        threshold: adaptive TTA's confidence threshold (``None``: every view for every input).
        confidence: maps plain logits ``(B, C)`` to a confidence ``(B,)``.
    """

    merge: Callable[[Tensor, Tensor], Tensor]
    weights: Tensor | None = None
    temperature: float = 1.0
    threshold: float | None = None
    confidence: Callable[[Tensor], Tensor] = _max_prob

    @classmethod
    def from_policy(cls, policy: Policy, merge: str | None = None, threshold: float | None = None,
                    confidence: str = "max_prob") -> ClassifyRule:
        """Resolve a policy's merge (``merge`` overrides it), weights, temperature and
        adaptive threshold (``threshold`` overrides ``policy.meta["adaptive"]``)."""
        w = None if policy.weights is None else torch.tensor(policy.weights, dtype=torch.float32)
        threshold = threshold if threshold is not None else policy.meta.get("adaptive")
        if threshold is not None:  # NaN would silently turn adaptive TTA off
            threshold = check_finite("adaptive (a confidence threshold)", threshold)
        return cls(get_merge(merge or policy.merge or "mean"), w, policy.temperature, threshold,
                   get_confidence(confidence))


@dataclass(frozen=True)
class ClassificationResult:
    """What :func:`classify_views` and :meth:`ClassificationTTA.predict` return.

    Attributes:
        probs: ``(B, C)`` merged probabilities.
        plain_logits: ``(B, C)`` logits of the un-augmented image (``None`` when the policy
            has no identity view and nothing was adaptive).
        view_logits: ``(B, V, C)`` each view's logits; NaN where adaptive TTA did not run it.
        view_forwards: images sent through the model, summed over views.
        augmented: ``(B,)`` bool, which inputs got the full policy (all True without adaptive).
        sets: ``(B, C)`` bool conformal prediction sets (with a calibration; else ``None``).
    """

    probs: Tensor
    plain_logits: Tensor | None
    view_logits: Tensor
    view_forwards: int
    augmented: Tensor
    sets: Tensor | None = None


# fetch(rows, views) -> (n, len(views), C) logits of those views for those inputs (rows=None: all).
FetchLogits = Callable[[Tensor | None, Sequence[View]], Tensor]


def classify_views(fetch: FetchLogits, n_inputs: int, views: Sequence[View], rule: ClassifyRule) -> ClassificationResult:
    """Merge the views of ``n_inputs`` inputs, adaptively when ``rule.threshold`` is set.

    Adaptive TTA gets the plain view first and fetches the other views only for inputs whose
    confidence is below the threshold; the others keep the plain prediction.

    Example:
        >>> logits = torch.tensor([[[4.0, 0.0], [0.0, 1.0]], [[0.0, 0.5], [0.0, 3.0]]])  # (B, V, C)
        >>> views = [View(), View((HFlip(),))]
        >>> fetch = lambda rows, vs: logits[rows if rows is not None else slice(None)][:, [views.index(v) for v in vs]]
        >>> res = classify_views(fetch, 2, views, ClassifyRule(get_merge("mean"), threshold=0.9))
        >>> res.augmented.tolist(), res.view_forwards   # only the unsure second input ran hflip
        ([False, True], 3)
    """
    B, V = n_inputs, len(views)
    ident = [i for i, v in enumerate(views) if v.is_identity]

    def merge(logits: Tensor) -> Tensor:
        return merge_logits(logits, rule.merge, rule.weights, rule.temperature)

    if rule.threshold is None:
        logits = fetch(None, views).float()  # (B, V, C)
        plain = logits[:, ident[0]] if ident else None
        return ClassificationResult(merge(logits), plain, logits, B * V, torch.ones(B, dtype=torch.bool))
    plain = fetch(None, [View()])[:, 0].float()  # (B, C)
    others = [i for i in range(V) if i not in ident]
    uncertain = rule.confidence(plain) < rule.threshold  # (B,)
    logits = plain.new_full((B, V, plain.shape[-1]), float("nan"))  # (B, V, C)
    logits[:, ident] = plain[:, None]
    probs = torch.softmax(plain, dim=-1)  # confident inputs keep the plain prediction
    rows = uncertain.nonzero().flatten().to(plain.device)
    if len(rows) and others:
        logits[rows[:, None], torch.tensor(others)] = fetch(rows, [views[i] for i in others]).float()
        probs[rows] = merge(logits[rows])
    cost = adaptive_cost(B, len(rows), len(others))
    return ClassificationResult(probs, plain, logits, int(cost), uncertain.cpu())


class ClassifyHead:
    """Classification as a :class:`~ttakit.tasks.plan.Plan` task: every view (or, adaptively,
    the plain view first and the others only for unsure inputs), merged by ``rule``; with a
    ``conformal`` calibration, each input's prediction set too."""

    def __init__(self, rule: ClassifyRule, conformal: Calibration | None = None) -> None:
        self.rule, self.conformal = rule, conformal

    def schedule(self, views: Sequence[View], n: int, fetch: Fetch) -> Iterator[tuple[Tensor | None, Sequence[View]]]:
        if self.rule.threshold is None:
            yield None, views
            return
        yield None, [View()]
        plain = fetch(None, [View()])[0].float()  # (B, C)
        rows = (self.rule.confidence(plain) < self.rule.threshold).nonzero().flatten()
        others = [v for v in views if not v.is_identity]
        if len(rows) and others:
            yield rows, others

    def finish(self, views: Sequence[View], n: int, fetch: Fetch, geometry: Geometry) -> ClassificationResult:
        def logits(rows: Tensor | None, vs: Sequence[View]) -> Tensor:
            outs = fetch(rows, vs)
            for o in outs:
                if not isinstance(o, Tensor):
                    raise ShapeError(f"classification output (put a {type(o).__name__}; put the logits alone, "
                                     "e.g. out[0])", "(N, classes) tensor", ())
                check_shape("classification output", o.shape, "(N, classes)")
            return torch.stack([o.float() for o in outs], dim=1)  # (n, V, C)

        res = classify_views(logits, n, views, self.rule)
        return res if self.conformal is None else replace(res, sets=prediction_sets(res.probs, self.conformal))


def classify_head(policy: Policy, *, merge: str | None = None, adaptive: float | None = None,
                  confidence: str = "max_prob", conformal: Calibration | None = None) -> ClassifyHead:
    """The classification head of ``policy`` (see :class:`ClassifyRule`); ``conformal``
    defaults to the policy's ``meta["conformal"]`` (as ``ttakit calibrate`` writes it).

    Example:
        >>> head = classify_head(create_policy("hflip"), merge="max")
        >>> head.rule.merge is get_merge("max"), head.rule.threshold
        (True, None)
    """
    if conformal is None and "conformal" in policy.meta:  # a calibrated policy (ttakit calibrate)
        conformal = Calibration.from_dict(policy.meta["conformal"])
    return ClassifyHead(ClassifyRule.from_policy(policy, merge, adaptive, confidence), conformal)


# --------------------------------------------------------------------------- the export head
_REFUSED_MERGES = {"vote": "its scatter of votes does not export; use mean, gmean or another merge"}


def _logsumexp(x: Tensor, dim: int) -> Tensor:
    # Written out: OpenVINO reads ONNX ReduceLogSumExp as a reduction over every axis.
    m = x.amax(dim, keepdim=True)
    return (m + (x - m).exp().sum(dim, keepdim=True).log()).squeeze(dim)


def _tsharpen(logits: Tensor, weights: Tensor) -> Tensor:
    """:mod:`ttakit.merge`'s ``tsharpen`` with an explicit log-sum-exp (same values)."""
    half = 0.5 * torch.log_softmax(logits, dim=-1) + torch.log(weights.view(1, -1, 1))
    return torch.softmax(_logsumexp(half, dim=1), dim=-1)


_GRAPH_MERGES = {"tsharpen": _tsharpen}  # exportable stand-ins for merges whose ops do not travel


class ClassifyGraph(GraphHead):
    """Classification's export head: the views' ``(N, C)`` logits -> ``(N, C)`` merged
    probabilities, as :class:`ClassificationTTA` computes them (no adaptive TTA); for a
    calibrated policy (``ttakit calibrate``) also the ``(N, C)`` bool conformal set of each
    input (its threshold a constant of the graph).

    Raises:
        PolicyError: a merge with no ONNX form (``vote``) or a randomised conformal score.

    Example:
        >>> head = ClassifyGraph(create_policy("hflip"), "gmean")
        >>> logits = torch.randn(2, 5)
        >>> torch.allclose(head([logits, logits]), torch.softmax(logits, -1), atol=1e-6)
        True
    """

    task = "classify"
    output_rank = 2
    output = "(N, classes) logits"
    returns = "(N, {classes}) merged probabilities"
    summary = "merged class probabilities"
    class_names = True

    def __init__(self, policy: Policy, merge: str | None = None) -> None:
        name = merge or policy.merge or "mean"
        conformal = Calibration.from_dict(policy.meta["conformal"]) if "conformal" in policy.meta else None
        if conformal is not None and get_score(conformal.score).randomized:
            raise PolicyError(f"a randomised conformal score ({conformal.score}) cannot be exported: "
                              "calibrate with thr, aps or raps")
        if name in _REFUSED_MERGES:
            raise PolicyError(f"merge {name!r} cannot be exported: {_REFUSED_MERGES[name]}")
        super().__init__(name, ("probs",) if conformal is None else ("probs", "sets"))
        self.conformal = conformal
        self.merge = _GRAPH_MERGES.get(name) or get_merge(name)
        self.register_buffer("weights", normalised_weights(policy))
        self.temperature = float(policy.temperature)

    def metadata(self) -> dict[str, Any]:
        return {"ttakit.conformal": None if self.conformal is None else self.conformal.to_dict()}

    def forward(self, outs: list[Tensor]) -> Tensor | tuple[Tensor, Tensor]:
        logits = torch.stack([o.float() for o in outs], dim=1)  # (N, V, C)
        if self.temperature != 1.0:
            logits = logits / self.temperature
        probs = self.merge(logits, self.weights)
        if self.conformal is None:
            return probs
        return probs, conformity_scores(probs, self.conformal.score) <= self.conformal.threshold


class ClassificationTTA(TTABase):
    """Test-time augmentation around an image classifier.

    Args:
        model: maps ``(N, C, H, W)`` normalised images to ``(N, num_classes)`` logits.
        policy: preset name, policy text, JSON path or :class:`~ttakit.policy.Policy`.
        merge: merge mode (see :mod:`ttakit.merge`); ``None`` uses the policy's, else ``mean``.
        norm: the model's input normalisation, needed by brightness/contrast views; taken
            from ``model.pretrained_cfg`` when not given.
        run_config: micro-batch size, memory format and autocast; device defaults if ``None``.
        adaptive: confidence threshold for adaptive TTA: the plain view runs first and only
            inputs whose confidence is below it get the other views (``None``: the policy's
            ``meta["adaptive"]`` if it has one, else every view for every input).
        confidence: ``"max_prob"`` (default) or ``"margin"`` (top-1 minus top-2 probability).
        data_config: timm data config used to turn photos into inputs (from the model if
            ``None``); needed by views with an input stage (``input=256:1.0``).
        backend: ``"torch"`` (default), ``"onnxruntime"``, ``"openvino"`` or a
            :class:`~ttakit.runtime.backends.Backend` (see :class:`TTABase`).
        conformal: a :class:`~ttakit.conformal.Calibration`: :meth:`predict` also returns each
            input's conformal prediction set (default: the policy's ``meta["conformal"]``, as
            ``ttakit calibrate`` writes it).
        adapt: test-time adaptation (:mod:`ttakit.adapt`): ``"bn"``, ``"tent"``, ``"eata"`` or
            ``"auto"``. Each :meth:`predict` call is one batch of the stream: an adapted *copy*
            of the model learns from its plain inputs, then every view runs through that copy
            in torch (``model`` itself is never changed).
        adapt_options: batch size, reset period, prior, learning rate of the adaptation (an
            :class:`~ttakit.adapt.AdaptOptions` or a dict of its fields).

    Calls take preprocessed ``(B, C, H, W)`` images, or photos (paths, PIL images, uint8
    tensors): each photo is decoded once and every input stage is rendered from it.

    Example:
        >>> net = timm.create_model("test_resnet", num_classes=10).eval()
        >>> tta = ClassificationTTA(net, "hflip")
        >>> images = torch.randn(2, 3, 64, 64)
        >>> tta(images).shape                     # merged probabilities
        torch.Size([2, 10])
        >>> tta.forward_views(images).shape       # per-view logits
        torch.Size([2, 2, 10])
    """

    def __init__(
        self,
        model: nn.Module,
        policy: PolicyLike = "none",
        merge: str | None = None,
        *,
        norm: Normalization | None = None,
        run_config: RunConfig | None = None,
        adaptive: float | None = None,
        confidence: str = "max_prob",
        data_config: Mapping[str, Any] | None = None,
        backend: str | Backend | None = None,
        conformal: Calibration | None = None,
        adapt: str | None = None,
        adapt_options: AdaptOptions | Mapping[str, Any] | None = None,
    ) -> None:
        adapt_options = AdaptOptions() if adapt_options is None else as_config(AdaptOptions, adapt_options, "adapt_options")
        super().__init__(model, policy, norm=norm, run_config=run_config, data_config=data_config, backend=backend)
        self.adapt_options = adapt_options
        self.adapter: StreamAdapter | None = None if adapt is None else create_adapter(adapt, model, self.adapt_options)
        self.merge_name = merge or self.policy.merge or "mean"
        self.confidence_name = confidence
        self.head = classify_head(self.policy, merge=self.merge_name, adaptive=adaptive, confidence=confidence,
                                  conformal=conformal)
        self.rule, self.conformal = self.head.rule, self.head.conformal
        # A calibration read from the policy covers what it was calibrated for, and nothing else.
        self.conformal_verified = conformal is not None or self.conformal is None or self._check_calibration(adapt)

    def _check_calibration(self, adapt: str | None) -> bool:
        """Compare the policy's calibration record with this wrapper; ``False``: none recorded."""
        recorded = self.policy.meta.get("conformal_for")
        if not isinstance(recorded, Mapping):
            warnings.warn(f"policy {self.policy.name!r} holds a conformal calibration with no record of what it "
                          "calibrated (model, weights, merge, adaptive): its coverage is unverified; recalibrate "
                          "with `ttakit calibrate`", stacklevel=3)
            return False
        now = calibration_record(self.model, merge=self.merge_name, adaptive=self.adaptive, adapt=adapt,
                                 adapt_options=None if adapt is None else asdict(self.adapt_options))
        diff = record_mismatch(recorded, now)
        if diff:
            raise ConfigError(f"policy {self.policy.name!r}'s conformal calibration was made for another setup, so "
                              f"its coverage says nothing here: {diff}; recalibrate with `ttakit calibrate`")
        return True

    @property
    def adaptive(self) -> float | None:
        return self.rule.threshold

    def with_run_config(self, **changes: Any) -> ClassificationTTA:
        """A copy with some :class:`RunConfig` fields changed (same model and backend objects)."""
        return ClassificationTTA(
            self.model, self.policy, self.merge_name, norm=self.norm,
            run_config=replace(self.run_config, **changes), adaptive=self.adaptive,
            confidence=self.confidence_name, data_config=self.data_config, backend=self.backend,
            conformal=self.conformal, adapt=None if self.adapter is None else self.adapter.name,
            adapt_options=self.adapt_options,
        )

    @torch.inference_mode()
    def forward_views(self, x: Images, views: Sequence[View] | None = None) -> Tensor:
        """Per-view logits ``(B, V, C)`` for ``(B, C, H, W)`` images or photos."""
        return torch.stack([o.float() for o in self.run(x, views)], dim=1)  # (B, V, C)

    def merge_views(self, logits: Tensor) -> Tensor:
        """Merge ``(B, V, C)`` logits with this wrapper's merge, weights and temperature."""
        return merge_logits(logits, self.rule.merge, self.rule.weights, self.rule.temperature)

    @torch.inference_mode()
    def predict(self, x: Images) -> ClassificationResult:
        """Merged probabilities, each view's logits and the cost in view-forwards."""
        if self.adapter is not None:  # one stream batch: adapt first, then every view through the copy
            x = self.inputs(x)
            self.adapt_step(x)
        return self.execute(x, self.head)

    def forward(self, x: Images) -> Tensor:
        """Merged class probabilities ``(B, C)``."""
        return self.predict(x).probs

    def adapt_step(self, x: Tensor | ViewInputs) -> Tensor | None:
        """With ``adapt``: adapt the copy on the plain inputs of one stream batch and return
        their logits (else ``None``); the views then run through the adapted copy."""
        if self.adapter is None:
            return None
        return self.adapter.step(as_view_inputs(x).render(None))  # (B, C, H, W) the plain, normalised inputs

    @torch.inference_mode()
    def unadapted_logits(self, x: Images) -> Tensor:
        """Plain-view logits ``(B, C)`` of the model as given (never adapted)."""
        return super().execute(x, None, [View()])[0].float()

    def execute(self, x: Images, head: Any = None, views: Sequence[View] | None = None) -> Any:
        if self.adapter is None:
            return super().execute(x, head, views)
        runner = model_runner(TorchBackend(self.adapter.views_model, self.backend.precision), self.run_config)
        return self.plan(head, views).run(runner, self.inputs(x))


# --------------------------------------------------------------------------- the task, registered once
# predict's and views' default policy: what a greedy search over the default search pool
# chooses on the sample photos and their corrupted copy, at temperature 1 (as predict shows
# probabilities) with a budget of 2-3 views, in 4 of 5 folds and on all photos; its 5-fold
# held-out top-1 beats plain (benchmarks/choose_predict_default.py; README, "Why predict's
# default policy"). The flip alone is one flag away: --tta hflip.
DEFAULT_POLICY = "contrast=1.2 + input=224:1"

_ALL, _ADAPT = ("predict", "views", "evaluate"), "test-time adaptation (the photos are one stream, in folder or CSV row order)"
register_task(TaskSpec(
    "classify", "class probabilities (default)", head=classify_head, graph_head=ClassifyGraph,
    evaluation="ttakit.evaluation.classify_eval:classify_task", load_model="ttakit.runtime.prepare:load_classifier",
    load_data="ttakit.evaluation.classify_eval:classify_data", report="ttakit.evaluation.report_classify:page",
    template="_classify.html.j2", result=ClassificationResult,
    columns=TaskColumns("top1", "top-1", (("top1", "top-1"), ("top5", "top-5")), "top-1"),
    commands={"predict": "ttakit.cli.predict:predict_classify", "views": "ttakit.cli.predict:views_classify",
              "evaluate": "ttakit.cli.evaluate:evaluate_classify"},
    default_policy={"predict": DEFAULT_POLICY, "views": DEFAULT_POLICY},
    options=(
        Option("merge", "merge mode (default: the policy's, else mean)", choices=tuple(list_merges()), commands=_ALL,
               many=("evaluate",), group="test-time augmentation"),
        Option("adaptive", "run the other views only where the plain view's confidence is below THRESHOLD",
               type="float", metavar="THRESHOLD", commands=_ALL, group="test-time augmentation", scoring=True),
        Option("confidence", "confidence used by --adaptive or a policy's adaptive threshold (default: max_prob)",
               default="max_prob", choices=tuple(CONFIDENCE.names()), commands=_ALL, group="test-time augmentation",
               scoring=True),
        Option("conformal", "conformal sets covering 1 - ALPHA (e.g. 0.1), scored from the stored logits",
               type="float", metavar="ALPHA", group="conformal prediction sets"),
        Option("conformal_score", "non-conformity score of the sets: thr, aps, raps; *_rand randomised (default: thr)",
               default="thr", choices=tuple(SCORES.names()), requires=("conformal",), group="conformal prediction sets"),
        Option("adapt", f"adapt a copy of the model to the stream: {', '.join(list_adapters())} (evaluate: repeatable, "
               "each adds rows '<policy> adapt=<method>')", choices=tuple(list_adapters()), metavar="METHOD",
               commands=("predict", "evaluate"), many=("evaluate",), group=_ADAPT),
        Option("adapt_batch", "photos per adaptation step (default: 64)", type="positive_int", default=64, metavar="N",
               commands=("predict", "evaluate"), requires=("adapt",), group=_ADAPT),
        Option("adapt_reset", "restore the original weights every N batches (default: never)", type="positive_int",
               metavar="N", commands=("predict", "evaluate"), requires=("adapt",), group=_ADAPT),
        Option("topk", "classes to show (default: 5)", type="positive_int", default=5, commands=("predict",),
               group="output"),
    ),
))
