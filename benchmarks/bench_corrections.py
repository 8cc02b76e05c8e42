"""Views that correct the photo: each correction alone and searched policies with and without them,
on the sample photos and a corrupted copy, with k-fold held-out estimates, paired intervals and verdicts.

Run: ``python benchmarks/bench_corrections.py`` (after ``python examples/make_corrupted.py
../shared/imagenet-sample runs/imagenet-corrupt``). Per data set it evaluates two folders: the
re-sampled views of the default search pool (``runs/bench_source_views/SET``, shared with
``bench_source_views.py``) and the correction views (``runs/corrections/SET``); views already
stored there cost no model time. The logits of both are joined (same photos, same order) and
every searched policy is scored by k-fold: searched on 4/5 of the photos, scored on the other
1/5, so no number is measured on the photos its views were chosen on. Prints a Markdown table
(``--table FILE`` writes it too) and a per-corruption breakdown of each correction alone.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import torch

import ttakit
from ttakit.datasets import detect_dataset
from ttakit.evaluation.evaluate import EvalOptions, evaluate
from ttakit.evaluation.search import kfold_estimate
from ttakit.evaluation.stats import compare
from ttakit.evaluation.classify_logits import load_logits
from ttakit.policy import Policy, create_policy, parse_policy
from ttakit.presets import source_pool

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, SAMPLE, load_bench_model, provenance, quick_folders  # noqa: E402

SETS = {"corrupted": ROOT / "runs" / "imagenet-corrupt", "clean": SAMPLE}
# Each correction alone (on the model's own input stage), then with the re-sampled view that helps most.
ALONE = ("autocontrast=1", "equalize", "gamma=0.7", "unsharp=2:250:0", "median=3")
COMBINED = ("input=256:1.0|autocontrast=1", "input=256:1.0|unsharp=2:250:0")


def stored_logits(lm: ttakit.LoadedModel, data, views: Policy, out: Path, workers: int) -> tuple[torch.Tensor, torch.Tensor, list[str], float]:
    """``(N, V, C)`` logits of ``views`` (in that order) from ``out``, evaluating them first
    unless the folder holds them all (so its results.json stays as it is)."""
    t0 = time.perf_counter()
    held = load_logits(out)[2] if (out / "logits").is_dir() else []
    if not set(views.view_names) <= set(held):
        evaluate(lm, data, [views], out_dir=out, run_config=ttakit.default_run_config("cpu"),
                 options=EvalOptions(batch_size=25, workers=workers, quiet=True))
    logits, labels, names, indices = load_logits(out)
    order = indices.argsort()  # photo order, whatever order the chunks were stored in
    cols = [names.index(v.name) for v in views.views]
    return logits[order][:, cols], labels[order], [names[c] for c in cols], time.perf_counter() - t0


def verdict_row(name: str, views: str, correct: torch.Tensor, nll: torch.Tensor, plain_correct: torch.Tensor,
                plain_nll: torch.Tensor, nll_note: str, notes: str) -> str:
    c = compare(plain_correct.numpy(), correct.numpy(), plain_nll.numpy(), nll.numpy())
    verdict = c.verdict(name).split(": ", 1)[1]
    return (f"| {name} | {views} | {correct.double().mean():.1%} | {100 * c.delta_top1:+.1f} "
            f"[{100 * c.ci_top1[0]:+.1f}, {100 * c.ci_top1[1]:+.1f}] | {nll_note} | {verdict} | {notes} |")


def per_view(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, V)`` top-1 correctness and NLL of each view alone (temperature 1)."""
    logp = torch.log_softmax(logits.double(), -1)
    return (logp.argmax(-1) == labels[:, None]).double(), -logp.gather(2, labels[:, None, None].expand(-1, logp.shape[1], 1))[..., 0]


def run_set(lm: ttakit.LoadedModel, name: str, folder: Path, args: argparse.Namespace) -> list[str]:
    data = detect_dataset(folder, lm.class_names)
    cfg = lm.data_config
    base = Policy(parse_policy(source_pool(cfg), cfg))
    pool = create_policy("search_pool + corrections", cfg)
    extra_views = parse_policy(" + ".join(ALONE + COMBINED), cfg)
    # The `corrections` preset's input stages follow the model's size: a model of another size
    # than the default's (a quick run's) names them otherwise than COMBINED.
    have = set(base.view_names) | {v.name for v in extra_views}
    extra = Policy(extra_views + tuple(v for v in pool.views if v.name not in have))
    b_logits, labels, b_names, t_base = stored_logits(lm, data, base, args.base_out / name, args.workers)
    c_logits, c_labels, c_names, t_corr = stored_logits(lm, data, extra, args.out / name, args.workers)
    if not torch.equal(labels, c_labels):
        raise SystemExit(f"{name}: the two folders do not hold the same photos in the same order")
    logits = torch.cat([b_logits, c_logits], 1)  # (N, U, C), column 0 the plain view
    names = b_names + c_names
    correct, nll = per_view(logits, labels)
    rows = [f"| **{name}** | plain | {correct[:, 0].mean():.1%} | | NLL {nll[:, 0].mean():.3f} | | {len(labels)} photos |"]
    for v in ALONE + COMBINED:
        u = names.index(create_policy(v).view_names[0])
        rows.append(verdict_row(names[u], "1", correct[:, u], nll[:, u], correct[:, 0], nll[:, 0],
                                f"NLL {nll[:, u].mean():.3f}", "the view alone"))
    # Searched policies: the default (re-sampled) pool, with the `corrections` preset, with every correction view.
    searches = {
        "searched, search_pool": list(range(len(b_names))),
        "searched, search_pool + corrections": [names.index(v) for v in pool.view_names],
        "searched, search_pool + every correction view": list(range(len(names))),
    }
    for label, cols in searches.items():
        t0 = time.perf_counter()
        k = kfold_estimate(logits[:, cols], labels, args.budget, "nll", args.folds, per_image=True)
        r = k["per_image"]
        rows.append(verdict_row(label, f"{len(cols)} candidates, {k['views_per_fold']} chosen", r[:, 0], r[:, 1],
                                r[:, 2], r[:, 3], f"calibrated NLL {k['nll']:.3f} (plain {k['plain_nll']:.3f})",
                                f"{args.folds}-fold held-out, budget {args.budget}; search {time.perf_counter() - t0:.1f} s"))
    rows.append(f"| {name} cost | evaluate: re-sampled views {t_base:.0f} s, corrections {t_corr:.0f} s | | | | | "
                "0 s when every view is already stored |")
    print_breakdown(name, folder, [Path(p).name for p in data.paths], names, correct)
    return rows


def print_breakdown(name: str, folder: Path, files: list[str], names: list[str], correct: torch.Tensor) -> None:
    """Top-1 of each correction alone on each corruption (``files``: the photos in evaluation order)."""
    table = folder / "corruptions.csv"
    if not table.is_file():
        return
    kind_of = {r["file"]: r["corruption"] for r in csv.DictReader(table.open())}
    kinds = [kind_of[f] for f in files]
    order = sorted(set(kinds), key=kinds.index)
    print(f"\n{name}: top-1 by corruption\n| view | " + " | ".join(order) + " |\n|---|" + "---|" * len(order))
    for v in ("identity",) + ALONE:
        u = names.index(v)
        cells = [f"{correct[[i for i, k in enumerate(kinds) if k == kind], u].mean():.1%}" for kind in order]
        print(f"| {v} | " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None,
                   help="folder of the correction views' logits (default runs/corrections)")
    p.add_argument("--base-out", type=Path, default=None,
                   help="folder of the re-sampled views' logits (default runs/bench_source_views)")
    p.add_argument("--budget", type=int, default=5)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--sets", nargs="+", choices=sorted(SETS), default=list(SETS), help="data sets to run")
    p.add_argument("--table", type=Path, default=None, help="also write the table here")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: timm's tiny test model on 8 photos and a corrupted copy, 2 folds, budget 2, "
                   "logits in a temporary folder unless --out / --base-out")
    args = p.parse_args(argv)
    print(provenance(__file__, argv))
    lm = load_bench_model(args.quick)
    lines = ["| data / policy | views | top-1 | vs plain (pt, 95% CI) | NLL | verdict | notes |",
             "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        sets = SETS
        if args.quick:
            sets = quick_folders(Path(tmp) / "photos", 8)
            args.folds, args.budget, args.workers = 2, 2, 0
        runs = Path(tmp) if args.quick else ROOT / "runs"
        args.out = args.out or runs / "corrections"
        args.base_out = args.base_out or runs / "bench_source_views"
        for name, folder in ((n, sets[n]) for n in args.sets):
            if not folder.is_dir():
                print(f"skipping {name}: {folder} not found")
                continue
            lines += run_set(lm, name, folder, args)
            print("\n".join(lines), flush=True)
    if args.table:
        args.table.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
