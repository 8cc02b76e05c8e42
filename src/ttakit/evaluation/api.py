"""``ttakit.evaluate``: any registered task scored from Python in one call, the command line's ``evaluate`` on top.

The task is looked up once (:func:`~ttakit.task_spec.get_task`); its spec says how to load the
model and the data when they are given by name, which options it takes (any other is refused),
and which :class:`~ttakit.evaluation.pipeline.EvalTask` runs through the one pipeline. The
result is an :class:`EvaluationResult`: the rows with their paired statistics, and the folder.

Example:
    >>> [p.name for p in named_policies(["hflip", "d4"], {}, default="hflip")]  # rows are named as written
    ['hflip', 'd4']
    >>> res = ttakit.evaluate("examples/segmentation_demo.py:load", "photos/", task="segment", masks="masks/",
    ...                       num_classes=2, policies=["hflip"], out_dir="runs/seg")  # doctest: +SKIP
    >>> res.results["hflip"]["delta_miou"], res.out  # doctest: +SKIP
    (0.004, PosixPath('runs/seg'))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..models import LoadedModel
from ..policy import Policy, PolicyLike, create_policy
from ..runtime.backends import Backend
from ..runtime.config import RunConfig
from ..runtime.prepare import PreparedRun, prepare_run
from ..task_spec import DEFAULT_TASK, TaskColumns, check_options, get_task
from ..validate import check_device
from .pipeline import run_evaluation
from .scoring import EvalOptions

__all__ = ["EvaluationResult", "evaluate", "named_policies"]


@dataclass(frozen=True)
class EvaluationResult:
    """What :func:`evaluate` returns: the ``results.json`` document and where it was written.

    Attributes:
        task: the task's name.
        out: the run folder (``results.json``, ``per_image.csv``, the stored outputs, the report).
        doc: ``results.json`` plus ``per_view`` (each stored view alone) and ``written`` (pages);
            empty on a torchrun rank other than 0.
        against_fp32: at a reduced precision, the plain row against fp32 (with its ``verdict``).
        columns: the task's metric columns (what :meth:`table` shows).
    """

    task: str
    out: Path
    doc: Mapping[str, Any]
    against_fp32: Mapping[str, Any] = field(default_factory=dict)
    columns: TaskColumns | None = None

    @property
    def results(self) -> dict[str, dict[str, Any]]:
        """Every row by key (``plain``, then each policy x merge), each with its metrics and,
        for a policy, its paired comparison with plain (``delta_*``, ``ci_*``, ``verdict``)."""
        return dict(self.doc.get("results", {}))

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The rows in order, each with its ``key``."""
        return [{"key": k, **r} for k, r in self.results.items()]

    @property
    def per_view(self) -> dict[str, Any]:
        """Each stored view's headline metric alone."""
        return dict(self.doc.get("per_view", {}))

    @property
    def verdicts(self) -> list[str]:
        """One line per policy: its paired verdict against plain."""
        return [r["verdict"] for r in self.results.values() if r.get("verdict")]

    def table(self) -> str:
        """The rows as text: policy, merge, views and the task's metric columns."""
        cols = self.columns.metrics if self.columns else ()
        percent = self.columns is None or self.columns.percent

        widths = [max(10, len(h)) for _, h in cols]

        def cell(v: Any, w: int) -> str:
            return f"{'-':>{w}}" if v is None else f"{v:{w}.2%}" if percent else f"{v:{w}.4g}"

        head = f"{'policy':<34} {'merge':<9} {'views':>5} " + " ".join(f"{h:>{w}}" for (_, h), w in zip(cols, widths))
        lines = [head, "-" * len(head)]
        for key, r in self.results.items():
            cells = " ".join(cell(r.get(k), w) for (k, _), w in zip(cols, widths))
            lines.append(f"{key[:34]:<34} {r['merge']:<9} {r['views']:>5} {cells}")
        return "\n".join(lines)

    def __getitem__(self, key: str) -> Any:
        """``result["results"]``: the document's fields, as the task's own evaluate functions return them."""
        return self.doc[key]

    def __bool__(self) -> bool:
        return bool(self.doc)


def named_policies(policies: Sequence[PolicyLike] | PolicyLike | None, data_config: Mapping[str, Any],
                   default: str) -> list[Policy]:
    """Policies as rows: each named as written (a preset, policy text or JSON path); a
    :class:`~ttakit.policy.Policy` keeps its own name."""
    if policies is None:
        policies = [default]
    elif isinstance(policies, (str, Path, Policy)):
        policies = [policies]
    return [p if isinstance(p, Policy) else dataclasses.replace(create_policy(p, data_config), name=str(p))
            for p in policies]


def _prepared(model: Any, spec_name: str, options: Mapping[str, Any], run_config: RunConfig | None,
              device: torch.device | str | None, backend: Backend | None) -> PreparedRun:
    spec = get_task(spec_name)
    if isinstance(model, PreparedRun):
        asked = None if device is None else check_device("device", device)
        if asked is not None and (asked.type, asked.index or 0) != (model.device.type, model.device.index or 0):
            raise ConfigError(f"`device`={str(device)!r} would be ignored: the prepared run is on {model.device}; "
                              "give the device to `ttakit.prepare_run(..., device=...)` instead")
        run = model
    else:
        lm = model if isinstance(model, LoadedModel) else spec.part("load_model")(model, None, None, options)
        run = prepare_run(lm, device=device, verbose=False)
    if run_config is not None:
        run = dataclasses.replace(run, run_config=run_config)
    if backend is not None:
        run = dataclasses.replace(run, backend=backend)
    return run


def evaluate(
    model: LoadedModel | PreparedRun | str | None,
    data: Any,
    policies: Sequence[PolicyLike] | PolicyLike | None = None,
    *,
    task: str = DEFAULT_TASK,
    out_dir: str | Path,
    merges: Sequence[str] | None = None,
    scoring: Any = None,
    options: EvalOptions = EvalOptions(),
    run_config: RunConfig | None = None,
    device: torch.device | str | None = None,
    backend: Backend | None = None,
    progress: Callable[[int], Any] | None = None,
    **task_options: Any,
) -> EvaluationResult:
    """Evaluate the plain model and every policy x merge of ``task`` on ``data``, each policy
    paired with plain on the same images; write ``results.json``, ``per_view.json``, the task's
    per-image files and report into ``out_dir`` (an interrupted run resumes there).

    Args:
        model: a :class:`~ttakit.models.LoadedModel`, a :class:`~ttakit.runtime.prepare.PreparedRun`
            (:func:`ttakit.prepare_run`: device, backend, precision, micro-batch), or a name the
            task's model loader takes (a timm name, ``MODULE:FUNCTION``, a torchvision name).
        data: the task's dataset object, or a folder its data loader reads (with the task's
            options: ``masks`` for segment, ``annotations`` for detect).
        policies: presets, policy text, JSON paths or policies (default: ``hflip``); a row is
            named as the policy is written.
        task: a registered task (:func:`ttakit.list_tasks`): ``classify``, ``segment``, ``detect``, ...
        out_dir: the run folder.
        merges: the merges of every policy (default: each policy's own, else the task's default).
        scoring: the task's scoring object (``ClassifyScoring``, ``SegmentScoring``,
            ``DetectScoring``); default: built from ``task_options``.
        options: chunks, workers, limit, strict, quiet.
        run_config: micro-batch, memory format, autocast (default: the prepared run's).
        device: where the model runs when ``model`` is not a prepared run (default: CUDA if available).
        backend: what runs the model (default: the prepared run's, torch).
        progress: called with the number of images done.
        **task_options: the task's own options (its spec's ``evaluate`` options, e.g.
            ``conformal=0.1``, ``adapt=["bn"]`` for classify; ``num_classes``, ``tile`` for segment).

    Returns:
        An :class:`EvaluationResult` (falsy on torchrun ranks other than 0).

    Raises:
        ConfigError: an option the task does not take (``conformal`` for ``segment``), or one
            that does nothing given the others (``overlap`` without ``tile``; a scoring option
            such as ``adaptive`` beside ``scoring``; ``device`` beside a prepared run on
            another device).
        UnknownNameError: an unknown task.
    """
    spec = get_task(task)
    values = check_options(spec, "evaluate", task_options)
    ignored = [n for n, o in spec.options_of("evaluate").items() if o.scoring and n in task_options]
    if scoring is not None and ignored:
        raise ConfigError(f"{', '.join(f'`{n}`' for n in ignored)} would be ignored: `scoring` is given; "
                          "set them in the scoring object, or leave `scoring` out")
    if merges is not None and spec.merge_option in task_options:
        raise ConfigError(f"give the merges once: `merges` or `{spec.merge_option}`")
    merges = merges if merges is not None else values.get(spec.merge_option)
    run = _prepared(model, spec.name, values, run_config, device, backend)
    lm = run.lm
    if isinstance(data, (str, Path)):
        data = spec.part("load_data")(data, lm, values)
    rows = named_policies(policies, lm.data_config, spec.policy_for("evaluate"))
    job = spec.part("evaluation")(lm, data, run.run_config, scoring, values)
    torch_runner = run.backend.label == "torch"
    doc = run_evaluation(job, lm, data, rows, out_dir=out_dir, merges=merges, run_config=run.run_config,
                         options=options, device=run.device, progress=progress,
                         backend=None if torch_runner else run.backend)
    against = job.against_fp32(lm, data, Path(out_dir), run.backend, options, run.device, None)  # every rank
    return EvaluationResult(spec.name, Path(out_dir), doc, against, spec.columns)
