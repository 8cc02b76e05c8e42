"""``ttakit soup``: average fine-tuned weights of one architecture (uniform or greedy soup)."""

from __future__ import annotations

import argparse

import torch

from ..data import preprocess
from ..datasets import detect_dataset
from ..errors import ConfigError
from ..models import load_model, load_state_dict
from ..soup import accuracy_scorer, greedy_soup, save_state_dict, uniform_soup
from .common import positive_int

__all__ = ["register"]


def _cmd_soup(args: argparse.Namespace) -> int:
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
            raise ConfigError("--method greedy needs held-out data: --data VAL")
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


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``soup`` to the command parser."""
    p = sub.add_parser("soup", help="average fine-tuned weights of one architecture (model soup)")
    p.add_argument("ckpts", nargs="+", metavar="CKPT", help=".pth/.pt/.safetensors state dicts of one architecture")
    p.add_argument("--model", required=True, help="timm architecture of the ingredients")
    p.add_argument("--out", required=True, help="output .safetensors")
    p.add_argument("--method", choices=("uniform", "greedy"), default="uniform", help="soup recipe (default: uniform)")
    p.add_argument("--data", default=None, help="held-out data for greedy selection and the report")
    p.add_argument("--labels", default=None, help="class names of the fine-tuned head")
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N held-out images")
    p.set_defaults(func=_cmd_soup)
