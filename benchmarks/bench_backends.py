"""Backend benchmark: torch vs ONNX Runtime vs OpenVINO on the default model at 224 px.

Run: ``python benchmarks/bench_backends.py`` (``--quick`` for a smoke run; ``--out FILE`` writes
the tables). Four parts, each a Markdown table with its ratios:

1. the model alone: images/s per backend at batch 1, 4 and 16;
2. ``evaluate`` end to end on the sample photos (decode, views, forward, merge, files) per
   policy and backend, each backend with its own tuned micro-batch, the photos in parts that
   every backend runs in turn; the ratio to torch, and a check that every stored per-view
   top-1 equals torch's, with the largest |logit| difference;
3. ``ClassificationTTA`` run by onnxruntime against ttach's ``ClassificationTTAWrapper``
   (torch, one forward per view) on the same photos, after checking that they agree on top-1;
4. the exported hflip graph (``ttakit export``) against the exported plain model, both in
   onnxruntime: the cost ratio (2 is the cost of two forwards).

Contenders are interleaved and repeated; medians are reported. On a GPU machine
``--device cuda --backends torch,torch-bf16,torch-compile,onnxruntime-cuda,onnxruntime-tensorrt``
runs the model part for the GPU variants (see ``gpu_bench.sh``); unavailable ones are skipped.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import torch

import ttakit
from ttakit.datasets import LabelledImages, detect_dataset
from ttakit.errors import BackendError
from ttakit.evaluation.evaluate import EvalOptions, evaluate
from ttakit.evaluation.classify_logits import load_logits
from ttakit.runtime.backends import Backend, TorchBackend, create_backend
from ttakit.runtime.config import RunConfig, default_run_config, prepare_model, timed, tune_run_config
from ttakit import export_tta

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import SAMPLE, load_avg, load_bench_model, log, provenance, quick_folders  # noqa: E402

TARGETS = {"hflip": 1.4, "d4": 1.7}  # evaluate e2e, onnxruntime vs torch


# --------------------------------------------------------------------------- contenders
def make_backend(spec: str, lm: ttakit.LoadedModel, device: torch.device) -> Backend:
    """``torch``, ``torch-bf16``, ``torch-compile``, ``onnxruntime[-cuda|-tensorrt]``, ``openvino``."""
    common = {"input_size": lm.input_size, "key": lm.name}
    if spec == "torch":
        return TorchBackend(lm.model)
    if spec == "torch-bf16":
        return TorchBackend(lm.model, "bf16")
    if spec == "torch-compile":
        return TorchBackend(torch.compile(lm.model))
    if spec == "onnxruntime":
        return create_backend("onnxruntime", lm.model, providers=("cpu",), **common)
    if spec.startswith("onnxruntime-"):
        provider = spec.split("-", 1)[1]
        providers = ("tensorrt", "cuda") if provider == "tensorrt" else (provider,)
        return create_backend("onnxruntime", lm.model, device=device, providers=providers, **common)
    if spec == "openvino":
        return create_backend("openvino", lm.model, **common)
    raise SystemExit(f"unknown contender {spec!r}")


def run_config_for(spec: str, backend: Backend, lm: ttakit.LoadedModel, device: torch.device, micro: str) -> RunConfig:
    """Each backend's micro-batch, tuned once per device and cached (``--micro-batch auto``)."""
    is_torch = spec.startswith("torch")
    if micro != "auto":
        return RunConfig(int(micro), channels_last=is_torch)
    if is_torch:
        cfg = tune_run_config(lm.model, lm.input_size, device)
        return RunConfig(cfg.micro_batch, cfg.channels_last, torch.bfloat16 if spec == "torch-bf16" else None)
    return tune_run_config(backend, lm.input_size, device)


def photos(lm: ttakit.LoadedModel, n: int, folder: Path = SAMPLE) -> torch.Tensor:
    """n preprocessed sample photos (random images where the folder is absent)."""
    files = sorted(folder.glob("*.JPEG"))[:n] if folder.is_dir() else []
    if not files:
        return torch.randn(n, 3, *lm.input_size)
    return ttakit.preprocess(files, lm.transform())


def interleaved(contenders: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median wall time of each contender, rounds interleaved (machine drift hits all alike)."""
    times: dict[str, list[float]] = {k: [] for k in contenders}
    with torch.inference_mode():
        for fn in contenders.values():
            fn()  # warm-up
        for _ in range(repeats):
            for k, fn in contenders.items():
                times[k].append(timed(fn, device))
    return {k: statistics.median(v) for k, v in times.items()}


# --------------------------------------------------------------------------- 1. the model alone
def bench_model(backends: dict[str, Backend], device: torch.device, batches: list[int], repeats: int,
                seconds: float, size: tuple[int, int] = (224, 224)) -> list[dict]:
    rows = []
    for bs in batches:
        x = torch.randn(bs, 3, *size, device=device)
        xcl = x.contiguous(memory_format=torch.channels_last)

        def loop(be: Backend, inp: torch.Tensor) -> Callable[[], int]:
            def run() -> int:  # as many calls as fit in `seconds`
                n, t0 = 0, time.perf_counter()
                while n < 2 or time.perf_counter() - t0 < seconds:
                    be(inp)
                    n += 1
                return n
            return run

        counts: dict[str, list[float]] = {k: [] for k in backends}
        with torch.inference_mode():
            for k, be in backends.items():
                be(xcl if k.startswith("torch") else x)
            for _ in range(repeats):
                for k, be in backends.items():
                    run = loop(be, xcl if k.startswith("torch") else x)
                    t0 = time.perf_counter()
                    n = run()
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    counts[k].append(n * bs / (time.perf_counter() - t0))
        row = {"batch": bs, **{k: statistics.median(v) for k, v in counts.items()}}
        log(f"model batch {bs}: " + ", ".join(f"{k} {row[k]:.1f} img/s" for k in backends))
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- 2. evaluate e2e
def bench_evaluate(lm, backends: dict[str, Backend], cfgs: dict[str, RunConfig], device, n: int, policies: list[str],
                   workers: int, rounds: int, tmp: Path, folder: Path = SAMPLE) -> list[dict]:
    """Each policy's photos in ``rounds`` consecutive parts; every part is evaluated by every
    backend in turn, so a change in the shared machine's speed hits all backends alike."""
    data = detect_dataset(folder, lm.class_names).head(n)
    bounds = [round(i * len(data) / rounds) for i in range(rounds + 1)]
    parts = [LabelledImages(data.paths[a:b], data.labels[a:b], data.layout, data.source)
             for a, b in zip(bounds, bounds[1:]) if b > a]
    opts = EvalOptions(batch_size=32, workers=workers, quiet=True)
    rows = []
    for k, be in backends.items():  # warm-up: loader workers, kernels, sessions
        evaluate(lm, data.head(32), [ttakit.create_policy("hflip")], out_dir=tmp / f"warm-{k}", run_config=cfgs[k],
                 options=opts, device=device, backend=be)
    for policy in policies:
        pol = [ttakit.create_policy(policy)]
        secs = {k: 0.0 for k in backends}
        right = {k: 0 for k in backends}
        logits: dict[str, list[torch.Tensor]] = {k: [] for k in backends}
        for r, part in enumerate(parts):
            for k, be in backends.items():
                out = tmp / f"{policy}-{k}-{r}"
                prepare_model(lm.model, cfgs[k])
                res: dict = {}
                secs[k] += timed(lambda: res.update(evaluate(lm, part, pol, out_dir=out, run_config=cfgs[k],
                                                             options=opts, device=device, backend=be)), device)
                right[k] += round(res["results"][policy]["top1"] * len(part))
                logits[k].append(load_logits(out)[0])  # (n, U, C) every view of the policy
            log(f"evaluate {policy} round {r + 1}/{len(parts)}: "
                + ", ".join(f"{k} {bounds[r + 1] / secs[k]:.2f} img/s" for k in backends))
        cat = {k: torch.cat(v) for k, v in logits.items()}
        ref = cat["torch"] if "torch" in cat else next(iter(cat.values()))
        for k in backends:
            same = bool((cat[k].argmax(-1) == ref.argmax(-1)).all())
            rows.append({"policy": policy, "backend": k, "n": len(data), "views": ref.shape[1],
                         "img_s": len(data) / secs[k], "vs_torch": secs.get("torch", secs[k]) / secs[k],
                         "top1": right[k] / len(data), "same_top1": same,
                         "max_diff": float((cat[k] - ref).abs().max()), "micro_batch": cfgs[k].micro_batch})
    return rows


# --------------------------------------------------------------------------- 3. vs ttach
class _Softmax(torch.nn.Module):
    def __init__(self, m: torch.nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.m(x), -1)


def bench_ttach(lm, ort_backend: Backend, cfg: RunConfig, x: torch.Tensor, repeats: int, device,
                names: tuple[str, ...] = ("hflip", "d4")) -> list[dict]:
    import ttach

    rows = []
    for name in names:
        theirs = {"hflip": ttach.aliases.hflip_transform, "d4": ttach.aliases.d4_transform}[name]()
        ours = ttakit.ClassificationTTA(lm.model, name, run_config=cfg, norm=lm.normalization,
                                        data_config=lm.data_config, backend=ort_backend)
        wrapper = ttach.ClassificationTTAWrapper(_Softmax(lm.model), theirs, merge_mode="mean")

        def run_ttach() -> torch.Tensor:  # as ttach's README shows it: a contiguous batch and model
            lm.model.to(memory_format=torch.contiguous_format)
            return wrapper(x)

        with torch.inference_mode():
            agree = int((ours(x).argmax(-1) == run_ttach().argmax(-1)).sum())
        if agree != len(x):
            raise SystemExit(f"{name}: ttakit+onnxruntime and ttach disagree on {len(x) - agree} of {len(x)} top-1s")
        med = interleaved({"ttakit": lambda: ours(x), "ttach": run_ttach}, repeats, device)
        rows.append({"policy": name, "n": len(x), "ttakit_img_s": len(x) / med["ttakit"],
                     "ttach_img_s": len(x) / med["ttach"], "ratio": med["ttach"] / med["ttakit"]})
        log(f"ttach {name}: {rows[-1]}")
    return rows


# --------------------------------------------------------------------------- 4. exported graphs
def bench_graphs(lm, tmp: Path, batches: list[int], repeats: int, seconds: float = 0.5) -> list[dict]:
    import onnxruntime as ort

    sessions = {}
    for name in ("none", "hflip"):
        path = export_tta(lm.model, name, tmp / f"{name}.onnx", data_config=lm.data_config)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sessions[name] = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    rows = []
    for bs in batches:
        x = np.random.default_rng(0).standard_normal((bs, 3, *lm.input_size), dtype=np.float32)
        sessions["none"].run(None, {"images": x})
        single = timed(lambda: sessions["none"].run(None, {"images": x}), torch.device("cpu"))
        calls = max(1, round(seconds / single))  # about half a second per measurement: short calls are noisy

        def loop(s) -> Callable[[], None]:
            return lambda: [s.run(None, {"images": x}) for _ in range(calls)]

        med = interleaved({k: loop(s) for k, s in sessions.items()}, repeats, torch.device("cpu"))
        rows.append({"batch": bs, "plain_ms": med["none"] * 1e3 / calls, "hflip_ms": med["hflip"] * 1e3 / calls,
                     "ratio": med["hflip"] / med["none"]})
        log(f"graphs batch {bs}: {rows[-1]}")
    return rows


# --------------------------------------------------------------------------- report
def tables(meta: dict, model_rows, eval_rows, ttach_rows, graph_rows, names: list[str]) -> str:
    out = [f"Machine: {meta['machine']}; torch {torch.__version__}, {meta['versions']}; model {meta['model']} "
           f"; load average {meta['load_start']} at start, {meta['load_end']} at the end; {meta['date']}.",
           "", f"Command: `{meta['cmd']}`", ""]
    if model_rows:
        ref = "torch" if "torch" in names else names[0]
        out += ["The model alone (images/s; ratio to " + ref + "):", "",
                "| batch | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for r in model_rows:
            cells = [f"{r[k]:.1f}" + ("" if k == ref else f" ({r[k] / r[ref]:.2f}x)") for k in names]
            out.append(f"| {r['batch']} | " + " | ".join(cells) + " |")
        out.append("")
    if eval_rows:
        out += ["`evaluate` end to end (decode, views, forward, merge, files):", "",
                "| policy | backend | images | micro-batch | img/s | vs torch | target | top-1 | per-view top-1 = torch | "
                "max abs logit diff |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in eval_rows:
            target = f">= {TARGETS[r['policy']]}x" if r["backend"] == "onnxruntime" and r["policy"] in TARGETS else ""
            out.append(f"| {r['policy']} | {r['backend']} | {r['n']} | {r['micro_batch']} | {r['img_s']:.2f} | "
                       f"{r['vs_torch']:.2f}x | {target} | {r['top1']:.2%} | {'yes' if r['same_top1'] else 'NO'} | "
                       f"{r['max_diff']:.2e} |")
        out.append("")
    if ttach_rows:
        out += ["ClassificationTTA + onnxruntime vs ttach's ClassificationTTAWrapper (torch), same photos, same top-1s:",
                "", "| policy | images | ttakit+onnxruntime img/s | ttach img/s | ratio (target >= 4x) |", "|---|---|---|---|---|"]
        for r in ttach_rows:
            out.append(f"| {r['policy']} | {r['n']} | {r['ttakit_img_s']:.2f} | {r['ttach_img_s']:.2f} | {r['ratio']:.2f}x |")
        out.append("")
    if graph_rows:
        out += ["Exported graphs in onnxruntime (`ttakit export --tta hflip` vs `--tta none`):", "",
                "| batch | plain ms | hflip ms | cost ratio (target <= 2.1) |", "|---|---|---|---|"]
        for r in graph_rows:
            out.append(f"| {r['batch']} | {r['plain_ms']:.1f} | {r['hflip_ms']:.1f} | {r['ratio']:.2f} |")
        out.append("")
    return "\n".join(out)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--backends", default=None,
                   help="contenders (default cpu: torch,onnxruntime,openvino; cuda: torch,torch-bf16,torch-compile,"
                   "onnxruntime-cuda,onnxruntime-tensorrt)")
    p.add_argument("--batches", default="1,4,16", help="batch sizes of the model part")
    p.add_argument("--seconds", type=float, default=1.0, help="time per round of the model part")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--images", type=int, default=500, help="photos of the evaluate part (0 skips it)")
    p.add_argument("--policies", default="hflip,d4", help="policies of the evaluate part")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5, help="parts of the photos, each run by every backend in turn")
    p.add_argument("--micro-batch", default="auto", help="'auto' (tuned per backend, cached) or a number")
    p.add_argument("--ttach-images", type=int, default=32, help="photos of the ttach part (0 skips it)")
    p.add_argument("--skip-graphs", action="store_true", help="skip the exported-graph part")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: timm's tiny test model, 1 repeat, 4 photos (2 for ttach, hflip only), batches 1 and 4")
    p.add_argument("--out", default=None, help="also write the tables here")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    print(provenance(__file__, argv))
    if args.quick:
        args.repeats, args.images, args.ttach_images, args.seconds, args.rounds = 1, 4, 2, 0.05, 1
        args.batches, args.micro_batch, args.workers, args.policies = "1,4", "4", 0, "hflip"
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    names = (args.backends or ("torch,torch-bf16,torch-compile,onnxruntime-cuda,onnxruntime-tensorrt" if gpu
                               else "torch,onnxruntime,openvino")).split(",")
    load_start = load_avg()
    torch.manual_seed(0)
    lm = load_bench_model(args.quick)
    lm.model.to(device)
    prepare_model(lm.model, default_run_config(device))
    backends: dict[str, Backend] = {}
    for name in names:
        try:
            backends[name] = make_backend(name, lm, device)
        except BackendError as e:  # e.g. no TensorRT on this machine: say so, go on
            log(f"skipping {name}: {e}")
    names = list(backends)
    versions = []
    for mod in ("onnxruntime", "openvino"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__.split('-')[0]}")
        except ImportError:
            pass
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        folder = quick_folders(tmp / "photos", args.images)["clean"] if args.quick else SAMPLE
        model_rows = bench_model(backends, device, [int(b) for b in args.batches.split(",")], args.repeats, args.seconds,
                                 lm.input_size)
        cfgs = {k: run_config_for(k, be, lm, device, args.micro_batch) for k, be in backends.items()}
        log("run configs: " + ", ".join(f"{k} {c.micro_batch}{' cl' if c.channels_last else ''}" for k, c in cfgs.items()))
        eval_rows = []
        if args.images and folder.is_dir() and not gpu:
            eval_rows = bench_evaluate(lm, backends, cfgs, device, args.images, args.policies.split(","), args.workers,
                                       args.rounds, tmp, folder)
        ttach_rows = []
        if args.ttach_images and "onnxruntime" in backends:
            ttach_rows = bench_ttach(lm, backends["onnxruntime"], cfgs["onnxruntime"], photos(lm, args.ttach_images, folder),
                                     args.repeats, device, ("hflip",) if args.quick else ("hflip", "d4"))
            prepare_model(lm.model, default_run_config(device))
        graph_batches = [1] if args.quick else [1, 16]
        graph_rows = [] if args.skip_graphs or gpu else bench_graphs(lm, tmp, graph_batches, args.repeats + 2,
                                                                             0.05 if args.quick else 0.5)
    machine = (torch.cuda.get_device_name(device) if gpu else f"{platform.processor() or platform.machine()}, "
               f"{os.cpu_count()} cores")
    meta = {"machine": machine, "model": f"{lm.name} at {lm.input_size[-1]} px", "versions": ", ".join(versions), "date": date.today().isoformat(),
            "load_start": load_start, "load_end": load_avg(), "cmd": "python " + " ".join(sys.argv if argv is None else [__file__, *argv])}
    text = tables(meta, model_rows, eval_rows, ttach_rows, graph_rows, names)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
