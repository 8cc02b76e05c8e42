"""Precision benchmark: every backend x precision this CPU has, on the default model at 224 px.

Run: ``python benchmarks/bench_precision.py`` (``--quick`` for a smoke run; ``--out FILE``
writes the table). For each contender (torch fp32/bf16, onnxruntime fp32/int8, OpenVINO
fp32 in both of its configurations, bf16, fp16 and int8, where this CPU has them):

- view-images/s of the model alone at one micro-batch (rounds interleaved between the
  contenders, median; ``bench_backends.bench_model``), and the ratio to onnxruntime fp32;
- top-1 agreement with fp32 torch on the sample photos, the same on the photos not used to
  calibrate int8, the largest softmax-probability difference, and top-1 accuracy.

int8 is calibrated on 64 photos spread over the sample folder
(:func:`ttakit.datasets.calibration_photos`, as ``--precision int8`` does by default).
Goals on a CPU with AMX: bf16 >= 1.8x onnxruntime fp32 with >= 99.5% agreement; int8 >=
2.5x with >= 99%.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_backends import bench_model  # noqa: E402 - the shared helpers
from bench_common import SAMPLE, cpu, load_avg, load_bench_model, log, provenance, quick_folders  # noqa: E402

import ttakit  # noqa: E402
from ttakit.datasets import calibration_photos, detect_dataset  # noqa: E402
from ttakit.errors import BackendError  # noqa: E402
from ttakit.runtime.backends import Backend, OpenVINOBackend, TorchBackend, create_backend  # noqa: E402
from ttakit.runtime.precision import cpu_precisions  # noqa: E402

GOALS = {"bf16": (1.8, 0.995), "int8": (2.5, 0.99)}  # (speed vs onnxruntime fp32, top-1 agreement)
REFERENCE = "onnxruntime fp32"


def contenders(lm: ttakit.LoadedModel, calibration: torch.Tensor) -> dict[str, Backend]:
    """Every backend x precision this CPU has (a refused one is logged and left out)."""
    common = {"input_size": lm.input_size, "key": lm.name}
    out: dict[str, Backend] = {"torch fp32": TorchBackend(lm.model), "torch bf16": TorchBackend(lm.model, "bf16")}
    for name, precision in [("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"),
                            ("openvino", "bf16"), ("openvino", "fp16"), ("openvino", "int8")]:
        try:
            out[f"{name} {precision}"] = create_backend(name, lm.model, precision=precision, verbose=True,
                                                        calibration=calibration if precision == "int8" else None,
                                                        **common)
        except BackendError as e:
            log(f"skipping {name} {precision}: {e}")
    if "openvino fp32" in out:  # OpenVINO's other configuration: one request per micro-batch (LATENCY)
        latency = OpenVINOBackend(out["openvino fp32"].source, precision="fp32", streams=1)  # type: ignore[attr-defined]
        latency.prepare(lm.input_size)
        out["openvino fp32 latency"] = latency
    return out


def agreement(lm: ttakit.LoadedModel, backends: dict[str, Backend], files: list[Path], held_out: set[Path],
              batch: int, folder: Path = SAMPLE) -> dict[str, dict[str, float]]:
    """Per contender: top-1 agreement with fp32 torch (all photos; photos not calibrated on),
    the largest probability difference and top-1 accuracy, decoding each chunk once."""
    data = detect_dataset(folder, lm.class_names)
    labels = {Path(f): y for f, y in zip(data.paths, data.labels)}
    stats = {k: {"same": 0, "same_held": 0, "right": 0, "max_dp": 0.0} for k in backends}
    n_held = 0
    with torch.inference_mode():
        for i in range(0, len(files), 50):
            chunk = files[i:i + 50]
            x = ttakit.preprocess(chunk, lm.transform())
            y = torch.tensor([labels[f] for f in chunk])
            held = torch.tensor([f in held_out for f in chunk])
            n_held += int(held.sum())
            lm.model.to(memory_format=torch.contiguous_format)
            ref = torch.cat([lm.model(x[j:j + batch]) for j in range(0, len(x), batch)]).float().softmax(-1)
            for k, be in backends.items():
                p = torch.cat([be(x[j:j + batch]) for j in range(0, len(x), batch)]).float().softmax(-1)
                same = p.argmax(-1) == ref.argmax(-1)
                s = stats[k]
                s["same"] += int(same.sum())
                s["same_held"] += int(same[held].sum())
                s["right"] += int((p.argmax(-1) == y).sum())
                s["max_dp"] = max(s["max_dp"], float((p - ref).abs().max()))
            log(f"agreement: {i + len(chunk)}/{len(files)} photos")
    n = len(files)
    return {k: {"agreement": s["same"] / n, "agreement_held": s["same_held"] / max(1, n_held), "n_held": n_held,
                "max_dp": s["max_dp"], "top1": s["right"] / n} for k, s in stats.items()}


def table(meta: dict, speed: dict[str, float], agree: dict[str, dict[str, float]]) -> str:
    ref = speed[REFERENCE]
    out = [f"CPU: {meta['cpu']}; torch {torch.__version__}, {meta['versions']}; "
           f"{meta['model']}, micro-batch {meta['batch']}; load average {meta['load_start']} at start, "
           f"{meta['load_end']} at the end; {meta['date']}.", "", f"Command: `{meta['cmd']}`", "",
           f"| backend | precision | view-images/s | vs {REFERENCE} | goal | top-1 = fp32 ({meta['n']} photos) | "
           f"top-1 = fp32 (not calibrated on) | max prob diff | top-1 |",
           "|---|---|---|---|---|---|---|---|---|"]
    for k, ips in speed.items():
        name, _, precision = k.partition(" ")
        a = agree.get(k)
        goal = GOALS.get(precision.split()[0])
        g = f">= {goal[0]}x, >= {goal[1]:.1%}" if goal and not name.startswith("torch") else ""
        cells = [f"{a['agreement']:.1%}", f"{a['agreement_held']:.1%} of {a['n_held']}", f"{a['max_dp']:.4f}",
                 f"{a['top1']:.1%}"] if a else ["", "", "", ""]
        out.append(f"| {name} | {precision} | {ips:.1f} | {ips / ref:.2f}x | {g} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=500, help="sample photos of the agreement part")
    p.add_argument("--batch", type=int, default=32, help="micro-batch of the speed part")
    p.add_argument("--seconds", type=float, default=2.0, help="time per contender per round")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--calibration", type=int, default=64, help="photos int8 is calibrated on")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: timm's tiny test model, 1 repeat, 0.05 s, 4 photos (2 to calibrate int8)")
    p.add_argument("--out", default=None, help="also write the table here")
    args = p.parse_args(argv)
    print(provenance(__file__, argv))
    if args.quick:
        args.repeats, args.seconds, args.images, args.calibration, args.batch = 1, 0.05, 4, 2, 4
    load_start = load_avg()
    torch.manual_seed(0)
    lm = load_bench_model(args.quick)
    with tempfile.TemporaryDirectory() as cache:  # a fresh cache: every check is measured (and printed)
        folder = quick_folders(Path(cache) / "photos", args.images)["clean"] if args.quick else SAMPLE
        files = sorted(folder.glob("*.JPEG"))[: args.images]
        if not files:
            raise SystemExit(f"no sample photos at {SAMPLE}")
        calib_files = calibration_photos(folder, args.calibration)
        old_cache = os.environ.get("TTAKIT_CACHE")
        os.environ["TTAKIT_CACHE"] = cache
        try:
            backends = contenders(lm, ttakit.preprocess(calib_files, lm.transform()))
            log(f"CPU precisions: {', '.join(cpu_precisions())}; contenders: {', '.join(backends)}")
            rows = bench_model(backends, torch.device("cpu"), [args.batch], args.repeats, args.seconds, lm.input_size)
            speed = {k: rows[0][k] for k in backends}
            agree = agreement(lm, backends, files, set(files) - set(calib_files), args.batch, folder)
        finally:
            if old_cache is None:
                del os.environ["TTAKIT_CACHE"]
            else:
                os.environ["TTAKIT_CACHE"] = old_cache
    versions = ", ".join(f"{m} {__import__(m).__version__.split('-')[0]}" for m in ("onnxruntime", "openvino"))
    meta = {"cpu": cpu(), "versions": versions, "batch": args.batch, "n": len(files),
            "model": f"{lm.name} at {lm.input_size[-1]} px",
            "load_start": load_start, "load_end": load_avg(), "date": date.today().isoformat(),
            "cmd": "python " + " ".join(sys.argv if argv is None else [__file__, *argv])}
    text = table(meta, speed, agree)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
