"""``ttakit calibrate``: calibrate a policy's conformal sets on labelled data, write it as JSON."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..conformal import SCORES, Calibration, calibrate, prediction_sets
from ..conformal_record import calibration_record
from ..errors import ConfigError
from ..evaluation.evaluate import evaluate
from ..evaluation.classify_logits import classify_stored, load_logits
from ..evaluation.scoring import policy_runs
from ..policy import Policy, create_policy, save_policy
from .common import add_data_args, add_policy_args, classify_scoring, eval_options, load, load_data, progress_bar

__all__ = ["add_conformal_args", "calibrated_policy", "conformal_lines", "register",
           "set_size_search_lines"]


def add_conformal_args(p: argparse.ArgumentParser) -> None:
    """``--conformal ALPHA`` and ``--conformal-score`` (evaluate, search)."""
    g = p.add_argument_group("conformal prediction sets")
    g.add_argument("--conformal", type=float, default=None, metavar="ALPHA",
                   help="conformal sets covering 1 - ALPHA (e.g. 0.1): evaluate scores them from the stored logits, "
                   "search --objective set_size makes them small")
    g.add_argument("--conformal-score", choices=SCORES.names(), default="thr",
                   help="non-conformity score of the sets: thr, aps, raps; *_rand randomised (default: thr)")


def set_size_search_lines(meta: Mapping[str, Any]) -> list[str]:
    """What ``ttakit search --objective set_size`` prints about its policy's calibration."""
    c = meta["conformal"]
    lines = [f"chosen on {meta['chosen_on']} images, calibrated on {meta['calibrated_on']} others: {c['score']} "
             f"threshold {c['threshold']:.6f} for {1 - c['alpha']:.0%} coverage (the JSON is a calibrated policy)"]
    if "heldout" in meta:
        h = meta["heldout"]
        lines.append(f"held-out (DATA): coverage {h['coverage']:.1%}, mean set size {h['set_size']:.2f} "
                     f"(plain, calibrated on the same images: {h['plain']['coverage']:.1%}, {h['plain']['set_size']:.2f})")
    return lines


def conformal_lines(results: Mapping[str, Any]) -> list[str]:
    """The printed conformal table and verdicts of the rows that have them (none: no lines)."""
    rows = {k: r["conformal"] for k, r in results.items() if "conformal" in r}
    if not rows:
        return []
    first = next(iter(rows.values()))
    head = f"{'policy':<34} {'coverage':>9} {'set size':>9} {'vs plain [95% CI]':>24} {'single':>7} {'empty':>6} {'worst10%':>8}"
    lines = ["", f"conformal sets ({first['score']}, alpha {first['alpha']:g}; {first['splits']} random splits, "
             f"{first['n_cal']} calibration / {first['n_test']} test images):", head, "-" * len(head)]
    for key, c in rows.items():
        vs = "-"
        if c.get("rel_set_size") is not None and c.get("ci_rel_set_size"):
            lo, hi = c["ci_rel_set_size"]
            vs = f"{100 * c['rel_set_size']:+.1f}% [{100 * lo:+.1f}, {100 * hi:+.1f}]"
        lines.append(f"{key[:34]:<34} {c['coverage']:9.2%} {c['set_size']:9.2f} {vs:>24} {c['singleton_rate']:7.1%} "
                     f"{c['empty_rate']:6.1%} {c['worst_class_coverage']:8.1%}")
    return lines + [f"  {c['verdict']}" for c in rows.values()]


def calibrated_policy(policy: Policy, merge: str, calibration: Calibration, data: str,
                      record: Mapping[str, Any] | None = None) -> Policy:
    """``policy`` with its merge fixed and ``meta["conformal"]`` holding the calibration (what
    ``ttakit predict --tta calib.json`` and ``ClassificationTTA`` read back); ``record`` (see
    :func:`~ttakit.conformal_record.calibration_record`) says what it calibrated."""
    meta = {**policy.meta, "conformal": calibration.to_dict(), "conformal_data": data}
    if record is not None:
        meta["conformal_for"] = dict(record)
    return dataclasses.replace(policy, merge=merge, meta=meta)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix != ".json":
        raise ConfigError(f"--out names the calibrated policy file, e.g. calib.json (got {args.out!r})")
    options, scoring = eval_options(args), classify_scoring(args)
    lm, dev, cfg, backend = load(args)
    policy = dataclasses.replace(create_policy(args.tta, lm.data_config), name=args.tta)
    data = load_data(args, lm, args.data)
    work = Path(args.work) if args.work else out.with_suffix(".logits")
    with progress_bar(len(data.head(options.limit)), "calibrate", options.quiet) as bar:
        done = evaluate(lm, data, [policy], out_dir=work, merges=[args.merge] if args.merge else None, run_config=cfg,
                        scoring=scoring, options=options, device=dev, progress=bar, backend=backend)
    if not done:  # not rank 0
        return 0
    # The policy's probabilities from the stored logits, through the one classification path.
    logits, labels, names, _ = load_logits(work)
    run = policy_runs([policy], [args.merge] if args.merge else None)[1]
    probs = classify_stored(logits, {n: i for i, n in enumerate(names)}, run, scoring).probs
    cal = calibrate(probs, labels, args.alpha, args.score)
    record = calibration_record(lm.model, merge=run.merge, model_name=lm.name,
                                adaptive=scoring.adaptive if scoring.adaptive is not None else policy.meta.get("adaptive"))
    path = save_policy(calibrated_policy(policy, run.merge, cal, args.data, record), out)
    sizes = prediction_sets(probs, cal).sum(-1).float()
    print(f"calibrated {policy.name} ({len(policy.views)} views, merge {run.merge}) on {cal.n} images: "
          f"{cal.score} threshold {cal.threshold:.6f} for {cal.coverage:.0%} coverage "
          f"(mean set size {float(sizes.mean()):.2f} on these images)")
    print(f"wrote {path} (use it as --tta {path}); logits kept in {work}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``calibrate`` to the command parser."""
    p = sub.add_parser("calibrate", help="calibrate a policy's conformal prediction sets (a JSON policy to predict with)")
    add_data_args(p)
    add_policy_args(p)
    next(a for a in p._actions if a.dest == "out").help = "the calibrated policy JSON to write, e.g. calib.json"
    g = p.add_argument_group("conformal")
    g.add_argument("--alpha", type=float, default=0.1, help="miscoverage: sets cover 1 - ALPHA of new images (default: 0.1)")
    g.add_argument("--score", choices=SCORES.names(), default="thr",
                   help="non-conformity score: thr (smallest sets), aps, raps (adaptive); *_rand randomised (default: thr)")
    g.add_argument("--work", default=None, help="folder for the stored logits (default: OUT with .logits)")
    p.set_defaults(func=_cmd_calibrate)
