"""Test-time adaptation on ImageNet-C streams: plain, bn, tent, eata and auto, alone and with views.

Streams: the 500 photos of ``../shared/imagenet-sample`` (clean) and each ImageNet-C
corruption at severity 3 made from them by the authors' code
(``python ../shared/tools/make_imagenet_c.py SRC DST 3 CORRUPTION``, one folder per
corruption, ``--corrupted ROOT/c3-<name>``). Each stream runs in two orders: *shuffled* (a
fixed permutation, seed 0) and *sorted* by class (the folder order: label-shifted batches).
Batches of 64, ``tf_efficientnet_lite0``. Two inputs: the model's own preprocessing (resize
256, centre crop 224: "alone") and the policy ``input=224:1`` (the whole photo at 224, which
for ImageNet-C's pre-cropped photos is the photo itself: "views", the best view policy on
these photos). Every figure is paired with plain on the same photos
(:func:`ttakit.evaluation.stats.compare`: top-1 and NLL deltas, 95% bootstrap intervals).

Conformal sets: THR at alpha 0.1 calibrated on the *clean* photos' plain probabilities (even
photos), then applied to every stream's odd photos, plain and adapted: coverage and mean set
size show what a clean calibration promises on a shifted, adapted stream.

Cost (2 shared CPU cores): plain logits are computed once per stream and input; ``tent`` and
``eata`` (a backward pass per batch) run only on ``--heavy`` streams. Results are saved per
(stream, order, input, method) in ``--out`` (a JSON file, resumable: done entries are skipped)
and logits in ``--out``'s folder, so the run can be cut into parts:

    python benchmarks/bench_adapt.py --streams clean,contrast --out runs/bench_adapt/results.json
    python benchmarks/bench_adapt.py --table --out runs/bench_adapt/results.json

``--half odd`` uses only the odd photos (the half ``auto`` was never tuned on).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

import ttakit
from ttakit.adapt import AdaptOptions, create_adapter
from ttakit.conformal import calibrate, prediction_sets
from ttakit.data import input_transform
from ttakit.datasets import detect_dataset
from ttakit.evaluation.conformal_families import leave_one_family_out
from ttakit.evaluation.stats import compare
from ttakit.stages import Input

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import load_bench_model, provenance, quick_folders  # noqa: E402

CORRUPTIONS = ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression"]
METHODS = ["bn", "tent", "eata", "auto"]
HEAVY = "clean,contrast,fog,gaussian_noise"
# ResNet-50, ImageNet-C severity 5, error % (mr-eggplant/EATA README), for context only
PUBLISHED = {"plain": 82.0, "bn": 66.5, "tent": 57.4, "eata": 52.2}


def load_stream(folder: Path, stage: str, cfg: dict, names: list[str], cache: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, 3, 224, 224)`` normalised inputs and labels of one folder, cached as uint8."""
    path = cache / f"{folder.name}-{stage}.pt"
    if not path.exists():
        ds = detect_dataset(folder, names)
        tf = input_transform(None if stage == "crop" else Input(cfg["input_size"][-1], 1.0), cfg)
        mean, std = torch.tensor(cfg["mean"])[:, None, None], torch.tensor(cfg["std"])[:, None, None]
        xs = [((tf(Image.open(p).convert("RGB")) * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)
              for p in ds.paths]
        torch.save({"x": torch.stack(xs), "y": torch.tensor(ds.labels)}, path)
    d = torch.load(path, weights_only=True)
    mean, std = torch.tensor(cfg["mean"])[:, None, None], torch.tensor(cfg["std"])[:, None, None]
    x = ((d["x"].float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)
    return x, d["y"]


def run_plain(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    t = time.perf_counter()
    with torch.inference_mode():
        out = torch.cat([model(x[s:s + 100]).float() for s in range(0, len(x), 100)])
    return out, time.perf_counter() - t


def run_adapted(method: str, model: torch.nn.Module, x: torch.Tensor, order: torch.Tensor,
                batch: int) -> tuple[torch.Tensor, float, list[str]]:
    """Logits ``(N, C)`` (in photo order) of one stream pass, its seconds, auto's decisions."""
    adapter = create_adapter(method, model, AdaptOptions(batch=batch))
    out = torch.empty(len(x), 1000)
    t = time.perf_counter()
    for s in range(0, len(order), batch):
        ids = order[s:s + batch]
        out[ids] = adapter.step(x[ids]).float()
    return out, time.perf_counter() - t, list(getattr(adapter, "decisions", []))


def nll(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -torch.log_softmax(logits, -1).gather(1, y[:, None]).squeeze(1)


def conformal(cal_probs: torch.Tensor, cal_y: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> dict:
    """THR sets at alpha 0.1 calibrated on clean plain probabilities, measured on ``logits``."""
    cal = calibrate(cal_probs, cal_y, 0.1, "thr")
    sets = prediction_sets(torch.softmax(logits.double(), -1), cal)
    return {"coverage": float(sets[torch.arange(len(y)), y].float().mean()), "set_size": float(sets.sum(1).float().mean())}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--clean", default="../shared/imagenet-sample")
    ap.add_argument("--corrupted", default="/work/data/h27", help="folder holding c3-<corruption> folders")
    ap.add_argument("--streams", default=None, help="comma list (default: clean and every corruption found)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--heavy", default=HEAVY, help="streams on which tent and eata run too")
    ap.add_argument("--stages", default="crop,whole", help="crop: the model's preprocessing; whole: input=224:1")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--half", choices=["all", "even", "odd"], default="all")
    ap.add_argument("--photos", type=int, default=None, help="only the first N photos of each stream (a smoke run)")
    ap.add_argument("--out", default="runs/bench_adapt/results.json")
    ap.add_argument("--table", action="store_true", help="print the markdown tables of --out and stop")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: timm's tiny test model, 18 photos, a blurred copy standing in for one ImageNet-C "
                    "stream, the model's preprocessing only, batches of 6, results in a temporary folder")
    args = ap.parse_args(argv)
    print(provenance(__file__, argv))
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:  # a stand-in for ImageNet-C: the photos and a blurred, darkened copy as one corruption
            folders = quick_folders(Path(tmp) / "photos", 18)  # 9 even ones calibrate alpha 0.1
            shutil.copytree(folders["corrupted"], Path(tmp) / "c3-gaussian_noise")
            args.clean, args.corrupted, args.streams = str(folders["clean"]), tmp, "clean,gaussian_noise"
            args.heavy, args.batch, args.out = args.streams, 6, str(Path(tmp) / "results.json")
            args.stages = "crop"
        run(args)


def run(args: argparse.Namespace) -> None:
    """Every stream x order x input x method of ``args`` not yet in ``--out``; then the tables."""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(out.read_text()) if out.exists() else {}
    if args.table:
        print(tables(results))
        print(transfer(out.parent))
        return
    if not args.quick:
        torch.set_num_threads(2)
    lm = load_bench_model(args.quick)
    model = lm.model.eval().to(memory_format=torch.channels_last)
    cfg = dict(lm.data_config)
    cache = out.parent / "cache"
    cache.mkdir(exist_ok=True)
    root = Path(args.corrupted)
    found = ["clean"] + [c for c in CORRUPTIONS if len(list((root / f"c3-{c}").glob("*.JPEG"))) == 500]
    streams = args.streams.split(",") if args.streams else found
    heavy = set(args.heavy.split(","))
    for stage in args.stages.split(","):
        clean_file = cache / f"clean-plain-{stage}.pt"  # the calibration photos' plain logits, once
        if not clean_file.exists():
            clean_x, clean_y = load_stream(Path(args.clean), stage, cfg, lm.class_names, cache)
            torch.save({"logits": run_plain(model, clean_x)[0], "y": clean_y}, clean_file)
            del clean_x
        clean = torch.load(clean_file, weights_only=True)
        clean_plain, clean_y = clean["logits"], clean["y"]
        even = torch.arange(len(clean_y)) % 2 == 0
        cal_probs, cal_y = torch.softmax(clean_plain[even].double(), -1), clean_y[even]
        for name in streams:
            folder = Path(args.clean) if name == "clean" else root / f"c3-{name}"
            x, y = load_stream(folder, stage, cfg, lm.class_names, cache)
            keep = torch.arange(len(y)) if args.half == "all" else torch.arange(int(args.half == "odd"), len(y), 2)
            keep = keep[:args.photos]
            x, y = x[keep], y[keep]
            odd = (keep % 2 == 1)
            plain, secs = run_plain(model, x)
            torch.save({"logits": plain.half(), "y": y, "keep": keep}, out.parent / f"{name}-{stage}-plain.pt")
            base = {"top1": float((plain.argmax(-1) == y).float().mean()), "nll": float(nll(plain, y).mean()),
                    "s_per_photo": secs / len(y), **conformal(cal_probs, cal_y, plain[odd], y[odd])}
            g = torch.Generator().manual_seed(0)
            orders = {"shuffled": torch.randperm(len(y), generator=g), "sorted": torch.arange(len(y))}
            for oname, order in orders.items():
                results[f"{name}|{oname}|{stage}|plain"] = base
                for m in args.methods.split(","):
                    key = f"{name}|{oname}|{stage}|{m}"
                    if key in results or (m in ("tent", "eata") and name not in heavy):
                        continue
                    logits, secs, decisions = run_adapted(m, model, x, order, args.batch)
                    torch.save({"logits": logits.half(), "y": y, "keep": keep}, out.parent / f"{key.replace('|', '-')}.pt")
                    right, base_right = logits.argmax(-1) == y, plain.argmax(-1) == y
                    cmp = compare(base_right, right, nll(plain, y), nll(logits, y))
                    results[key] = {"top1": float(right.float().mean()), "nll": float(nll(logits, y).mean()),
                                    "s_per_photo": secs / len(y), **cmp.to_dict(),
                                    **conformal(cal_probs, cal_y, logits[odd], y[odd]),
                                    **({"decisions": decisions} if decisions else {})}
                    out.write_text(json.dumps(results, indent=1) + "\n")
                    print(f"{key}: top1 {results[key]['top1']:.3f} (plain {base['top1']:.3f}), "
                          f"{secs / len(y) * 1000:.0f} ms/photo", flush=True)
    print(tables(results))
    print(transfer(out.parent))


POOL = ["crop-plain", "crop-shuffled-bn", "crop-shuffled-auto"]  # stored for every family


def transfer(folder: Path) -> str:
    """Conformal set-size policy chosen across corruption families, measured on the one left out.

    Candidate columns per photo: the plain model (column 0) and the shuffled bn and auto
    streams' logits, each at a temperature; the choice
    (views, temperature) minimises the mean over the other families of the THR set size
    relative to plain at alpha 0.1, and the left-out family's sets are compared with plain's,
    both calibrated on that family's photos (cross-fitted halves, so both cover 90%).
    """
    cols, labels, fams, names = [], [], [], []
    for name in CORRUPTIONS:
        files = [folder / (f"{name}-{c}.pt" if c.endswith("plain") else
                           f"{name}-{c.split('-')[1]}-{c.split('-')[0]}-{c.split('-')[2]}.pt") for c in POOL]
        if not all(f.exists() for f in files):
            continue
        loaded = [torch.load(f, weights_only=True) for f in files]
        cols.append(torch.stack([d["logits"].float() for d in loaded], 1))
        labels.append(loaded[0]["y"])
        fams.append(torch.full((len(loaded[0]["y"]),), len(names)))
        names.append(name)
    if len(names) < 3:
        return "\n(conformal transfer: fewer than 3 corruption families with every pool column stored)"
    res = leave_one_family_out(torch.cat(cols), torch.cat(labels), torch.cat(fams), 0.1, "thr", budget=3)
    lines = ["\n**conformal THR sets (alpha 0.1), policy chosen on the other families, measured on the one left "
             "out** (both at 90% coverage)\n", "| left-out family | chosen columns | T | set size | plain | ratio |",
             "|---|---|---|---|---|---|"]
    for f, r in res.items():
        lines.append(f"| {names[f]} | {', '.join(POOL[c] for c in r['cols'])} | {r['temperature']:g} | "
                     f"{r['set_size']:.2f} | {r['plain_set_size']:.2f} | {r['ratio']:.2f} |")
    ratios = torch.tensor([r["ratio"] for r in res.values()])
    lines.append(f"| **mean** | | | | | **{float(ratios.mean()):.2f}** (worst {float(ratios.max()):.2f}) |")
    return "\n".join(lines)


def tables(results: dict) -> str:
    """Markdown: per stream and order, top-1 of every method (auto's delta and interval)."""
    lines = []
    for stage, title in (("crop", "alone (the model's preprocessing)"), ("whole", "with the view policy input=224:1")):
        keys = sorted({tuple(k.split("|")[:2]) for k in results if k.split("|")[2] == stage},
                      key=lambda t: (t[0] != "clean", t[0], t[1]))
        if not keys:
            continue
        lines += [f"\n**{title}**: top-1 % (NLL), batches of 64\n",
                  "| stream | order | plain | bn | tent | eata | auto | auto - plain (95% CI) | auto adapted batches |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, order in keys:
            cells = []
            for m in ["plain"] + METHODS:
                r = results.get(f"{name}|{order}|{stage}|{m}")
                cells.append("-" if r is None else f"{100 * r['top1']:.1f} ({r['nll']:.2f})")
            a = results.get(f"{name}|{order}|{stage}|auto")
            delta = "-" if a is None else (f"{100 * a['delta_top1']:+.1f} ({100 * a['ci_top1'][0]:+.1f}, "
                                           f"{100 * a['ci_top1'][1]:+.1f})")
            used = "-" if a is None else f"{a['decisions'].count('adapted')}/{len(a['decisions'])}"
            lines.append(f"| {name} | {order} | " + " | ".join(cells) + f" | {delta} | {used} |")
    lines += ["\n**seconds per photo** (mean over streams, 2 shared CPU cores)\n", "| input | " +
              " | ".join(["plain"] + METHODS) + " |", "|---|" + "---|" * (1 + len(METHODS))]
    for stage in ("crop", "whole"):
        row = []
        for m in ["plain"] + METHODS:
            v = [r["s_per_photo"] for k, r in results.items() if k.endswith(f"|{stage}|{m}")]
            row.append(f"{sum(v) / len(v):.3f}" if v else "-")
        lines.append(f"| {stage} | " + " | ".join(row) + " |")
    lines += ["\n**conformal THR sets (alpha 0.1) calibrated on clean plain photos**: coverage % / mean size "
              "on each stream's odd photos\n", "| stream | order | " + " | ".join(["plain"] + METHODS) + " |",
              "|---|---|" + "---|" * (1 + len(METHODS))]
    for name, order in sorted({tuple(k.split("|")[:2]) for k in results if "|crop|" in k},
                              key=lambda t: (t[0] != "clean", t[0], t[1])):
        cells = []
        for m in ["plain"] + METHODS:
            r = results.get(f"{name}|{order}|crop|{m}")
            cells.append("-" if r is None else f"{100 * r['coverage']:.0f} / {r['set_size']:.1f}")
        lines.append(f"| {name} | {order} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
