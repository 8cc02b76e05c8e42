"""The photo graph (``ttakit export --input photo``) against ttakit's Python path on real photos.

Run: ``python benchmarks/bench_photo_graph.py [--images 500] [--policy TEXT]``. The policy
defaults to the greedy search's choice (budget 5, NLL) on the stored pool logits of the
corrupted sample photos (``runs/bench_source_views/corrupted``), else a fixed policy of input
stages and tensor views. Exported once for the default model (export time and file size are
printed), then run in onnxruntime and OpenVINO on every sample photo plus resized and
odd-aspect copies (one photo per call, as decoded: ``(1, H, W, 3)`` uint8), and compared with
``ClassificationTTA`` on the same files (PIL decoding and rendering): same top-1 share, largest
probability difference, and the input stages' largest pixel difference in grey levels.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import ttakit
from ttakit.evaluation.search import greedy_search
from ttakit.evaluation.classify_logits import load_logits
from ttakit import export_tta

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, SAMPLE, load_bench_model, provenance, quick_folders  # noqa: E402

FALLBACK = "identity + hflip + input=256:1|hflip + input=288:1 + input=224:0.875:tl|hflip"
ODD = [(97, 300), (640, 160), (224, 224), (1024, 768), (150, 113), (333, 500)]  # (W, H) of extra copies


def searched_policy(budget: int = 5) -> str:
    folder = ROOT / "runs" / "bench_source_views" / "corrupted"
    try:
        logits, labels, names, _ = load_logits(folder)
    except Exception:  # noqa: BLE001 - no stored run: the fixed policy
        return FALLBACK
    order = [names.index("identity")] + [i for i, n in enumerate(names) if n != "identity"]
    res = greedy_search(logits[:, order], labels, budget, "nll")
    return " + ".join(dict.fromkeys(names[order[c]] for c in res.cols))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--policy", default=None)
    ap.add_argument("--merge", default="mean")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: timm's tiny test model, 2 photos and 2 odd copies, the fixed policy")
    args = ap.parse_args(argv)
    print(provenance(__file__, argv))
    import onnxruntime as ort
    import openvino as ov

    print(f"load average {os.getloadavg()[0]:.1f} at start", file=sys.stderr)
    policy = args.policy or (FALLBACK if args.quick else searched_policy())
    lm = load_bench_model(args.quick)
    odd = ODD[:2] if args.quick else ODD
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        if args.quick:
            args.images = 2
        folder = quick_folders(tmp / "photos", args.images)["clean"] if args.quick else SAMPLE
        files = sorted(folder.glob("*.JPEG"))[: args.images]
        for i, (w, h) in enumerate(odd):  # resized, thin, tall and upsampled copies of sample photos
            ttakit.load_image(files[i]).resize((w, h), Image.BICUBIC).save(tmp / f"odd_{w}x{h}.png")
        files += sorted(tmp.glob("odd_*.png"))
        t0 = time.perf_counter()
        path = export_tta(lm.model, policy, tmp / "photo.onnx", merge=args.merge, input="photo",
                          data_config=lm.data_config)
        secs = time.perf_counter() - t0
        mb = path.stat().st_size / 2**20
        so = ort.SessionOptions()
        so.log_severity_level = 3
        runs = {"onnxruntime": (lambda s: lambda a: s.run(None, {"photos": a})[0])(
                    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])),
                "openvino": (lambda c: lambda a: np.asarray(c(a)[0]))(
                    ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}))}
        tta = ttakit.ClassificationTTA(lm.model, policy, args.merge, data_config=lm.data_config)
        same = {k: 0 for k in runs}
        worst = {k: 0.0 for k in runs}
        for f in files:
            with torch.inference_mode():
                ref = tta([f])[0].numpy()
            pixels = np.asarray(ttakit.load_image(f))[None]
            for k, run in runs.items():
                got = run(pixels)[0]
                same[k] += int(got.argmax() == ref.argmax())
                worst[k] = max(worst[k], float(np.abs(got - ref).max()))
    n_views = len(ttakit.create_policy(policy).views)
    print(f"policy {policy} ({n_views} views, merge {args.merge}); model {lm.name}")
    print(f"export --input photo: {secs:.1f} s, {mb:.1f} MB")
    print("| runtime | photos | same top-1 | max prob diff |")
    print("|---|---|---|---|")
    for k in runs:
        print(f"| {k} | {len(files)} | {same[k] / len(files):.2%} | {worst[k]:.2e} |")


if __name__ == "__main__":
    main()
