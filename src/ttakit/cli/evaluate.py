"""``ttakit evaluate``: score plain and TTA policies on a labelled dataset, print the table."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from ..evaluation.api import evaluate
from ..input_check import precropped_note
from ..policy import create_policy, list_presets
from ..task_spec import resolve
from .calibrate import conformal_lines
from .common import adapt_from_policies, add_data_args, eval_options, load, load_data, print_written, progress_bar, verdict_lines
from .options import add_task_arguments, task_values

__all__ = ["evaluate_classify", "format_table", "register"]


def format_table(results: dict[str, Any], per_view: dict[str, float] | None = None) -> str:
    """The printed results table (policies, then single views)."""
    head = (f"{'policy':<34} {'merge':<10} {'views':>5} {'top1':>7} {'top5':>7} {'nll':>7} {'nll_cal':>7} "
            f"{'ece':>6} {'fixed':>6} {'broken':>6} {'img/s':>8}")
    lines = [head, "-" * len(head)]
    for key, r in results.items():
        ips = f"{r['images_per_s']:8.1f}" if r.get("images_per_s") else f"{'-':>8}"
        extra = f"  ({r['forwards_fraction']:.0%} of forwards)" if "forwards_fraction" in r else ""
        lines.append(
            f"{key[:34]:<34} {r['merge']:<10} {r['views']:>5} {r['top1']:7.2%} {r['top5']:7.2%} {r['nll']:7.4f} "
            f"{r['nll_calibrated']:7.4f} {r['ece']:6.3f} {r['fixed']:>6} {r['broken']:>6} {ips}{extra}"
        )
    lines += verdict_lines(results)
    if per_view:
        lines += ["", "single views (top-1 alone):"]
        for name, top1 in sorted(per_view.items(), key=lambda t: -t[1]):
            lines.append(f"  {name:<40} {top1:7.2%}")
    return "\n".join(lines)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    spec, _ = task_values(args, "evaluate")  # the task, looked up once; its options checked
    return int(resolve(spec.commands["evaluate"])(args) or 0)


def evaluate_classify(args: argparse.Namespace) -> int:
    """``ttakit evaluate`` (classification): :func:`ttakit.evaluate` of the flags; the table,
    verdicts, conformal sets, adapted rows and the fp32 check printed."""
    options = eval_options(args)
    run = load(args)
    data = load_data(args, run.lm, args.data)
    written = [replace(create_policy(t, run.lm.data_config), name=t) for t in (args.tta or ["hflip"])]  # as written
    carried = adapt_from_policies(written, args, many=True)
    if carried and "adapt" not in args.given_options:  # a policy file's own adaptation (search --shifts)
        args.given_options.update(adapt=args.adapt, adapt_batch=args.adapt_batch)
    for note in (carried, precropped_note(data.paths, run.lm.data_config)):
        if note:
            print(note)
    with progress_bar(len(data.head(options.limit)), "evaluate", options.quiet) as bar:
        res = evaluate(run, data, args.tta, task=args.task, out_dir=args.out, options=options, progress=bar,
                       **args.given_options)
    if not res:  # not rank 0
        return 0
    print(format_table(res.results, res.per_view))
    for line in conformal_lines(res.results):  # none without --conformal
        print(line)
    if res.against_fp32:
        print(res.against_fp32["verdict"])
    print_written(dict(res.doc), args.out)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``evaluate`` to the command parser."""
    p = sub.add_parser("evaluate", help="score plain and TTA policies on a labelled dataset")
    add_data_args(p)
    p.add_argument("--tta", action="append", default=None, metavar="POLICY",
                   help=f"policy (repeatable; default: hflip): preset ({', '.join(list_presets())}), policy text or "
                   "JSON file")
    add_task_arguments(p, "evaluate")
    p.set_defaults(func=_cmd_evaluate)
