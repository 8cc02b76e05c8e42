"""What ``ClassificationTTA(..., backend="onnxruntime")`` costs over a raw onnxruntime session.

Run: ``python benchmarks/bench_ort_overhead.py [--images 16] [--repeats 7] [--policy hflip]``.
The same preprocessed sample photos and the same ONNX file (the backend's cached export of the
default model): ttakit builds the views, runs them through the backend in its micro-batches
and merges; the raw session runs the same view images, already built as one contiguous NCHW
float32 array, in batches of the same size, with ONNX Runtime's default session options (and,
as a second baseline, without spinning, as the backend runs it).
Rounds are interleaved (machine drift hits both alike); medians of view-images per second and
their ratios are printed: the backend as it runs by default, as it ran before (intra-op threads
spinning between calls, channels-last batches copied back to NCHW), and other micro-batches.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import ttakit
from ttakit.runtime.backends import OnnxRuntimeBackend, create_backend

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import SAMPLE, load_bench_model, provenance, quick_folders  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--policy", default="hflip")
    ap.add_argument("--micro-batches", default="4,16", help="also time these micro-batches (both sides)")
    ap.add_argument("--quick", action="store_true", help="smoke run: timm's tiny test model, 2 photos, 1 repeat")
    args = ap.parse_args(argv)
    print(provenance(__file__, argv))
    if args.quick:
        args.images, args.repeats, args.micro_batches = 2, 1, "2"
    import onnxruntime as ort

    load0 = os.getloadavg()[0]
    lm = load_bench_model(args.quick)
    with tempfile.TemporaryDirectory() as tmp:
        folder = quick_folders(Path(tmp), args.images)["clean"] if args.quick else SAMPLE
        files = sorted(folder.glob("*.JPEG"))[: args.images]
        x = ttakit.preprocess(files, lm.transform()) if files else torch.randn(args.images, 3, *lm.input_size)
    backend = create_backend("onnxruntime", lm.model, input_size=lm.input_size, key=lm.name)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    onnx_file = str(backend.source.path_for(lm.input_size, None)[0])
    session = ort.InferenceSession(onnx_file, so, providers=["CPUExecutionProvider"])
    so_quiet = ort.SessionOptions()  # the raw session as the backend configures it: no spinning
    so_quiet.log_severity_level = 3
    so_quiet.add_session_config_entry("session.intra_op.allow_spinning", "0")
    quiet = ort.InferenceSession(onnx_file, so_quiet, providers=["CPUExecutionProvider"])
    policy = ttakit.create_policy(args.policy, lm.data_config)
    with torch.inference_mode():  # the raw side gets its view images ready-made, outside the timing
        views = torch.cat([v.apply(x, lm.normalization) for v in policy.views]).contiguous().numpy()

    def raw(mb: int, s=session):  # noqa: ANN001
        return lambda: [s.run(None, {"images": views[i:i + mb]}) for i in range(0, len(views), mb)]

    default = ttakit.ClassificationTTA(lm.model, policy, data_config=lm.data_config, backend=backend)
    mb0 = default.run_config.micro_batch
    # The backend as it was before this benchmark's findings: spinning threads, channels-last batches.
    before = ttakit.ClassificationTTA(lm.model, policy, data_config=lm.data_config,
                                      backend=OnnxRuntimeBackend(backend.source, spinning=True),
                                      run_config=ttakit.RunConfig(micro_batch=mb0, channels_last=True))
    contenders = {f"ttakit default (micro-batch {mb0})": lambda: default(x), f"raw, batch {mb0}": raw(mb0),
                  "ttakit before (spinning, channels-last)": lambda: before(x),
                  f"raw, batch {mb0}, no spinning": raw(mb0, quiet)}
    pairs = [(f"ttakit default (micro-batch {mb0})", f"raw, batch {mb0}"),
             ("ttakit before (spinning, channels-last)", f"raw, batch {mb0}"),
             (f"ttakit default (micro-batch {mb0})", f"raw, batch {mb0}, no spinning")]
    for mb in (int(m) for m in args.micro_batches.split(",") if m):
        if mb == mb0:
            continue
        tta = default.with_run_config(micro_batch=mb)
        contenders[f"ttakit micro-batch {mb}"] = (lambda t: lambda: t(x))(tta)
        contenders[f"raw, batch {mb}"] = raw(mb)
        pairs.append((f"ttakit micro-batch {mb}", f"raw, batch {mb}"))
    times: dict[str, list[float]] = {k: [] for k in contenders}
    with torch.inference_mode():
        for fn in contenders.values():
            fn()  # warm-up
        for _ in range(args.repeats):
            for k, fn in contenders.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
    rate = {k: len(views) / statistics.median(v) for k, v in times.items()}
    best_raw = max(v for k, v in rate.items() if k.startswith("raw"))
    print(f"{lm.name}, policy {args.policy} ({len(policy.views)} views) on {len(x)} photos = {len(views)} view images; "
          f"{args.repeats} interleaved rounds; load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at the end")
    print("| contender | view-images/s |")
    print("|---|---|")
    for k, v in rate.items():
        print(f"| {k} | {v:.1f} |")
    for ours, theirs in pairs:
        print(f"ratio {ours} / {theirs}: {rate[ours] / rate[theirs]:.3f}")
    print(f"ratio ttakit default / best raw: {rate[pairs[0][0]] / best_raw:.3f}")


if __name__ == "__main__":
    main()
