"""Choose ``ttakit predict``'s default policy from evidence: the best short policy of a greedy
search over the default search pool, on the sample photos and their corrupted copy together,
judged by k-fold (search on k-1 folds, score on the held-out one) and checked against plain.

Run (after the pool evaluation of ``benchmarks/bench_source_views.py``, which stores the 25
candidate views' logits of both sets under ``runs/bench_source_views/{clean,corrupted}``)::

    python benchmarks/choose_predict_default.py [--runs runs/bench_source_views] [--folds 5]

Prints, for budgets of 2 and 3 views and both search objectives, the held-out top-1 and NLL
(mean merge; NLL at the temperature calibrated on the training folds) against plain, per set
and together; then the policy chosen on all photos, and that policy as ``predict`` runs it
(mean merge, temperature 1) on each set, with the paired bootstrap / McNemar comparison
against plain (:func:`ttakit.evaluation.stats.compare`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import load_file

from ttakit.evaluation.search import choice_probs, correct_and_nll, greedy_search, kfold_estimate
from ttakit.evaluation.metrics import TEMPERATURES
from ttakit.evaluation.stats import compare
from ttakit.evaluation.classify_logits import load_logits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import provenance  # noqa: E402
from bench_source_views import quick_logits  # noqa: E402

SETS = ("clean", "corrupted")


def load_present(folder: Path) -> tuple[torch.Tensor, torch.Tensor, list[str], torch.Tensor]:
    """:func:`load_logits`, or, while the run is still writing, the chunks already written."""
    try:
        return load_logits(folder)
    except FileNotFoundError:
        chunks = [load_file(str(p)) for p in sorted((folder / "logits").glob("chunk_*.safetensors"))]
        names = json.loads((folder / "logits" / "run.json").read_text())["views"]
        print(f"{folder}: run not finished; using the {sum(len(c['labels']) for c in chunks)} photos written so far")
        return (torch.cat([c["logits"] for c in chunks]), torch.cat([c["labels"] for c in chunks]), names,
                torch.cat([c["indices"] for c in chunks]))


def load(runs: Path) -> tuple[torch.Tensor, torch.Tensor, list[str], torch.Tensor]:
    """Both sets' logits on the same columns: ``(N, U, C)``, labels, view names, set index per photo."""
    parts = [load_present(runs / s) for s in SETS]
    names = parts[0][2]
    if any(p[2] != names for p in parts):
        raise SystemExit("the two sets hold different views")
    plain = names.index("identity")
    order = [plain] + [i for i in range(len(names)) if i != plain]  # the search wants the plain view first
    logits = torch.cat([p[0][:, order] for p in parts])
    labels = torch.cat([p[1] for p in parts])
    which = torch.cat([torch.full((len(p[1]),), i) for i, p in enumerate(parts)])
    return logits, labels, [names[i] for i in order], which


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=Path("runs/bench_source_views"))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run on the logits of bench_source_views.py --quick (made here, in a temporary folder), "
                    "2 folds")
    args = ap.parse_args(argv)
    print(provenance(__file__, argv))
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            args.runs, args.folds = quick_logits(Path(tmp)), 2
        logits, labels, names, which = load(args.runs)
    print(f"{len(labels)} photos ({', '.join(f'{s} {int((which == i).sum())}' for i, s in enumerate(SETS))}), "
          f"{len(names)} candidate views\n")
    print("| budget | objective | views per fold | held-out top-1 (plain) | held-out NLL (plain) | clean top-1 (plain) | "
          "corrupted top-1 (plain) |")
    print("|---|---|---|---|---|---|---|")
    for budget in (2, 3):
        for objective in ("nll", "top1"):
            k = kfold_estimate(logits, labels, budget, objective, args.folds, per_image=True)
            rows = k["per_image"]  # (N, 4): policy correct, nll, plain correct, nll (held out)
            per_set = [f"{rows[which == i, 0].mean():.2%} ({rows[which == i, 2].mean():.2%})" for i in range(len(SETS))]
            print(f"| {budget} | {objective} | {k['views_per_fold']} | {k['top1']:.2%} ({k['plain_top1']:.2%}) | "
                  f"{k['nll']:.4f} ({k['plain_nll']:.4f}) | {per_set[0]} | {per_set[1]} |")
    print()
    # predict shows probabilities at temperature 1: the same search with the temperature held at 1.
    print("Temperature held at 1 (what predict shows), NLL objective, 5-fold held-out:")
    print("| budget | held-out top-1 (plain) | held-out NLL (plain) | clean top-1 (plain) | corrupted top-1 (plain) | "
          "fold choices | on all photos |")
    print("|---|---|---|---|---|---|---|")
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    folds = torch.tensor_split(perm, args.folds)
    for budget in (2, 3):
        rows = torch.zeros(len(labels), 4, dtype=torch.float64)
        seen: Counter[str] = Counter()
        for i, held in enumerate(folds):
            train = torch.cat([p for j, p in enumerate(folds) if j != i])
            cols = list(greedy_search(logits[train], labels[train], budget, "nll", temperatures=(1.0,)).cols)
            seen[" + ".join(names[c] for c in cols)] += 1
            rows[held] = torch.cat([correct_and_nll(choice_probs(logits[held], c, 1.0), labels[held])
                                    for c in (cols, [0])], 1)
        best = " + ".join(names[c] for c in greedy_search(logits, labels, budget, "nll", temperatures=(1.0,)).cols)
        per_set = [f"{rows[which == i, 0].mean():.2%} ({rows[which == i, 2].mean():.2%})" for i in range(len(SETS))]
        print(f"| {budget} | {rows[:, 0].mean():.2%} ({rows[:, 2].mean():.2%}) | {rows[:, 1].mean():.4f} "
              f"({rows[:, 3].mean():.4f}) | {per_set[0]} | {per_set[1]} | {dict(seen)} | {best} |")
    print()
    for budget in (2, 3):
        for objective in ("nll", "top1"):
            res = greedy_search(logits, labels, budget, objective)
            print(f"on all photos, budget {budget}, {objective}: {' + '.join(names[c] for c in res.cols)} "
                  f"(temperature {res.temperature:g})")
    # Which policies the folds choose: a stable choice is a better default than one fold's luck.
    for budget in (2, 3):
        seen: Counter[str] = Counter()
        perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
        for i, held in enumerate(torch.tensor_split(perm, args.folds)):
            train = torch.cat([p for j, p in enumerate(torch.tensor_split(perm, args.folds)) if j != i])
            seen[" + ".join(names[c] for c in greedy_search(logits[train], labels[train], budget, "nll").cols)] += 1
        print(f"fold choices, budget {budget}, nll: {dict(seen)}")
    print()
    print("As predict runs a policy (mean merge, temperature 1), on every photo of each set, against plain:")
    print("| policy | set | top-1 | plain | fixed / broken | McNemar p | NLL - plain (95% CI) |")
    print("|---|---|---|---|---|---|---|")
    candidates = ["identity + hflip", "identity + input=256:1|hflip", "identity + input=256:1",
                  "input=256:1 + input=256:1|hflip", "identity + input=224:1 + input=256:1|hflip"]
    missing = [c for c in candidates if not all(v.strip() in names for v in c.split(" + "))]
    if missing:  # the pool of a model of another input size (a quick run's) names its stages otherwise
        print(f"(not in this pool: {'; '.join(missing)})")
    candidates = [c for c in candidates if c not in missing]
    searched = [" + ".join(names[c] for c in greedy_search(logits, labels, b, "nll", temperatures=t).cols)
                for b in (2, 3) for t in ((1.0,), TEMPERATURES)]
    for text in dict.fromkeys(candidates + searched):
        cols = [names.index(v.strip()) for v in text.split(" + ")]
        for i, s in enumerate(SETS):
            m = which == i
            pol = correct_and_nll(choice_probs(logits[m], cols, 1.0), labels[m])
            pl = correct_and_nll(choice_probs(logits[m], [0], 1.0), labels[m])
            c = compare(pl[:, 0].numpy(), pol[:, 0].numpy(), pl[:, 1].numpy(), pol[:, 1].numpy())
            print(f"| {text} | {s} | {pol[:, 0].mean():.2%} | {pl[:, 0].mean():.2%} | {c.fixed} / {c.broken} | "
                  f"{c.p_value:.3f} | {c.delta_nll:+.4f} ({c.ci_nll[0]:+.4f}, {c.ci_nll[1]:+.4f}) |")


if __name__ == "__main__":
    main()
