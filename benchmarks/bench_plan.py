"""Plan overhead: ClassificationTTA and SegmentationTTA (which run a ttakit.Plan) against the bare view loop.

Run: ``python benchmarks/bench_plan.py`` (``--repeats N``). For each task, the wrapper's call is
timed against the same model on the same views through :func:`ttakit.runtime.loop.run_views`
plus the same merge (the path the wrappers took before they were built on Plan), interleaved,
medians reported with their ratio; the answers are checked equal first. Also a Plan fed through
numpy (``batch.array`` in, numpy out) against the same Plan fed tensors: the copy cost.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import timm
import torch

import ttakit
from ttakit.merge import merge_logits
from ttakit.runtime.loop import run_views
from ttakit.tasks.deaugment import merge_dense

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import provenance  # noqa: E402


def _median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 repeat")
    args = ap.parse_args(argv)
    print(provenance(__file__, argv))
    if args.quick:
        args.repeats = 1
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    net = timm.create_model("test_resnet", num_classes=10).eval()
    seg = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 5, 1)).eval()
    x = torch.randn(8, 3, 64, 64)
    cases = {}
    tta = ttakit.ClassificationTTA(net, "d4", run_config=ttakit.RunConfig(micro_batch=16, channels_last=False))
    bare_c = lambda: merge_logits(torch.stack(run_views(net, x, tta.views, tta.norm, tta.run_config), 1))  # noqa: E731
    cases["classify d4, 8 x 64 px"] = (lambda: tta(x), bare_c)
    stta = ttakit.SegmentationTTA(seg, "flip*scale(1,1.25)", run_config=ttakit.RunConfig(micro_batch=16, channels_last=False))
    bare_s = lambda: merge_dense(stta.views, run_views(seg, x, stta.views, stta.norm, stta.run_config),  # noqa: E731
                                 stta.geometry(x)).output
    cases["segment flip*scale(1,1.25), 8 x 64 px"] = (lambda: stta(x), bare_s)
    plan = ttakit.Plan("d4", task="classify", micro_batch=16)
    run_np = lambda a: net(torch.from_numpy(a)).numpy()  # noqa: E731
    cases["Plan d4: numpy in/out vs tensors"] = (lambda: plan.run(run_np, x, numpy=True), lambda: plan.run(net, x))
    print(f"load: {os.getloadavg()[0]:.2f}, torch threads 1, {args.repeats} repeats interleaved, medians")
    print("| case | wrapper / Plan (ms) | bare loop (ms) | ratio |")
    print("|---|---:|---:|---:|")
    with torch.inference_mode():
        for name, (ours, bare) in cases.items():
            a, b = ours(), bare()
            a, b = (r.probs if hasattr(r, "probs") else r for r in (a, b))
            assert torch.allclose(a, b, atol=1e-5), name
            t_ours, t_bare = [], []
            for _ in range(args.repeats):  # interleaved
                t_ours.append(_median(ours, 1))
                t_bare.append(_median(bare, 1))
            mo, mb = statistics.median(t_ours) * 1e3, statistics.median(t_bare) * 1e3
            print(f"| {name} | {mo:.1f} | {mb:.1f} | {mo / mb:.2f} |")
    torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
