"""Conformal prediction sets made smaller by TTA: plain vs hflip vs tutorial vs searched policies.

Run (after ``python benchmarks/bench_source_views.py``, which stores every pool view's logits):
``python benchmarks/bench_conformal.py --table runs/bench_conformal.md``. No model time: all
from the stored logits of ``runs/bench_source_views/{clean,corrupted}``.

Protocol, so the searched policy is never measured on the photos that chose it: ``--outer``
times, the photos are shuffled and split into a *search* part (``--search-fraction``) and a
*measure* part. The search part chooses the views and temperature
(:func:`~ttakit.evaluation.conformal.greedy_set_size`: mean set size, cross-fitted); the
measure part is split ``--splits`` times into calibration and test halves, on which every
policy is calibrated and scored, paired with plain
(:func:`~ttakit.evaluation.conformal.conformal_metrics`). Figures are means over the outer
repeats. Intervals: one bootstrap resampling of all the photos (``--bootstrap`` resamples),
applied as image weights inside every repeat's splits; each resample's mean set size is
averaged over the repeats, and the 2.5/97.5 percentiles of the resampled ratio to plain give
the 95% interval (the search itself is not re-run per resample).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import ttakit
from ttakit.evaluation.conformal import ConformalOptions, bootstrap_counts, conformal_metrics, greedy_set_size
from ttakit.evaluation.search import greedy_search
from ttakit.evaluation.classify_logits import load_logits
from ttakit.merge import merge_logits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, provenance  # noqa: E402
from bench_source_views import quick_logits  # noqa: E402

PRESETS = ("hflip", "tutorial")
TUNED = "plain, tuned temperature"  # plain at the temperature the set-size search picks for it alone


def preset_probs(logits: torch.Tensor, names: list[str], data_config: dict) -> dict[str, torch.Tensor]:
    """Probabilities of plain and the fixed presets (their own merge and temperature)."""
    out = {"plain": torch.softmax(logits[:, names.index("identity")].double(), -1)}
    for p in PRESETS:
        pol = ttakit.create_policy(p, data_config)
        cols = [names.index(v) for v in pol.view_names]
        out[f"{p} ({len(cols)})"] = merge_logits(logits[:, cols], pol.merge or "mean", None, pol.temperature).double()
    return out


def searched_probs(logits: torch.Tensor, labels: torch.Tensor, search: torch.Tensor, measure: torch.Tensor,
                   alpha: float, score: str, budget: int) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """Policies chosen on ``search`` (set-size objective; NLL objective; plain's temperature
    alone), merged on ``measure``. Column 0 is the plain view."""
    z, y = logits[search], labels[search]
    cols, t, _ = greedy_set_size(z, y, alpha, score, budget)
    _, t_plain, _ = greedy_set_size(z[:, :1], y, alpha, score, 1)
    nll = greedy_search(z, y, budget, "nll")
    m = logits[measure]
    probs = {
        TUNED: torch.softmax(m[:, 0].double() / t_plain, -1),
        "searched (nll)": merge_logits(m[:, list(nll.cols)], "mean", None, nll.temperature).double(),
        "searched (set size)": merge_logits(m[:, list(cols)], "mean", None, t).double(),
    }
    return probs, {"searched (set size)": [str(c) for c in cols] + [f"T={t:g}"],
                   "searched (nll)": [str(c) for c in nll.cols] + [f"T={nll.temperature:g}"]}


def run(name: str, folder: Path, alpha: float, score: str, args: argparse.Namespace) -> tuple[list[str], dict]:
    logits, labels, names, _ = load_logits(folder)
    data_config = json.loads((folder / "logits" / "run.json").read_text())["data_config"]
    pool = [names.index(v) for v in ttakit.create_policy("search_pool", data_config).view_names]
    assert pool[0] == names.index("identity")
    fixed = preset_probs(logits, names, data_config)
    n = len(labels)
    counts = bootstrap_counts(n, args.bootstrap, seed=7)  # one resampling of all photos, shared by the repeats
    per_outer: list[dict] = []
    chosen: list[dict] = []
    for o in range(args.outer):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(1000 + o))
        k = int(round(args.search_fraction * n))
        search, measure = perm[:k], perm[k:]
        probs, picks = searched_probs(logits[:, pool], labels, search, measure, alpha, score, args.budget)
        rows = {key: p[measure] for key, p in fixed.items()} | probs
        opts = ConformalOptions(alpha, score, splits=args.splits, seed=o, bootstrap=args.bootstrap)
        per_outer.append(conformal_metrics(rows, labels[measure], opts, counts=counts[:, measure]))
        chosen.append({k: [names[pool[int(c)]] if c.isdigit() else c for c in v] for k, v in picks.items()})
    lines, summary = [], {}
    # Each bootstrap resample's set size, averaged over the repeats (the same resample in each).
    boots = {k: torch.tensor([m[k]["set_size_replicates"] for m in per_outer]).mean(0) for k in per_outer[0]}
    sizes = {k: sum(m[k]["set_size"] for m in per_outer) / len(per_outer) for k in per_outer[0]}

    def versus(key: str, base: str) -> tuple[float, float, float]:
        """Relative set-size change of ``key`` against ``base``, with its 95% bootstrap interval."""
        rel = (boots[key] / boots[base] - 1).double()
        lo, hi = (float(v) for v in torch.quantile(rel, torch.tensor([0.025, 0.975], dtype=torch.float64)))
        return sizes[key] / sizes[base] - 1, lo, hi

    for key in per_outer[0]:
        ms = [m[key] for m in per_outer]
        mean = lambda f: sum(m[f] for m in ms) / len(ms)  # noqa: E731
        mc = (sum(m["coverage_mc_error"] ** 2 for m in ms) ** 0.5) / len(ms)
        rel, lo, hi = versus(key, "plain")
        entry = {"coverage": mean("coverage"), "coverage_mc_error": mc, "set_size": sizes[key],
                 "singleton_rate": mean("singleton_rate"), "empty_rate": mean("empty_rate"),
                 "worst_class_coverage": mean("worst_class_coverage"), "rel_set_size": rel,
                 "ci_rel_set_size": [lo, hi], "coverage_bounds": ms[0]["coverage_bounds"]}
        fmt = lambda r: f"{100 * r[0]:+.1f}% [{100 * r[1]:+.1f}, {100 * r[2]:+.1f}]"  # noqa: E731
        vs_tuned = "-"
        if key.startswith("searched"):
            entry["vs_tuned_plain"] = list(versus(key, TUNED))
            vs_tuned = fmt(entry["vs_tuned_plain"])
        summary[key] = entry
        lines.append(f"| {name} | {alpha:g} | {score} | {key} | {100 * entry['coverage']:.1f} ± {100 * mc:.1f} | "
                     f"{entry['set_size']:.2f} | {'-' if key == 'plain' else fmt((rel, lo, hi))} | {vs_tuned} | "
                     f"{100 * entry['singleton_rate']:.0f}% | {100 * entry['worst_class_coverage']:.0f}% |")
    summary["chosen"] = chosen
    return lines, summary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--logits", type=Path, default=ROOT / "runs" / "bench_source_views")
    p.add_argument("--sets", nargs="+", default=["corrupted", "clean"])
    p.add_argument("--alphas", nargs="+", type=float, default=[0.1, 0.05])
    p.add_argument("--scores", nargs="+", default=["thr", "aps"])
    p.add_argument("--outer", type=int, default=10, help="search/measure repeats")
    p.add_argument("--splits", type=int, default=100, help="calibration/test splits of each measure part")
    p.add_argument("--bootstrap", type=int, default=500, help="bootstrap resamples of the photos for the intervals")
    p.add_argument("--search-fraction", type=float, default=0.4)
    p.add_argument("--budget", type=int, default=5)
    p.add_argument("--table", type=Path, default=None, help="also write the Markdown table here")
    p.add_argument("--json", type=Path, default=None, help="also write every figure here")
    p.add_argument("--quick", action="store_true",
                   help="smoke run on the logits of bench_source_views.py --quick (made here, in a temporary folder): "
                   "alpha 0.5 (8 photos calibrate nothing finer), THR, 2 repeats x 5 splits, 20 resamples, budget 2")
    args = p.parse_args(argv)
    print(provenance(__file__, argv))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: one thread is fastest on a shared machine
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            args.logits = quick_logits(Path(tmp))
            args.alphas, args.scores, args.outer, args.splits, args.bootstrap, args.budget = [0.5], ["thr"], 2, 5, 20, 2
        lines, everything = conformal_tables(args)
    torch.set_num_threads(threads)
    print("\n".join(lines))
    if args.table:
        args.table.write_text("\n".join(lines) + "\n")
    if args.json:
        args.json.write_text(json.dumps(everything, indent=1))


def conformal_tables(args: argparse.Namespace) -> tuple[list[str], dict]:
    """The table's lines and every figure, per stored set, alpha and score."""
    lines = ["| data | alpha | score | policy | coverage % (± MC) | mean set size | vs plain [95% CI] | "
             "vs plain at tuned T [95% CI] | singletons | worst-decile class coverage |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    everything: dict = {}
    t0 = time.perf_counter()
    for name in args.sets:
        if not (args.logits / name / "logits").is_dir():
            print(f"skipping {name}: no stored logits in {args.logits / name}")
            continue
        for alpha in args.alphas:
            for score in args.scores:
                rows, summary = run(name, args.logits / name, alpha, score, args)
                lines += rows
                everything[f"{name}/{alpha:g}/{score}"] = summary
                print("\n".join(rows), flush=True)
    lines.append(f"\n{args.outer} search/measure repeats x {args.splits} splits; {time.perf_counter() - t0:.0f} s, no model time.")
    return lines, everything


if __name__ == "__main__":
    main()
