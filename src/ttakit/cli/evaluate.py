"""``ttakit evaluate``: score plain and TTA policies on a labelled dataset, print the table."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from ..evaluation.adapt_rows import add_rows, evaluate_adapted
from ..evaluation.evaluate import evaluate
from ..evaluation.precision import evaluate_precision
from ..input_check import precropped_note
from ..policy import create_policy, list_presets
from ..task_spec import resolve
from .calibrate import conformal_extras, conformal_lines
from .common import adapt_options, add_data_args, classify_scoring, eval_options, load, load_data, print_written, progress_bar, verdict_lines
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
    """``ttakit evaluate`` (classification): the table, verdicts, conformal sets, adapted rows."""
    options = eval_options(args)
    lm, dev, cfg, backend = load(args)
    # Rows are named by the policy exactly as written (a preset, text or a JSON path).
    policies = [dataclasses.replace(create_policy(t, lm.data_config), name=t) for t in (args.tta or ["hflip"])]
    data = load_data(args, lm, args.data)
    note = precropped_note(data.paths, lm.data_config)
    if note:
        print(note)
    with progress_bar(len(data.head(options.limit)), "evaluate", options.quiet) as bar:
        res = evaluate(lm, data, policies, out_dir=args.out, merges=args.merge, run_config=cfg,
                       scoring=classify_scoring(args), options=options, device=dev, progress=bar, backend=backend, extras=conformal_extras(args))
    against_fp32: dict[str, Any] = {}
    if backend.precision != "fp32":  # its plain top-1 against fp32 on the same images, paired (every rank runs)
        with progress_bar(len(data.head(options.limit)), "fp32 plain", options.quiet) as bar:
            against_fp32 = evaluate_precision(lm, data, args.out, backend, options, dev, progress=bar)
    if not res:  # not rank 0
        return 0
    if args.adapt:  # adapted rows: the data once more, as a stream (they cannot reuse the stored logits)
        with progress_bar(len(data.head(options.limit)), "adapt", options.quiet) as bar:
            rows = evaluate_adapted(lm, data, policies, args.merge, args.adapt, adapt_options(args), cfg, options, dev,
                                    progress=bar, scoring=classify_scoring(args))
        res["results"].update(rows)
        add_rows(args.out, rows)
    print(format_table(res["results"], res["per_view"]))
    for line in conformal_lines(res["results"]):  # none without --conformal
        print(line)
    if against_fp32:
        print(against_fp32["verdict"])
    print_written(res, args.out)
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
