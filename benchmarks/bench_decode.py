"""Decode throughput: the thread pool ``evaluate`` uses against forked DataLoader workers.

Run: ``python benchmarks/bench_decode.py`` (``--images 200`` for a shorter run). Each
contender decodes the sample photos and renders what ``evaluate`` renders for them (the plain
input and one input stage) into batches of 32, with 2 workers; rounds are interleaved and the
median images/s is reported, with the ratio to today's ``fork`` DataLoader workers.

Contenders: ``threads`` (:class:`ttakit.datasets.DecodeLoader`, what ``make_loader`` returns),
``fork`` and ``forkserver`` (torch's DataLoader with that multiprocessing context), and
``inline`` (no workers).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import SAMPLE, load_avg, load_bench_model, log, provenance, quick_folders  # noqa: E402

from ttakit.data import InputRenderer  # noqa: E402
from ttakit.datasets import ImageList, collate_decoded, make_loader  # noqa: E402
from ttakit.policy import parse_view  # noqa: E402


def loaders(paths: list[str], renderer: InputRenderer, workers: int, batch: int) -> dict:
    batches = [list(range(i, min(i + batch, len(paths)))) for i in range(0, len(paths), batch)]

    def torch_loader(method: str):
        return lambda: DataLoader(ImageList(paths, renderer), batch_sampler=batches, num_workers=workers,
                                  collate_fn=collate_decoded, prefetch_factor=2,
                                  multiprocessing_context=multiprocessing.get_context(method))

    return {"threads": lambda: make_loader(paths, renderer, batches, workers), "fork": torch_loader("fork"),
            "forkserver": torch_loader("forkserver"), "inline": lambda: make_loader(paths, renderer, batches, 0)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="smoke run: 4 photos, batches of 2, 1 repeat, no forkserver")
    args = p.parse_args(argv)
    print(provenance(__file__, argv))
    if args.quick:
        args.images, args.batch, args.repeats = 4, 2, 1
    load_start = load_avg()
    lm = load_bench_model(args.quick)  # only its data config: how the photos are resized and cropped
    with tempfile.TemporaryDirectory() as tmp:
        folder = quick_folders(Path(tmp), args.images)["clean"] if args.quick else SAMPLE
        paths = [str(f) for f in sorted(folder.glob("*.JPEG"))[: args.images]]
        if not paths:
            raise SystemExit(f"no sample photos at {SAMPLE}")
        renderer = InputRenderer({None, parse_view("input=256:0.875").stage}, lm.data_config)
        contenders = loaders(paths, renderer, args.workers, args.batch)
        if args.quick:  # a forkserver starts a fresh interpreter: seconds, and nothing a smoke run needs
            del contenders["forkserver"]
        rates = measure(contenders, args.repeats)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"Decode + render (plain and input=256:0.875) of {len(paths)} sample photos, batches of {args.batch}, "
          f"{args.workers} workers; median of {args.repeats} interleaved rounds; load {load_start} at start, "
          f"{load_avg()} at the end.\n")
    print("| loader | img/s | vs fork |\n|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.1f} | {v / med['fork']:.2f}x |")


def measure(contenders: dict, repeats: int) -> dict[str, list[float]]:
    """Images/s of each contender per round, rounds interleaved."""
    rates: dict[str, list[float]] = {k: [] for k in contenders}
    for r in range(repeats + 1):  # round 0 warms the page cache and the forkserver
        for k, make in contenders.items():
            t0 = time.perf_counter()
            n = sum(len(idx) for idx, _, _ in make())
            if r:
                rates[k].append(n / (time.perf_counter() - t0))
        if r:
            log(f"round {r}: " + ", ".join(f"{k} {v[-1]:.1f} img/s" for k, v in rates.items()))
    return rates


if __name__ == "__main__":
    main()
