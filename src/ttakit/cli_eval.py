"""Dataset-level commands of the ``ttakit`` CLI: evaluate, search, soup (registered by cli)."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["COMMANDS"]


def _common(p: argparse.ArgumentParser) -> None:
    from .cli import _add_model_args

    p.add_argument("data", help="ImageFolder tree, flat folder of <wnid>_*.JPEG files, or a path,label CSV")
    _add_model_args(p)
    g = p.add_argument_group("run")
    g.add_argument("--batch-size", type=int, default=32, help="images per chunk (default: 32)")
    g.add_argument("--workers", type=int, default=2, help="DataLoader decoding workers (default: 2)")
    g.add_argument("--limit", type=int, default=None, help="only the first N images")
    g.add_argument("--out", required=True, help="output folder (reused to resume an interrupted run)")
    g.add_argument("--strict", action="store_true", help="stop at the first unreadable file instead of skipping it")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def _options(args: argparse.Namespace) -> Any:
    from .evaluate import EvalOptions

    return EvalOptions(
        batch_size=args.batch_size, workers=args.workers, limit=args.limit, strict=args.strict, quiet=args.quiet,
        adaptive=getattr(args, "adaptive", None), confidence=getattr(args, "confidence", "max_prob"),
    )


def _dataset(args: argparse.Namespace, lm: Any, data: str) -> Any:
    from .datasets import detect_dataset
    from .distributed import DistContext

    ds = detect_dataset(data, lm.class_names)
    if DistContext.from_env().is_main:  # always said, --quiet only hides the progress bar
        print(f"data: {ds.describe()}" + (f" (first {args.limit} used)" if args.limit else ""))
    return ds


# --------------------------------------------------------------------------- evaluate
def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .cli import _load
    from .evaluate import evaluate, format_table
    from .policy import create_policy

    # Rows are named by the policy exactly as written (a preset, text or a JSON path).
    policies = [dataclasses.replace(create_policy(t), name=t) for t in (args.tta or ["hflip"])]
    lm, dev, cfg = _load(args)
    data = _dataset(args, lm, args.data)
    res = evaluate(lm, data, policies, args.merge, args.out, cfg, _options(args), dev)
    if not res:  # not rank 0
        return 0
    print(format_table(res["results"], res["per_view"]))
    if res["skipped"]:
        print(f"\nskipped {len(res['skipped'])} file(s):")
        for s in res["skipped"][:10]:
            print(f"  {s['path']}: {s['reason']}")
    print(f"\nwrote {Path(args.out) / 'results.json'}, per_image.csv, per_view.json, accuracy.png, logits/")
    return 0


def _register_evaluate(sub: argparse._SubParsersAction) -> None:
    from .cli import _add_policy_args

    p = sub.add_parser("evaluate", help="score plain and TTA policies on a labelled dataset")
    _common(p)
    _add_policy_args(p, many=True)
    p.set_defaults(func=_cmd_evaluate)


# --------------------------------------------------------------------------- search
def _pool_logits(args: argparse.Namespace, lm: Any, cfg: Any, dev: Any, pool: Any, data_arg: str, sub: str) -> Any:
    from .evaluate import evaluate, load_logits

    data = _dataset(args, lm, data_arg)
    out = Path(args.out) / sub
    done = evaluate(lm, data, [pool], None, out, cfg, _options(args), dev)
    return load_logits(out) if done else None  # rank 0 alone holds every chunk


def _cmd_search(args: argparse.Namespace) -> int:
    from .cli import _load
    from .distributed import DistContext
    from .policy import Policy, create_policy, save_policy
    from .search import (
        DEFAULT_POOL, calibrated_temperature, evaluate_choice, greedy_search, kfold_estimate, learn_weights, pick_adaptive_threshold,
    )

    pool = create_policy(args.pool or DEFAULT_POOL)
    lm, dev, cfg = _load(args)
    # Every rank takes part in each (distributed) evaluation; rank 0 then searches alone.
    on_data = _pool_logits(args, lm, cfg, dev, pool, args.data, "data")
    on_val = _pool_logits(args, lm, cfg, dev, pool, args.val, "val") if args.val else on_data
    if not DistContext.from_env().is_main:
        return 0
    logits, labels, _, _ = on_data
    sel_logits, sel_labels, _, _ = on_val
    res = greedy_search(sel_logits, sel_labels, args.budget, args.objective)
    cols, temperature, weights = list(res.cols), res.temperature, None
    how = f"greedy policy search ({args.objective}, budget {args.budget})"
    if args.learn_weights:
        w, t = learn_weights(sel_logits, sel_labels, cols)
        learned = evaluate_choice(sel_logits, sel_labels, list(dict.fromkeys(cols)), t, w)
        greedy = evaluate_choice(sel_logits, sel_labels, cols, temperature)
        if learned["nll"] <= greedy["nll"]:  # keep the weights only where they help on selection data
            cols, weights, temperature = list(dict.fromkeys(cols)), w, t
            how += " + learned weights"
    selection = evaluate_choice(sel_logits, sel_labels, cols, temperature, weights)
    # Plain at its own calibrated temperature: the fair baseline for a calibrated NLL.
    plain_t = calibrated_temperature(sel_logits[:, 0], sel_labels)
    plain_sel = evaluate_choice(sel_logits, sel_labels, [0], plain_t)
    meta: dict[str, Any] = {
        "how": how, "pool": pool.name, "data": args.data, "selection": args.val or args.data,
        "selection_top1": selection["top1"], "selection_nll": selection["nll"],
        "plain_top1": plain_sel["top1"], "plain_nll": plain_sel["nll"], "trace": list(res.trace),
    }
    if args.val:
        meta["heldout"] = {**evaluate_choice(logits, labels, cols, temperature, weights),
                           "plain": evaluate_choice(logits, labels, [0], plain_t)}
    else:
        meta["kfold"] = kfold_estimate(logits, labels, args.budget, args.objective, args.folds, learn=args.learn_weights)
    if args.target_cost is not None:
        meta["adaptive"] = pick_adaptive_threshold(sel_logits[:, 0], len(cols), args.target_cost)
        meta["adaptive_target_cost"] = args.target_cost
    policy = Policy(tuple(pool.views[c] for c in cols), weights=weights, merge="mean", temperature=temperature,
                    name=args.name, meta=meta)
    path = save_policy(policy, Path(args.out) / "policy.json")
    _print_search(policy, meta, path)
    return 0


def _print_search(policy: Any, meta: dict[str, Any], path: Path) -> None:
    print(f"\nchosen policy ({len(policy.views)} views, {meta['how']}):")
    for i, v in enumerate(policy.views):
        w = f"  weight {policy.weights[i]:.3f}" if policy.weights else ""
        print(f"  {v.name}{w}")
    print(f"temperature {policy.temperature:.3f}")
    print(f"selection data: top1 {meta['selection_top1']:.2%} (plain {meta['plain_top1']:.2%}), "
          f"calibrated nll {meta['selection_nll']:.4f} (plain {meta['plain_nll']:.4f})")
    if "kfold" in meta:
        k = meta["kfold"]
        print(f"{k['folds']}-fold held-out estimate: top1 {k['top1']:.2%} (plain {k['plain_top1']:.2%}), "
              f"nll {k['nll']:.4f} (plain {k['plain_nll']:.4f}); views per fold {k['views_per_fold']}")
    if "heldout" in meta:
        h = meta["heldout"]
        print(f"held-out (DATA): top1 {h['top1']:.2%} (plain {h['plain']['top1']:.2%}), nll {h['nll']:.4f} "
              f"(plain {h['plain']['nll']:.4f})")
    if "adaptive" in meta:
        print(f"adaptive threshold {meta['adaptive']:.4f} for at most {meta['adaptive_target_cost']:.0%} of the view-forwards")
    print(f"wrote {path} (use it as --tta {path})")


def _register_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="choose a policy on labelled data (greedy policy search)")
    _common(p)
    g = p.add_argument_group("search")
    g.add_argument("--pool", default=None, help="candidate views as a policy (default: flips, scales, crops, "
                   "rotations, shifts, brightness/contrast and a larger resolution)")
    g.add_argument("--budget", type=int, default=5, help="maximum views in the policy (default: 5)")
    g.add_argument("--objective", choices=("nll", "top1"), default="nll", help="what the search improves (default: nll)")
    g.add_argument("--val", default=None, help="separate selection data; otherwise k-fold on DATA")
    g.add_argument("--folds", type=int, default=5, help="k of the k-fold estimate (default: 5)")
    g.add_argument("--learn-weights", action="store_true", help="also fit per-view weights and a temperature")
    g.add_argument("--target-cost", type=float, default=None,
                   help="pick an adaptive-TTA threshold spending at most this share of the view-forwards")
    g.add_argument("--name", default="searched", help="policy name in reports (default: searched)")
    p.set_defaults(func=_cmd_search)


# --------------------------------------------------------------------------- soup
def _cmd_soup(args: argparse.Namespace) -> int:
    import torch

    from .data import preprocess
    from .datasets import detect_dataset
    from .errors import TTAKitError
    from .models import load_model, load_state_dict
    from .soup import accuracy_scorer, greedy_soup, save_state_dict, uniform_soup

    # The architecture (and classifier size) comes from the first ingredient.
    lm = load_model(args.model, weights=args.ckpts[0], labels=args.labels)
    score = None
    if args.data:
        data = detect_dataset(args.data, lm.class_names).head(args.limit)
        print(f"held-out data: {data.describe()}")
        images, labels = preprocess(list(data.paths), lm.transform()), torch.tensor(data.labels)
        score = accuracy_scorer(lm.model, images, labels)
    if args.method == "greedy":
        if score is None:
            raise TTAKitError("--method greedy needs held-out data: --data VAL")
        res = greedy_soup(args.ckpts, score)
        state = res.state_dict
        for i in res.order:
            mark = "in soup" if i in res.chosen else "left out"
            print(f"  {args.ckpts[i]}: held-out top-1 {res.scores[i]:.2%} ({mark})")
        print(f"greedy soup of {len(res.chosen)}/{len(args.ckpts)} ingredients: held-out top-1 {res.soup_score:.2%}")
        meta = {"method": "greedy", "ingredients": ",".join(args.ckpts[i] for i in res.chosen)}
    else:
        state = uniform_soup(args.ckpts)
        if score is not None:
            for c in args.ckpts:
                print(f"  {c}: held-out top-1 {score(load_state_dict(c)):.2%}")
            print(f"uniform soup of {len(args.ckpts)} ingredients: held-out top-1 {score(state):.2%}")
        meta = {"method": "uniform", "ingredients": ",".join(args.ckpts)}
    out = save_state_dict(state, args.out, meta)
    print(f"wrote {out} (use it as --weights {out})")
    return 0


def _register_soup(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("soup", help="average fine-tuned weights of one architecture (model soup)")
    p.add_argument("ckpts", nargs="+", metavar="CKPT", help=".pth/.pt/.safetensors state dicts of one architecture")
    p.add_argument("--model", required=True, help="timm architecture of the ingredients")
    p.add_argument("--out", required=True, help="output .safetensors")
    p.add_argument("--method", choices=("uniform", "greedy"), default="uniform", help="soup recipe (default: uniform)")
    p.add_argument("--data", default=None, help="held-out data for greedy selection and the report")
    p.add_argument("--labels", default=None, help="class names of the fine-tuned head")
    p.add_argument("--limit", type=int, default=None, help="only the first N held-out images")
    p.set_defaults(func=_cmd_soup)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_register_evaluate, _register_search, _register_soup]

