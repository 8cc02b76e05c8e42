"""Argument helpers shared by the commands: model, policy and run options, and their resolution.

Strings from the command line (device, model, policy, merge, micro-batch) are resolved here,
once, into library objects; the commands then only call library functions and print.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..adapt import AdaptOptions, list_adapters
from ..datasets import LabelledImages, detect_dataset
from ..evaluation.classify_logits import ClassifyScoring
from ..evaluation.scoring import EvalOptions
from ..merge import list_merges
from ..models import DEFAULT_MODEL, LoadedModel
from ..policy import Policy, create_policy, list_presets
from ..runtime.backends import PRECISIONS, Backend, list_backends
from ..runtime.config import RunConfig
from ..runtime.prepare import AMP, PreparedRun, load_classifier, resolve_device
from ..runtime.prepare import prepare_run as run_setup
from ..runtime.distributed import DistContext
from ..tasks.classify import CONFIDENCE, ClassificationTTA

__all__ = [
    "WEIGHTS_HELP",
    "Loaded",
    "adapt_from_policies",
    "adapt_options",
    "add_adapt_args",
    "add_data_args",
    "add_model_args",
    "add_policy_args",
    "classification_tta",
    "classify_scoring",
    "load",
    "load_classifier",
    "load_data",
    "metric_table",
    "eval_options",
    "positive_int",
    "prepare_run",
    "print_written",
    "progress_bar",
    "resolve_device",
    "verdict_lines",
    "weights_note",
]

# --weights of every command that loads a model by name.
WEIGHTS_HELP = ("FILE: a .pth/.pt/.safetensors state dict; 'random': random weights (untrained, for tests); "
                "'hub': the hub's pretrained weights. Default: pretrained weights, embedded where their package is "
                "installed (see 'ttakit models'), else from the hub (timm, torchvision), cached after one download")


def _int_at_least(low: int, kind: str) -> Callable[[str], int]:
    """An argparse type accepting integers >= ``low``, so a bad size is a one-line usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"expected {kind} integer, got {text!r}") from e
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {kind} integer, got {value}")
        return value

    return parse


positive_int = _int_at_least(1, "a positive")
_non_negative_int = _int_at_least(0, "a non-negative")


def _micro_batch(text: str) -> str | int:
    return text if text == "auto" else positive_int(text)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--weights``, ``--labels``, ``--device``, ``--amp``, ``--micro-batch``, ``--compile``,
    ``--backend``, ``--precision``."""
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, metavar="SPEC",
                   help=f"timm model name (default: {DEFAULT_MODEL}), or MODULE:FUNCTION / path/file.py:FUNCTION "
                   "returning an nn.Module or a LoadedModel (every task; torchvision names for --task detect/segment)")
    g.add_argument("--weights", default=None, metavar="FILE|random|hub", help=WEIGHTS_HELP)
    g.add_argument("--labels", default=None, help="class names: one per line, or a JSON list")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    g.add_argument("--amp", choices=sorted(AMP), default=None, help="autocast dtype on GPU")
    g.add_argument("--micro-batch", default=None, type=_micro_batch,
                   help="images per model forward, or 'auto' to measure once per device and cache (default: per device)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model first")
    g.add_argument("--backend", choices=list_backends(), default="torch",
                   help="what runs the model: torch (default), or an ONNX export (cached) run by onnxruntime or "
                   "openvino (pip install 'ttakit[onnx]' / 'ttakit[openvino]')")
    g.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16/fp16: torch autocast, or OpenVINO's inference precision where the CPU has it; int8: "
                   "onnxruntime/openvino on a graph quantised on --calibration photos. Checked against fp32 (default: fp32)")
    g.add_argument("--calibration", default=None, metavar="DIR",
                   help="photos to calibrate --precision int8 on (default: 64 photos spread over DATA)")


def add_policy_args(p: argparse.ArgumentParser, many: bool = False) -> None:
    """``--tta`` and ``--merge`` (repeatable with ``many``), ``--adaptive``, ``--confidence``."""
    g = p.add_argument_group("test-time augmentation")
    presets = ", ".join(list_presets())
    if many:
        g.add_argument("--tta", action="append", default=None, metavar="POLICY",
                       help=f"policy (repeatable): preset ({presets}), policy text or JSON file")
        g.add_argument("--merge", action="append", default=None, choices=list_merges(),
                       help="merge mode (repeatable; default: the policy's, else mean)")
    else:
        g.add_argument("--tta", default="hflip", metavar="POLICY",
                       help=f"preset ({presets}), policy text such as 'hflip*scale(0.9,1,1.1)', or a JSON file")
        g.add_argument("--merge", default=None, choices=list_merges(), help="merge mode (default: the policy's, else mean)")
    g.add_argument("--adaptive", type=float, default=None, metavar="THRESHOLD",
                   help="run the other views only where the plain view's confidence is below THRESHOLD")
    g.add_argument("--confidence", choices=sorted(CONFIDENCE), default="max_prob",
                   help="confidence used by --adaptive (default: max_prob)")


def add_adapt_args(p: argparse.ArgumentParser, many: bool = False) -> None:
    """``--adapt METHOD`` (repeatable with ``many``), ``--adapt-batch``, ``--adapt-reset``."""
    g = p.add_argument_group("test-time adaptation (the photos are one stream, in folder or CSV row order)")
    g.add_argument("--adapt", action="append" if many else "store", default=None, choices=list_adapters(),
                   metavar="METHOD", help=f"adapt a copy of the model to the stream: {', '.join(list_adapters())}"
                   + (" (repeatable: each adds rows '<policy> adapt=<method>')" if many else ""))
    g.add_argument("--adapt-batch", type=positive_int, default=64, metavar="N",
                   help="photos per adaptation step (default: 64)")
    g.add_argument("--adapt-reset", type=positive_int, default=None, metavar="N",
                   help="restore the original weights every N batches (default: never)")


def adapt_from_policies(policies: Sequence[Policy], args: argparse.Namespace, many: bool = False) -> str | None:
    """Take ``--adapt`` from a policy file's ``meta["adapt"]`` (``search --shifts`` writes it)
    when ``--adapt`` is not given; an explicit ``--adapt`` wins. Returns the note to print."""
    carried = [(p.name, p.meta["adapt"]) for p in policies if isinstance(p.meta.get("adapt"), Mapping)]
    if not carried:
        return None
    name, spec = carried[0]
    if args.adapt:
        given = args.adapt if isinstance(args.adapt, str) else ",".join(args.adapt)
        return f"note: --adapt {given} overrides adapt={spec['method']} from {name}"
    args.adapt = [spec["method"]] if many else spec["method"]
    args.adapt_batch = int(spec.get("batch", getattr(args, "adapt_batch", 64)))
    return f"note: adapt={spec['method']} (batch {args.adapt_batch}) from {name}"


def adapt_options(args: argparse.Namespace) -> AdaptOptions:
    """The :class:`~ttakit.adapt.AdaptOptions` of ``--adapt-batch`` and ``--adapt-reset``."""
    return AdaptOptions(batch=getattr(args, "adapt_batch", 64), reset=getattr(args, "adapt_reset", None),
                        strict=bool(getattr(args, "strict", False)))


def add_data_args(p: argparse.ArgumentParser) -> None:
    """DATA and the options of a dataset run (chunks, workers, output folder)."""
    p.add_argument("data", help="ImageFolder tree, flat folder of <wnid>_*.JPEG files, or a path,label CSV")
    add_model_args(p)
    g = p.add_argument_group("run")
    g.add_argument("--batch-size", type=positive_int, default=32, help="images per chunk (default: 32)")
    g.add_argument("--workers", type=_non_negative_int, default=2, help="photo decoding threads (default: 2)")
    g.add_argument("--limit", type=positive_int, default=None, help="only the first N images")
    g.add_argument("--out", required=True, help="output folder (reused to resume an interrupted run)")
    g.add_argument("--strict", action="store_true", help="stop at the first unreadable file instead of skipping it")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def weights_note(weights: str) -> str:
    """Where a model's weights came from, as a header shows it: random ones said plainly."""
    return "RANDOM weights, untrained: --weights random" if weights == "random" else weights


Loaded = PreparedRun  # what the model options resolve to (see :func:`load`)


def load(args: argparse.Namespace) -> PreparedRun:
    """The classifier, device, run config and backend that the model options name."""
    return prepare_run(load_classifier(args.model, args.weights, args.labels), args)


def prepare_run(lm: LoadedModel, args: argparse.Namespace, *, kind: str = "classifier", exportable: bool = True,
                tunable: bool = True) -> PreparedRun:
    """:func:`ttakit.prepare_run <ttakit.runtime.prepare.prepare_run>` of the shared run flags
    (``--device``, ``--backend``, ``--precision``, ``--calibration``, ``--amp``,
    ``--micro-batch``, ``--compile``); int8 calibrates on DATA unless ``--calibration`` says."""
    return run_setup(lm, device=args.device, backend=getattr(args, "backend", "torch"),
                     precision=getattr(args, "precision", "fp32"), amp=args.amp,
                     calibration=getattr(args, "calibration", None), calibration_default=getattr(args, "data", None),
                     micro_batch=args.micro_batch, compile=getattr(args, "compile", False), kind=kind,
                     exportable=exportable, tunable=tunable, verbose=not getattr(args, "quiet", False))


def classification_tta(lm: LoadedModel, cfg: RunConfig, args: argparse.Namespace,
                       backend: Backend | None = None) -> ClassificationTTA:
    """The wrapper that ``--tta``, ``--merge``, ``--adaptive``, ``--confidence`` and ``--adapt``
    describe, run by ``backend`` (default: the torch model)."""
    if getattr(args, "tta", None) and hasattr(args, "adapt"):  # a policy file may carry its adaptation
        note = adapt_from_policies([create_policy(args.tta, lm.data_config)], args)
        if note:
            print(note, file=sys.stderr)
    adapt = getattr(args, "adapt", None)
    return ClassificationTTA(
        lm.model, args.tta, args.merge, norm=lm.normalization, run_config=cfg,
        adaptive=args.adaptive, confidence=args.confidence, data_config=lm.data_config, backend=backend,
        adapt=adapt, adapt_options=adapt_options(args),
    )


def load_data(args: argparse.Namespace, lm: LoadedModel, data: str) -> LabelledImages:
    """Detect the dataset layout and say what was found (always, ``--quiet`` hides the bar only)."""
    ds = detect_dataset(data, lm.class_names)
    if DistContext.current().is_main:
        print(f"data: {ds.describe()}" + (f" (first {args.limit} used)" if args.limit else ""))
    return ds


def eval_options(args: argparse.Namespace) -> EvalOptions:
    """The :class:`EvalOptions` of a dataset command."""
    return EvalOptions(
        batch_size=args.batch_size, workers=args.workers, limit=args.limit, strict=args.strict, quiet=args.quiet,
    )


def classify_scoring(args: argparse.Namespace) -> ClassifyScoring:
    """The :class:`ClassifyScoring` that ``--adaptive`` and ``--confidence`` describe."""
    return ClassifyScoring(adaptive=getattr(args, "adaptive", None), confidence=getattr(args, "confidence", "max_prob"))


def metric_table(results: dict[str, Any], columns: Sequence[tuple[str, str]], per_view: dict[str, Any] | None,
                 per_view_label: str) -> str:
    """The printed table of a detection or segmentation run: policy, merge, views, the
    ``(key, header)`` metric columns as percentages, images/s; the verdicts; each view alone."""

    def pct(v: float | None) -> str:
        return f"{v:8.2%}" if v is not None else f"{'-':>8}"

    head = f"{'policy':<34} {'merge':<9} {'views':>5} " + " ".join(f"{h:>8}" for _, h in columns) + f" {'img/s':>8}"
    lines = [head, "-" * len(head)]
    for key, r in results.items():
        ips = f"{r['images_per_s']:8.1f}" if r.get("images_per_s") else f"{'-':>8}"
        cells = " ".join(pct(r.get(k)) for k, _ in columns)
        lines.append(f"{key[:34]:<34} {r['merge']:<9} {r['views']:>5} {cells} {ips}")
    lines += verdict_lines(results)
    if per_view:
        lines += ["", f"single views ({per_view_label} alone):"]
        lines += [f"  {n:<40} {pct(m)}" for n, m in sorted(per_view.items(), key=lambda t: -(t[1] or 0))]
    return "\n".join(lines)


def verdict_lines(results: dict[str, Any]) -> list[str]:
    """The printed paired verdicts of every policy row (none: no lines)."""
    verdicts = [r["verdict"] for r in results.values() if r.get("verdict")]
    return ["", "against plain (paired, same images):"] + [f"  {v}" for v in verdicts] if verdicts else []


def print_written(res: dict[str, Any], out: str) -> None:
    """The skipped files (the first ten) and the files an evaluation wrote."""
    if res["skipped"]:
        print(f"\nskipped {len(res['skipped'])} file(s):")
        for s in res["skipped"][:10]:
            print(f"  {s['path']}: {s['reason']}")
    written = ", ".join(["per_view.json", "per_image.csv"] + [Path(p).name for p in res.get("written", [])])
    print(f"\nwrote {Path(out) / 'results.json'}, {written}")


@contextlib.contextmanager
def progress_bar(total: int, label: str, quiet: bool) -> Iterator[Callable[[int], object]]:
    """A tqdm bar on stderr (images/s and ETA) on rank 0 of a terminal, else a no-op; yields
    its ``update(n)``. With several ranks, rank 0's share is extrapolated to the total."""
    dist = DistContext.current()
    if quiet or not dist.is_main or not sys.stderr.isatty():
        yield lambda n: None
        return
    with tqdm(total=total, desc=label, unit="img", file=sys.stderr, dynamic_ncols=True) as bar:
        yield lambda n: bar.update(n * dist.world_size)
