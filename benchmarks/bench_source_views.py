"""Views re-sampled from the source photo: plain vs hflip vs fixres vs tutorial vs a searched
policy, on the sample photos and on a corrupted copy, with k-fold held-out estimates.

Run: ``python benchmarks/bench_source_views.py`` (after ``python examples/make_corrupted.py
../shared/imagenet-sample runs/imagenet-corrupt``). Each data set costs one evaluation of the
default search pool (every preset's views are in it); the searched policy is then scored by
k-fold on the stored logits (search on 4/5, score on the held-out 1/5), so its number is never
measured on the photos it was chosen on. Prints a Markdown table; ``--out FILE`` writes it too.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

import ttakit
from ttakit.datasets import detect_dataset
from ttakit.evaluation.evaluate import EvalOptions, evaluate
from ttakit.evaluation.search import SearchOptions, kfold_estimate, search_policy
from ttakit.evaluation.classify_logits import load_logits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, SAMPLE, load_bench_model, provenance, quick_folders  # noqa: E402

SETS = {"corrupted": ROOT / "runs" / "imagenet-corrupt", "clean": SAMPLE}
QUICK_PHOTOS = 8  # enough for 2 folds and conformal splits in the benchmarks that read these logits
PRESETS = ("hflip", "fixres", "tutorial")


def run_set(lm: ttakit.LoadedModel, name: str, folder: Path, out: Path, budget: int, folds: int, workers: int) -> list[str]:
    data = detect_dataset(folder, lm.class_names)
    pool = ttakit.create_policy("search_pool", lm.data_config)
    policies = [pool] + [ttakit.create_policy(p, lm.data_config) for p in PRESETS]
    cfg = ttakit.default_run_config("cpu")
    t0 = time.perf_counter()
    res = evaluate(lm, data, policies, out_dir=out / name, run_config=cfg,
                   options=EvalOptions(batch_size=25, workers=workers, quiet=True))
    t_eval = time.perf_counter() - t0
    logits, labels, names, _ = load_logits(out / name)
    t0 = time.perf_counter()
    searched = search_policy(pool, logits[:, [names.index(v.name) for v in pool.views]], labels,
                             SearchOptions(budget=budget, folds=folds))
    t_search = time.perf_counter() - t0
    cols = [names.index(v.name) for v in pool.views]
    k_top1 = kfold_estimate(logits[:, cols], labels, budget, "top1", folds)
    r, k = res["results"], searched.meta["kfold"]
    rows = [f"| {name} | plain | 1 | {r['plain']['top1']:.2%} | {r['plain']['nll']:.4f} | {r['plain']['nll_calibrated']:.4f} | all photos |"]
    for p in PRESETS:
        row = r[p]
        rows.append(f"| {name} | {p} ({', '.join(row['view_names'])}) | {row['views']} | {row['top1']:.2%} | {row['nll']:.4f} | "
                    f"{row['nll_calibrated']:.4f} | all photos; {row['verdict'].split(': ', 1)[1]} |")
    rows.append(f"| {name} | searched, nll objective | {k['views_per_fold']} | {k['top1']:.2%} (plain {k['plain_top1']:.2%}) | "
                f"- | {k['nll']:.4f} (plain {k['plain_nll']:.4f}) | {folds}-fold held-out; on all photos: "
                f"{', '.join(searched.view_names)} |")
    rows.append(f"| {name} | searched, top1 objective | {k_top1['views_per_fold']} | {k_top1['top1']:.2%} (plain "
                f"{k_top1['plain_top1']:.2%}) | - | {k_top1['nll']:.4f} (plain {k_top1['plain_nll']:.4f}) | {folds}-fold held-out |")
    rows.append(f"| {name} | cost | {len(pool.views)} pool views | evaluate {t_eval:.0f} s | search on the logits {t_search:.1f} s | "
                f"search / evaluate = {(t_eval + t_search) / t_eval:.3f} | |")
    return rows


def quick_logits(root: Path) -> Path:
    """Quick runs of the benchmarks that read this one's logits: the pool of timm's tiny test
    model on a few photos and their corrupted copy, stored under ``root/{clean,corrupted}``."""
    lm = load_bench_model(True)
    for name, folder in quick_folders(root / "photos", QUICK_PHOTOS).items():
        run_set(lm, name, folder, root, 2, 2, 0)
    return root


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help="folder of the logits (default runs/bench_source_views)")
    p.add_argument("--budget", type=int, default=5)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--table", type=Path, default=None, help="also write the table here")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: timm's tiny test model on {QUICK_PHOTOS} photos and a corrupted copy, 2 folds, "
                   "budget 2, logits in a temporary folder unless --out")
    args = p.parse_args(argv)
    print(provenance(__file__, argv))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        sets = SETS
        if args.quick:
            args.budget, args.folds, args.workers = 2, 2, 0
            sets = quick_folders(Path(tmp) / "photos", QUICK_PHOTOS)
        out = args.out or (Path(tmp) if args.quick else ROOT / "runs" / "bench_source_views")
        lm = load_bench_model(args.quick)
        lines = ["| data | policy | views | top-1 | NLL | calibrated NLL | notes |", "|---|---|---|---|---|---|---|"]
        for name, folder in sets.items():
            if not folder.is_dir():
                print(f"skipping {name}: {folder} not found")
                continue
            lines += run_set(lm, name, folder, out, args.budget, args.folds, args.workers)
            print("\n".join(lines), flush=True)
    if args.table:
        args.table.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
