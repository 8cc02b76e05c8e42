"""Serve a TTA graph exported with ``ttakit export --input photo``: onnxruntime, PIL and numpy only.

The graph takes decoded photos, ``(N, H, W, 3)`` uint8 RGB, and does everything else inside:
every input stage of the policy (resize, window, normalisation, as PIL renders them), the
tensor views, the model, the view weights, the temperature and the merge. This script only
decodes each photo (EXIF orientation applied, any mode to RGB) and prints the top-k classes
named by the graph's metadata; it never imports torch or ttakit.

Run::

    ttakit export --tta "none+input=256:1|hflip" --merge sum --input photo --out tta.onnx
    python examples/serve_onnx.py tta.onnx photo1.jpg photo2.png [--topk 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps


def decode(path: str | Path) -> np.ndarray:
    """A photo as ``(H, W, 3)`` uint8 RGB, upright (transparency composited on white)."""
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img) or img
        if img.mode in ("RGBA", "LA", "PA", "P"):
            rgba = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        return np.asarray(img.convert("RGB"))


class PhotoGraph:
    """An exported photo graph: ``graph(photo)`` -> ``(C,)`` merged probabilities."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("ttakit.input") != "photo":
            raise SystemExit(f"{path}: not a photo graph (export it with ttakit export --input photo)")
        self.meta = meta
        self.class_names = json.loads(meta["ttakit.class_names"]) if "ttakit.class_names" in meta else None

    def __call__(self, photo: np.ndarray) -> np.ndarray:
        return self.session.run(["probs"], {"photos": photo[None]})[0][0]  # photos of one size per call

    def name(self, i: int) -> str:
        return self.class_names[i] if self.class_names else str(i)


def quick_graph(path: Path) -> tuple[str, list[str]]:
    """A quick run's graph and photo: timm's tiny test model (random weights) exported with
    ``input=photo`` by ttakit, and the photo bundled with ttakit. Only a quick run imports
    ttakit (and torch); serving an exported graph never does."""
    import ttakit

    lm = ttakit.load_model("test_efficientnet", weights="random")
    ttakit.export_tta(lm.model, "none+input=96:1|hflip", path, merge="sum", input="photo", data_config=lm.data_config)
    return str(path), [str(ttakit.example_image_path())]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("graph", nargs="?", help="the .onnx file written by ttakit export --input photo")
    p.add_argument("photos", nargs="*", help="image files")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--json", action="store_true", help="one JSON document instead of text")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: a graph of timm's tiny test model exported here, on the photo bundled with ttakit")
    args = p.parse_args(argv)
    if args.quick:
        with tempfile.TemporaryDirectory() as tmp:
            args.graph, args.photos = quick_graph(Path(tmp) / "tta.onnx")
            return serve(args)
    if not args.graph or not args.photos:
        p.error("GRAPH and at least one photo are required (but for --quick)")
    return serve(args)


def serve(args: argparse.Namespace) -> int:
    """Print (or write as JSON) the top-k classes of every photo."""
    graph = PhotoGraph(args.graph)
    results = []
    for path in args.photos:
        probs = graph(decode(path))
        top = np.argsort(-probs)[: args.topk]
        results.append({"path": path, "top": [{"class": graph.name(int(i)), "prob": float(probs[i])} for i in top]})
    if args.json:
        print(json.dumps({"policy": json.loads(graph.meta["ttakit.policy"]), "merge": graph.meta["ttakit.merge"],
                          "images": results}))
        return 0
    print(f"policy {', '.join(json.loads(graph.meta['ttakit.policy']))}; merge {graph.meta['ttakit.merge']}")
    for r in results:
        print(r["path"])
        for k, t in enumerate(r["top"], 1):
            print(f"  {k:>2}  {t['class'][:40]:<40} {100 * t['prob']:6.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
