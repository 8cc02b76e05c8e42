"""``ttakit search``: choose a policy on labelled data and write it as JSON."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..evaluation.evaluate import evaluate
from ..evaluation.report import write_report
from ..evaluation.search import SearchOptions, search_policy
from ..evaluation.classify_logits import load_logits
from ..models import LoadedModel
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


def _cmd_search(args: argparse.Namespace) -> int:
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
    add_conformal_args(p)
    p.set_defaults(func=_cmd_search)
