"""Choices that transfer: views and adaptation searched on shifted copies of the even photos,
measured on the odd photos, which nothing was tuned on.

Tuning (what ``ttakit search DATA --shifts`` does, on the even-indexed photos of
``../shared/imagenet-sample``): the photos are dealt out to the search families
(``ttakit.evaluation.shift_streams.DEFAULT_FAMILIES``: clean and nine shifts at severity 3), every
``shift_pool`` view runs through the plain model and the ``bn`` and ``auto`` copies, and
leave-one-family-out selection picks three policies:

- *searched views*: the views alone (candidates without adaptation), objective top-1;
- *searched views + adaptation*: views and adaptation together, objective top-1;
- *set-size policy*: views and adaptation together, objective conformal set size at alpha 0.1.

Report (odd photos, severity 3, copies drawn with other seeds): top-1 of plain, the default
policy of ``ttakit predict`` (``contrast=1.2 + input=224:1``), the searched views and the
searched views + adaptation, each paired with plain on the same photos (95% bootstrap
interval); and the mean conformal set size of plain and of the set-size policy, each
calibrated on the stream's own photos (cross-fitted halves, so both cover ~90%). Streams:

- clean, in folder order (which is class order);
- one stream per ``--report-families`` family, families the search never saw marked ``unseen``;
- a mixed stream: every odd photo, photo i shifted by family i mod 14 (all 14 families).

    python benchmarks/bench_shift.py --quick                      # 12 photos: a smoke run
    nice python benchmarks/bench_shift.py --out runs/bench_shift  # the published run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

import ttakit
from ttakit.adapt import AdaptOptions
from ttakit.cli.predict import DEFAULT_POLICY
from ttakit.datasets import LabelledImages, detect_dataset
from ttakit.evaluation.adapt_rows import adapted_logits
from ttakit.evaluation.conformal import set_size_objective
from ttakit.evaluation.search import choice_probs
from ttakit.evaluation.shift_search import shift_policy
from ttakit.evaluation.shift_streams import DEFAULT_FAMILIES, ShiftPlan, StreamLogits, render_stream, shift_logits
from ttakit.evaluation.stats import compare
from ttakit.policy import Policy, create_policy, save_policy
from ttakit.runtime.config import RunConfig
from ttakit.shifts import SHIFTS
from ttakit.views import View

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import SAMPLE, load_bench_model, provenance  # noqa: E402

UNSEEN = "shot_noise,gaussian_blur,saturation,scale,crop"


def subset(data: LabelledImages, idx: range | list[int]) -> LabelledImages:
    return LabelledImages(tuple(data.paths[i] for i in idx), tuple(data.labels[i] for i in idx), data.layout, data.source)


def method_of(p: Policy) -> str:
    return p.meta.get("adapt", {}).get("method", "none")


def cols_of(p: Policy, union: Policy) -> list[int]:
    names = [v.name for v in union.views]
    return [names.index(v.name) for v in p.views]


def measure(name: str, stream: LabelledImages, lm: ttakit.LoadedModel, policies: dict[str, Policy], set_policy: Policy,
            alpha: float, batch: int, cfg: RunConfig) -> dict[str, Any]:
    """Every row on one stream (see the module doc)."""
    every = [*policies.values(), set_policy]
    union = Policy((View(), *dict.fromkeys(v for p in every for v in p.views if not v.is_identity)))  # 0: plain
    methods = sorted({"none", *(method_of(p) for p in every)})
    t0 = time.perf_counter()
    logits = {m: adapted_logits(lm, stream, union, None if m == "none" else m, AdaptOptions(batch=batch), cfg)[0]
              for m in methods}
    labels = torch.tensor(stream.labels)
    plain = torch.softmax(logits["none"][:, 0].double(), -1)
    plain_right = (plain.argmax(-1) == labels).double()
    plain_nll = -plain.gather(1, labels[:, None])[:, 0].clamp_min(1e-12).log()
    rows: dict[str, Any] = {"plain": {"top1": float(plain_right.mean())}}
    for key, p in policies.items():
        probs = choice_probs(logits[method_of(p)], cols_of(p, union), p.temperature, p.weights).double()
        right = (probs.argmax(-1) == labels).double()
        nll = -probs.gather(1, labels[:, None])[:, 0].clamp_min(1e-12).log()
        c = compare(plain_right.numpy(), right.numpy(), plain_nll.numpy(), nll.numpy())
        rows[key] = {"top1": float(right.mean()), "delta": c.delta_top1, "ci": list(c.ci_top1), "adapt": method_of(p)}
    probs = choice_probs(logits[method_of(set_policy)], cols_of(set_policy, union), set_policy.temperature).double()
    sizes = {"plain": set_size_objective(plain, labels, alpha), "set-size policy": set_size_objective(probs, labels, alpha)}
    print(f"  {name}: {len(labels)} photos, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return {"photos": len(labels), "rows": rows, "set_size": sizes}


def table(results: dict[str, Any], seen: set[str]) -> str:
    keys = ["default", "searched views", "searched views + adapt"]
    head = ("| stream | photos | plain | " + " | ".join(keys) + " | set size plain | set size searched |\n"
            "|---|---|---|" + "---|" * len(keys) + "---|---|")
    lines = [head]
    for name, r in results.items():
        unseen = "" if name.split(" ")[0] in seen or name.startswith(("clean", "mixed")) else " (unseen)"
        cells = []
        for k in keys:
            x = r["rows"][k]
            cells.append(f"{x['top1']:.1%} ({100 * x['delta']:+.1f} [{100 * x['ci'][0]:+.1f}, {100 * x['ci'][1]:+.1f}])")
        s = r["set_size"]
        change = s["set-size policy"] / s["plain"] - 1 if s["plain"] > 0 else float("nan")
        lines.append(f"| {name}{unseen} | {r['photos']} | {r['rows']['plain']['top1']:.1%} | " + " | ".join(cells)
                     + f" | {s['plain']:.2f} | {s['set-size policy']:.2f} ({change:+.0%}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(SAMPLE))
    ap.add_argument("--out", default="runs/bench_shift")
    ap.add_argument("--photos", type=int, default=500, help="first N photos (even tune, odd report)")
    ap.add_argument("--families", default=",".join(DEFAULT_FAMILIES), help="search families (tuning)")
    ap.add_argument("--report-families", default=UNSEEN + ",fog,pixelate")
    ap.add_argument("--report-photos", type=int, default=100, help="odd photos in each family's stream")
    ap.add_argument("--severity", type=int, default=3)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--budget", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64, help="adaptation batch")
    ap.add_argument("--pool", default="shift_pool", help="candidate views (a preset or policy text)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 12 photos, 3 search families, the hflip pool, alpha 0.5, one report family of 4")
    args = ap.parse_args(argv)
    print(provenance(__file__, argv))
    if args.quick:  # every step runs, on too few photos to mean anything
        args.photos, args.report_photos, args.report_families = 12, 4, "shot_noise"
        args.families, args.pool, args.alpha, args.budget, args.batch = "clean,gaussian_noise,pixelate", "hflip", 0.5, 2, 8
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = Path(args.out)
    lm = load_bench_model(args.quick)  # quick: timm's tiny test model (the code runs, the figures mean nothing)
    cfg = RunConfig()
    data = detect_dataset(args.data, lm.class_names).head(args.photos)
    even, odd = subset(data, range(0, len(data), 2)), subset(data, range(1, len(data), 2))
    pool = create_policy(args.pool, lm.data_config)
    plan = ShiftPlan(families=tuple(args.families.split(",")), severities=(args.severity,), adapt_batch=args.batch)
    t0 = time.perf_counter()
    streams = shift_logits(lm, even, pool, plan, out / "tune", cfg)
    views_only = StreamLogits({"none": streams.logits["none"]}, streams.labels, streams.families, streams.names)
    searched = {
        "default": create_policy(DEFAULT_POLICY, lm.data_config),
        "searched views": shift_policy(pool, views_only, "top1", args.budget, name="views"),
        "searched views + adapt": shift_policy(pool, streams, "top1", args.budget, adapt_batch=args.batch, name="joint"),
    }
    set_policy = shift_policy(pool, streams, "set_size", args.budget, args.alpha, adapt_batch=args.batch, name="set")
    for k, p in [*searched.items(), ("set", set_policy)]:
        if k != "default":
            save_policy(p, out / f"policy-{k.replace(' ', '_').replace('+', 'and')}.json")
            print(f"{k}: adapt={method_of(p)}, views {' + '.join(p.view_names)}, T {p.temperature:.2f}; "
                  f"left-out estimate {json.dumps({x: p.meta['shifts']['lofo'].get(x) for x in ('top1', 'plain_top1', 'ratio')})}")
    print(f"tuning: {time.perf_counter() - t0:.0f} s on {len(even)} even photos", file=sys.stderr)
    results: dict[str, Any] = {}
    n_rep = min(args.report_photos, len(odd))
    results["clean (class order)"] = measure("clean", odd, lm, searched, set_policy, args.alpha, args.batch, cfg)
    for f in args.report_families.split(","):
        stream = render_stream(odd, f, args.severity, list(range(n_rep)), out / "report" / f"{f}-{args.severity}", 1000)
        results[f] = measure(f, stream, lm, searched, set_policy, args.alpha, args.batch, cfg)
    every = SHIFTS.names()
    parts = {f: render_stream(odd, f, args.severity, list(range(k, len(odd), len(every))),
                              out / "report" / f"{f}-{args.severity}", 1000) for k, f in enumerate(every)}
    order = sorted((i, f, j) for f in every for j, i in enumerate(range(every.index(f), len(odd), len(every))))
    mixed = LabelledImages(tuple(parts[f].paths[j] for _, f, j in order), tuple(parts[f].labels[j] for _, f, j in order),
                           odd.layout, "mixed")
    results["mixed (14 families)"] = measure("mixed", mixed, lm, searched, set_policy, args.alpha, args.batch, cfg)
    seen = set(plan.families)
    md = table(results, seen)
    print(md)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")
    (out / "table.md").write_text(md + "\n")
    print(f"total {time.perf_counter() - t0:.0f} s; wrote {out / 'results.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
