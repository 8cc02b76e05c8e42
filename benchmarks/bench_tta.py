"""TTA speed benchmark: ttakit vs plain, ttach and a tutorial-style loop; evaluate end to end.

Run: ``python benchmarks/bench_tta.py --device cpu`` (``--quick`` for a smoke run). It prints
a Markdown table with images/s and the ratios the project targets, and writes it with
``--out FILE``. Contenders are interleaved and repeated; medians are reported. Before timing,
every contender must give the same top-1 predictions on the same images.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch
import ttach
from PIL import Image

import ttakit
from ttakit.runtime.config import RunConfig, timed, tune_run_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import SAMPLE, load_bench_model, provenance, quick_folders  # noqa: E402


# --------------------------------------------------------------------------- contenders
def pil_views(name: str) -> list[Callable[[Image.Image], Image.Image]]:
    """The same views as PIL operations, as a tutorial would write them."""
    T = Image.Transpose
    ident = lambda im: im  # noqa: E731
    mirror = lambda im: im.transpose(T.FLIP_LEFT_RIGHT)  # noqa: E731
    if name == "hflip":
        return [ident, mirror]
    if name == "d4":
        rots = [ident, lambda im: im.transpose(T.ROTATE_90), lambda im: im.transpose(T.ROTATE_180),
                lambda im: im.transpose(T.ROTATE_270)]
        return rots + [lambda im, r=r: r(mirror(im)) for r in rots]
    if name == "ten_crop":
        def crop(pos):
            def f(im):
                W, H = im.size
                s = 192
                left = {"c": (W - s) // 2, "tl": 0, "tr": W - s, "bl": 0, "br": W - s}[pos]
                top = {"c": (H - s) // 2, "tl": 0, "tr": 0, "bl": H - s, "br": H - s}[pos]
                return im.crop((left, top, left + s, top + s))
            return f
        crops = [crop(p) for p in ("c", "tl", "tr", "bl", "br")]
        return crops + [lambda im, c=c: c(mirror(im)) for c in crops]
    raise ValueError(name)


POLICIES = {"hflip": ("hflip", ttach.aliases.hflip_transform), "d4": ("d4", ttach.aliases.d4_transform),
            "ten_crop": ("ten_crop(192)", lambda: ttach.aliases.ten_crop_transform(192, 192))}


class Softmax(torch.nn.Module):
    def __init__(self, m: torch.nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.m(x), -1)


def tutorial_loop(lm: ttakit.LoadedModel, crops: list[Image.Image], views: list, device: torch.device) -> torch.Tensor:
    """One image at a time, each view made with PIL and sent alone through the model."""
    tf = lm.transform()
    to_tensor = tf.transforms[-2:]  # ToTensor + Normalize (timm's eval transform ends with them)
    out = []
    with torch.inference_mode():
        for im in crops:
            probs = 0
            for v in views:
                x = v(im)
                for t in to_tensor:
                    x = t(x)
                probs = probs + torch.softmax(lm.model(x[None].to(device)), -1)
            out.append(probs / len(views))
    return torch.cat(out)


def load_batch(lm: ttakit.LoadedModel, n: int, folder: Path = SAMPLE) -> tuple[torch.Tensor, list[Image.Image]]:
    """n photos (random noise pictures where the sample folder is absent): tensors and the
    224-px PIL crops the tutorial loop starts from."""
    tf = lm.transform()
    files = sorted(folder.glob("*.JPEG"))[:n] if folder.is_dir() else []
    ims = [ttakit.load_image(f) for f in files] or [
        Image.fromarray((torch.rand(300, 400, 3) * 255).byte().numpy()) for _ in range(n)]
    crops = []
    for im in ims:
        for t in tf.transforms[:-2]:  # resize + centre crop
            im = t(im)
        crops.append(im)
    return torch.stack([tf(im) for im in ims]), crops


def bench_views(lm, device, cfg, batch, repeats, names, log, folder: Path = SAMPLE) -> list[dict]:
    x, crops = load_batch(lm, batch, folder)
    x = x.to(device)
    rows = []
    plain = ttakit.ClassificationTTA(lm.model, "none", run_config=cfg, norm=lm.normalization)
    for name in names:
        ours_policy, theirs = POLICIES[name]
        ours = ttakit.ClassificationTTA(lm.model, ours_policy, run_config=cfg, norm=lm.normalization)
        V = len(ours.views)
        ttach_model = ttach.ClassificationTTAWrapper(Softmax(lm.model), theirs(), merge_mode="mean")

        def run_ttach():
            # ttach as its README shows it: the user's contiguous batch, one forward per view.
            lm.model.to(memory_format=torch.contiguous_format)
            try:
                with torch.inference_mode():
                    return ttach_model(x)
            finally:
                if cfg.channels_last:
                    lm.model.to(memory_format=torch.channels_last)

        contenders = {
            "plain": lambda: plain(x),
            "ttakit": lambda: ours(x),
            "ttach": run_ttach,
            "tutorial": lambda: tutorial_loop(lm, crops, pil_views(name), device),
        }
        preds = {k: fn().argmax(-1).cpu() for k, fn in contenders.items() if k != "plain"}
        same = all(torch.equal(preds["ttakit"], p) for p in preds.values())
        if not same:
            diff = {k: int((p != preds["ttakit"]).sum()) for k, p in preds.items()}
            if cfg.amp_dtype is None:
                raise SystemExit(f"{name}: contenders disagree on top-1 ({diff} of {batch} images differ)")
            log(f"{name}: under autocast, top-1 differs from the fp32 contenders on {diff} of {batch} images")
        times: dict[str, list[float]] = {k: [] for k in contenders}
        for _ in range(repeats):  # interleaved: drifts in machine speed hit every contender alike
            for k, fn in contenders.items():
                times[k].append(timed(fn, device))
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {
            "views": name, "V": V,
            **{f"{k}_img_s": batch * (V if k != "plain" else 1) / med[k] for k in contenders},
            "overhead": med["ttakit"] / (V * med["plain"]),
            "vs_ttach": med["ttach"] / med["ttakit"],
            "vs_tutorial": med["tutorial"] / med["ttakit"],
        }
        log(f"{name}: {json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})}")
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- end to end
def _pss(pid: int) -> int:
    """Proportional set size (kB) of one process: shared pages split among their users, so
    forked DataLoader workers are not counted several times."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        return next(int(line.split()[1]) for line in text.splitlines() if line.startswith("Pss:"))
    except (OSError, StopIteration, ValueError):
        return 0


def _rss_tree(pid: int) -> int:
    """Memory (bytes, PSS) of a process and its children."""
    kids = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout.split()
    return (_pss(pid) + sum(_pss(int(k)) for k in kids)) * 1024


def run_evaluate(limit: int, out: Path, device: str, workers: int, policy: str) -> tuple[float, int]:
    """Wall time and peak RSS of one ``ttakit evaluate`` process."""
    cmd = [sys.executable, "-m", "ttakit", "evaluate", str(SAMPLE), "--tta", policy, "--limit", str(limit), "--out", str(out),
           "--workers", str(workers), "--quiet", "--device", device, "--micro-batch", "auto"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0

    def watch():
        nonlocal peak
        while proc.poll() is None:
            peak = max(peak, _rss_tree(proc.pid))
            time.sleep(0.1)

    th = threading.Thread(target=watch)
    th.start()
    _, err = proc.communicate()
    th.join()
    if proc.returncode:
        raise SystemExit(f"evaluate failed: {err}")
    return time.perf_counter() - t0, peak


def bench_evaluate(lm, device, cfg, log, n: int, workers: int, policy: str, repeats: int, folder: Path = SAMPLE,
                   rss: bool = True) -> dict:
    """End-to-end evaluate (decode, resize, views, forward, merge, metrics, files) in this
    process, against forward-only on pre-decoded tensors; peak RSS of whole CLI runs (of the
    default model on the sample photos; not measured with ``rss=False``)."""
    from ttakit.datasets import detect_dataset
    from ttakit.evaluation.evaluate import EvalOptions, evaluate

    data = detect_dataset(folder, lm.class_names).head(n)
    pol = [ttakit.create_policy(policy)]
    opts = EvalOptions(batch_size=32, workers=workers, quiet=True)
    # Forward-only: the same images pre-decoded, the same policy and run config.
    x = ttakit.preprocess(list(data.paths), lm.transform()).to(device)
    tta = ttakit.ClassificationTTA(lm.model, policy, run_config=cfg, norm=lm.normalization)
    tta(x[:8])
    e2e_t, fwd_t = [], []
    with tempfile.TemporaryDirectory() as tmp:
        evaluate(lm, data.head(32), pol, out_dir=Path(tmp) / "warm", run_config=cfg, options=opts, device=device)  # warm-up
        for r in range(repeats):  # interleaved, as the machine's speed drifts
            e2e_t.append(timed(lambda: evaluate(lm, data, pol, out_dir=Path(tmp) / f"e2e{r}", run_config=cfg, options=opts,
                                                device=device), device))
            fwd_t.append(timed(lambda: [tta(x[i : i + 32]) for i in range(0, len(x), 32)], device))
        small = max(20, n // 5)
        peak_n = peak_small = 0
        if rss:
            _, peak_n = run_evaluate(n, Path(tmp) / "a", device.type, workers, policy)
            _, peak_small = run_evaluate(small, Path(tmp) / "b", device.type, workers, policy)
    e2e, fwd = n / statistics.median(e2e_t), n / statistics.median(fwd_t)
    # The tutorial loop, decoding included, on a subset.
    tf = lm.transform()

    def tutorial(files):
        crops = []
        for f in files:
            im = ttakit.load_image(f)
            for t in tf.transforms[:-2]:
                im = t(im)
            crops.append(im)
        views = pil_views(policy) if policy in ("hflip", "d4") else pil_views("ten_crop")
        tutorial_loop(lm, crops, views, device)

    sub = list(data.paths[:32])
    tut = len(sub) / timed(lambda: tutorial(sub), device)
    row = {
        "policy": policy, "n": n, "e2e_img_s": e2e, "forward_img_s": fwd, "tutorial_img_s": tut,
        "e2e_vs_forward": e2e / fwd, "e2e_vs_tutorial": e2e / tut,
        "peak_rss_mb": peak_n / 2**20, "peak_rss_small_mb": peak_small / 2**20, "small_n": small,
        "rss_ratio": peak_n / max(peak_small, 1),
    }
    log(f"evaluate: {json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})}")
    return row


def table(rows: list[dict], evs: list[dict], meta: dict) -> str:
    lines = [f"Machine: {meta['machine']}; torch {torch.__version__}; model {meta['model']}; "
             f"batch {meta['batch']}; run config {meta['cfg']}; {meta['date']}.", "",
             f"Command: `{meta['cmd']}`", "",
             "| views | V | plain img/s | ttakit view-img/s | ttach view-img/s | tutorial view-img/s | overhead (target <= 1.05) | vs ttach (target >= 2) | vs tutorial |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['views']} | {r['V']} | {r['plain_img_s']:.1f} | {r['ttakit_img_s']:.1f} | {r['ttach_img_s']:.1f} | "
                     f"{r['tutorial_img_s']:.1f} | {r['overhead']:.3f} | {r['vs_ttach']:.2f}x | {r['vs_tutorial']:.2f}x |")
    if evs:
        lines += ["", "| evaluate | images | end-to-end img/s | forward-only img/s | e2e / forward (target >= 0.85) | "
                  "tutorial img/s (decode included) | e2e / tutorial (target >= 5) | peak memory (PSS) | peak, 1/5 of the images | "
                  "ratio (target <= 1.10) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for ev in evs:
            lines.append(
                f"| {ev['policy']} | {ev['n']} | {ev['e2e_img_s']:.1f} | {ev['forward_img_s']:.1f} | {ev['e2e_vs_forward']:.2f} | "
                f"{ev['tutorial_img_s']:.1f} | {ev['e2e_vs_tutorial']:.1f}x | " + (
                    f"{ev['peak_rss_mb']:.0f} MiB | {ev['peak_rss_small_mb']:.0f} MiB ({ev['small_n']}) | "
                    f"{ev['rss_ratio']:.2f} |" if ev["peak_rss_mb"] else "- | - | - |"))
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--views", default="hflip,d4,ten_crop")
    p.add_argument("--evaluate-images", type=int, default=500, help="0 skips the end-to-end part")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--evaluate-policies", default="hflip,d4", help="policies of the end-to-end part")
    p.add_argument("--amp", choices=("bf16", "fp16"), default=None)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: timm's tiny test model, hflip, batch 2, 1 repeat, 4 images, no peak-memory runs")
    p.add_argument("--out", default=None, help="write the Markdown table here")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    print(provenance(__file__, argv))
    if args.quick:
        args.batch, args.repeats, args.evaluate_images, args.views, args.evaluate_policies = 2, 1, 4, "hflip", "hflip"
    device = torch.device(args.device)
    torch.manual_seed(0)
    lm = load_bench_model(args.quick)
    lm.model.to(device)
    cfg = RunConfig(4, False) if args.quick else tune_run_config(lm.model, lm.input_size, device)
    if args.amp:
        cfg = RunConfig(cfg.micro_batch, cfg.channels_last, {"bf16": torch.bfloat16, "fp16": torch.float16}[args.amp])
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    log(f"run config: {cfg}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = quick_folders(Path(tmp), args.evaluate_images)["clean"] if args.quick else SAMPLE
        rows = bench_views(lm, device, cfg, args.batch, args.repeats, [v for v in args.views.split(",") if v], log, folder)
        evs = []
        if args.evaluate_images and folder.is_dir():
            evs = [bench_evaluate(lm, device, cfg, log, args.evaluate_images, 0 if args.quick else args.workers, p,
                                  args.repeats, folder, rss=not args.quick)
                   for p in args.evaluate_policies.split(",")]
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    meta = {"machine": machine, "model": f"{lm.name} at {lm.input_size[-1]} px", "batch": args.batch, "cfg": f"micro-batch {cfg.micro_batch}, channels_last {cfg.channels_last}",
            "date": date.today().isoformat(), "cmd": "python " + " ".join(sys.argv if argv is None else [__file__, *argv])}
    text = table(rows, evs, meta)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
