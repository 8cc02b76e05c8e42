"""``ttakit search``: choose a policy on labelled data and write it as JSON."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..evaluation.evaluate import evaluate
from ..evaluation.report import write_report
from ..evaluation.search import SearchOptions, search_policy
from ..evaluation.classify_logits import load_logits
from ..evaluation.shift_search import shift_policy
from ..evaluation.shift_streams import DEFAULT_FAMILIES, ShiftPlan, estimate_seconds, shift_logits
from ..models import LoadedModel
from ..errors import ConfigError
from ..policy import Policy, create_policy, save_policy
from ..runtime.backends import Backend
from ..runtime.config import RunConfig
from ..runtime.distributed import DistContext
from .calibrate import add_conformal_args, set_size_search_lines
from .common import add_data_args, classify_scoring, eval_options, load, load_data, positive_int, progress_bar

__all__ = ["register"]


def _pool_logits(args: argparse.Namespace, lm: LoadedModel, cfg: RunConfig, dev: Any, pool: Policy,
                 data_arg: str, sub: str, backend: Backend | None = None) -> Any:
    """Evaluate the whole pool once (every rank takes part); rank 0 reads the logits back."""
    options = eval_options(args)
    data = load_data(args, lm, data_arg)
    out = Path(args.out) / sub
    with progress_bar(len(data.head(options.limit)), f"pool ({sub})", options.quiet) as bar:
        done = evaluate(lm, data, [pool], out_dir=out, run_config=cfg, scoring=classify_scoring(args), options=options,
                        device=dev, progress=bar, backend=backend)
    return load_logits(out) if done else None


def _print_search(policy: Policy, path: Path) -> None:
    meta = policy.meta
    print(f"\nchosen policy ({len(policy.views)} views, {meta['how']}):")
    for i, v in enumerate(policy.views):
        w = f"  weight {policy.weights[i]:.3f}" if policy.weights else ""
        print(f"  {v.name}{w}")
    print(f"temperature {policy.temperature:.3f}")
    if "conformal" in meta:  # --objective set_size: a calibrated policy
        print("\n".join(set_size_search_lines(meta)) + f"\nwrote {path} (use it as --tta {path})")
        return
    print(f"selection data: top1 {meta['selection_top1']:.2%} (plain {meta['plain_top1']:.2%}), "
          f"calibrated nll {meta['selection_nll']:.4f} (plain {meta['plain_nll']:.4f})")
    if "kfold" in meta:
        k = meta["kfold"]
        print(f"{k['folds']}-fold held-out estimate: top1 {k['top1']:.2%} (plain {k['plain_top1']:.2%}), "
              f"nll {k['nll']:.4f} (plain {k['plain_nll']:.4f}); views per fold {k['views_per_fold']}")
        if "note" in k:
            print(f"note: {k['note']}")
    if "heldout" in meta:
        h = meta["heldout"]
        print(f"held-out (DATA): top1 {h['top1']:.2%} (plain {h['plain']['top1']:.2%}), nll {h['nll']:.4f} "
              f"(plain {h['plain']['nll']:.4f})")
    if "adaptive" in meta:
        print(f"adaptive threshold {meta['adaptive']:.4f} for at most {meta['adaptive_target_cost']:.0%} of the view-forwards")
    print(f"wrote {path} (use it as --tta {path})")


def _shift_lines(policy: Policy) -> list[str]:
    """The left-out estimate of every candidate, then the chosen one beside its in-sample score."""
    sh = policy.meta["shifts"]
    set_size = sh["objective"] == "set_size"
    lines = [f"candidates, each family left out in turn ({len(sh['families'])} families, {sh['photos']} photos):"]
    for m, c in sh["candidates"].items():
        mark = "*" if m == sh["method"] else " "
        if set_size:
            lines.append(f" {mark} adapt={m:<5} set size {c['set_size']:.2f} (plain {c['plain_set_size']:.2f}), "
                         f"{c['ratio'] - 1:+.1%} [{c['ci_ratio'][0] - 1:+.1%}, {c['ci_ratio'][1] - 1:+.1%}]")
        else:
            d = c["paired"]
            lines.append(f" {mark} adapt={m:<5} top1 {c['top1']:.2%} (plain {c['plain_top1']:.2%}), "
                         f"{100 * d['delta_top1']:+.1f} pt [{100 * d['ci_top1'][0]:+.1f}, {100 * d['ci_top1'][1]:+.1f}], "
                         f"nll {c['nll']:.4f} (plain {c['plain_nll']:.4f})")
    lo = sh["lofo"]
    lines.append("per left-out family (chosen candidate):")
    for fam, r in lo["per_family"].items():
        what = (f"set size {r['set_size']:.2f} (plain {r['plain_set_size']:.2f})" if set_size
                else f"top1 {r['top1']:.2%} (plain {r['plain_top1']:.2%})")
        lines.append(f"  {fam:<15} {what}  views {' + '.join(r['views'])}")
    ins = sh["in_sample"]
    lines.append("in-sample (chosen on every family, measured on the same photos): " +
                 (f"set size {ins['set_size']:.2f} (plain {ins['plain_set_size']:.2f})" if set_size
                  else f"top1 {ins['top1']:.2%} (plain {ins['plain_top1']:.2%})"))
    return lines


def _cmd_search_shifts(args: argparse.Namespace) -> int:
    """``search --shifts``: views and adaptation chosen on shifted copies, leaving one family out."""
    for flag, value in (("--val", args.val), ("--learn-weights", args.learn_weights), ("--target-cost", args.target_cost)):
        if value:
            raise ConfigError(f"{flag} does nothing with --shifts (the families left out are the held-out data); leave it out")
    if (args.objective == "set_size") != (args.conformal is not None):
        raise ConfigError("--objective set_size and --conformal ALPHA go together")
    plan = ShiftPlan(families=tuple(args.shifts.split(",")), severities=tuple(args.severities),
                     limit=args.shift_limit or args.limit, methods=tuple(args.adapt_candidates.split(",")),
                     adapt_batch=args.adapt_batch)
    lm, dev, cfg, _ = load(args)
    pool = create_policy(args.pool or "shift_pool", lm.data_config)
    data = load_data(args, lm, args.data)
    cost = estimate_seconds(lm, data, pool, plan, cfg, dev)
    print(f"shifts: {', '.join(plan.families)} at severity {','.join(map(str, plan.severities))}; "
          f"candidates adapt={', '.join(plan.methods)} x {len(pool.views)} views")
    print(f"expected cost: about {cost['seconds'] / 60:.1f} min ({cost['photos']} photos, {cost['forwards']:,} view-forwards "
          f"at {1000 * cost['per_forward']:.0f} ms, shifted copies at {1000 * cost['per_copy']:.0f} ms each)")
    options = eval_options(args)
    total = cost["photos"] * len(plan.methods)
    with progress_bar(total, "shifted streams", options.quiet) as bar:
        streams = shift_logits(lm, data, pool, plan, Path(args.out) / "shifts", cfg, options, dev, bar)
    provenance = {"pool": pool.name, "data": args.data}
    policy = shift_policy(pool, streams, args.objective, args.budget, args.conformal, args.conformal_score,
                          plan.adapt_batch, args.name, provenance)
    path = save_policy(policy, Path(args.out) / "policy.json")
    adapt = policy.meta.get("adapt", {}).get("method", "none")
    print(f"\nchosen policy ({len(policy.views)} views, adapt={adapt}, temperature {policy.temperature:.3f}):")
    for v in policy.views:
        print(f"  {v.name}")
    print("\n".join(_shift_lines(policy)))
    print(f"wrote {path} (use it as --tta {path}; it carries adapt={adapt})")
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    if args.shifts:
        return _cmd_search_shifts(args)
    options = SearchOptions(budget=args.budget, objective=args.objective, folds=args.folds,
                            learn_weights=args.learn_weights, target_cost=args.target_cost, name=args.name,
                            conformal=args.conformal, conformal_score=args.conformal_score)
    lm, dev, cfg, backend = load(args)
    pool = create_policy(args.pool or "search_pool", lm.data_config)
    on_data = _pool_logits(args, lm, cfg, dev, pool, args.data, "data", backend)
    on_val = _pool_logits(args, lm, cfg, dev, pool, args.val, "val", backend) if args.val else None
    if not DistContext.current().is_main:
        return 0
    logits, labels, _, _ = on_data
    selection = (on_val[0], on_val[1]) if on_val is not None else None
    provenance = {"pool": pool.name, "data": args.data, "selection": args.val or args.data}
    policy = search_policy(pool, logits, labels, options, selection, provenance)
    path = save_policy(policy, Path(args.out) / "policy.json")
    _print_search(policy, path)
    # The pool's report again, now with the search trace (evaluate wrote it before the search).
    page = write_report(Path(args.out) / "data", search_policy_path=path, class_names=lm.class_names,
                        data_config=lm.data_config, scoring=classify_scoring(args))
    print(f"wrote {page}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``search`` to the command parser."""
    p = sub.add_parser("search", help="choose a policy on labelled data (greedy policy search)")
    add_data_args(p)
    g = p.add_argument_group("search")
    g.add_argument("--pool", default=None, help="candidate views as a policy (default: flips, input stages "
                   "re-sampled from the photo, scales, crops, rotations, shifts, brightness/contrast)")
    g.add_argument("--budget", type=positive_int, default=5, help="maximum views in the policy (default: 5)")
    g.add_argument("--objective", choices=("nll", "top1", "set_size"), default="nll",
                   help="what the search improves (default: nll; set_size needs --conformal ALPHA)")
    g.add_argument("--val", default=None, help="separate selection data; otherwise k-fold on DATA")
    g.add_argument("--folds", type=positive_int, default=5, help="k of the k-fold estimate (default: 5)")
    g.add_argument("--learn-weights", action="store_true", help="also fit per-view weights and a temperature")
    g.add_argument("--target-cost", type=float, default=None,
                   help="pick an adaptive-TTA threshold spending at most this share of the view-forwards")
    g.add_argument("--name", default="searched", help="policy name in reports (default: searched)")
    g = p.add_argument_group("shifts (choose by what transfers to shifts nobody searched on)")
    g.add_argument("--shifts", nargs="?", const=",".join(DEFAULT_FAMILIES), default=None, metavar="FAMILIES",
                   help="score candidates on shifted copies of DATA, one family at a time, and choose the views and "
                   "adaptation that do best on each family left out: a comma list of families or groups (noise, blur, "
                   f"weather, digital, geometry, all) and clean (default: {','.join(DEFAULT_FAMILIES)})")
    g.add_argument("--severities", type=lambda t: [int(x) for x in t.split(",")], default=[3],
                   help="severities 1-5 of the shifted copies, a comma list (default: 3)")
    g.add_argument("--shift-limit", type=positive_int, default=None, metavar="N",
                   help="photos dealt out to the families (default: all, or --limit)")
    g.add_argument("--adapt-candidates", default="none,bn,auto", metavar="METHODS",
                   help="adaptation methods to consider with --shifts (default: none,bn,auto; tent and eata cost a "
                   "backward pass per batch)")
    g.add_argument("--adapt-batch", type=positive_int, default=64, metavar="N",
                   help="photos per adaptation step (default: 64)")
    add_conformal_args(p)
    p.set_defaults(func=_cmd_search)
