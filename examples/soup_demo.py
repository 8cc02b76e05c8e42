"""Model soups + TTA on real photos, end to end on a CPU in about a minute.

A 4-way task is made from ../shared/imagenet-sample (bird / dog / other animal / object, from
the ImageNet class index). Five heads of the default model are fine-tuned on frozen features
of 300 photos (different seeds and learning rates), saved as ingredients, souped with the
``ttakit soup`` command (uniform and greedy, greedy selected on 100 photos), and every
ingredient and soup is then evaluated with and without TTA on the last 100 photos with
``ttakit evaluate``. Run: ``python examples/soup_demo.py [OUT_DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

import ttakit
from ttakit.cli import main as ttakit_cli
from ttakit.datasets import detect_dataset
from ttakit.soup import finetune_head, save_state_dict

SAMPLE = Path(os.environ.get("TTAKIT_SAMPLE") or Path(__file__).resolve().parents[2] / "shared" / "imagenet-sample")
COARSE = ["bird", "dog", "other_animal", "object"]


def coarse_label(index: int) -> int:
    if 7 <= index <= 24 or 80 <= index <= 100 or 127 <= index <= 146:
        return 0
    if 151 <= index <= 268:
        return 1
    return 2 if index <= 397 else 3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=None, help="output folder (default: runs/soup_demo)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 20 photos, 2 ingredients, 2 epochs, the soups evaluated; in a temporary folder "
                        "unless OUT is given")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        run(args.out or (Path(tmp) if args.quick else Path("runs/soup_demo")), args.quick)


def run(out: Path, quick: bool = False) -> None:
    """Fine-tune the ingredients, soup them, evaluate everything and print the table."""
    out.mkdir(parents=True, exist_ok=True)
    lm = ttakit.load_model()
    data = detect_dataset(SAMPLE, lm.class_names)
    n = 20 if quick else 500
    data = data.head(n)
    paths, labels = list(data.paths), torch.tensor([coarse_label(y) for y in data.labels])
    # Interleave so each split covers the whole class range.
    split = {"train": list(range(0, n, 5)) + list(range(1, n, 5)) + list(range(2, n, 5)),
             "val": list(range(3, n, 5)), "test": list(range(4, n, 5))}
    (out / "labels.txt").write_text("\n".join(COARSE) + "\n")
    for name in ("val", "test"):
        rows = ["path,label"] + [f"{paths[i]},{COARSE[int(labels[i])]}" for i in split[name]]
        (out / f"{name}.csv").write_text("\n".join(rows) + "\n")
    train_x = ttakit.preprocess([paths[i] for i in split["train"]], lm.transform())
    train_y = labels[split["train"]]
    ckpts = []
    recipes = [(0, 0.05), (1, 0.05), (2, 0.1), (3, 0.02), (4, 0.2)]
    for k, (seed, lr) in enumerate(recipes[:2] if quick else recipes):
        state = finetune_head(lm.model, train_x, train_y, len(COARSE), lr=lr, seed=seed, epochs=2 if quick else 20)
        ckpts.append(str(save_state_dict(state, out / f"ingredient{k}.safetensors")))
    common = ["--model", "tf_efficientnet_lite0", "--labels", str(out / "labels.txt")]
    ttakit_cli(["soup", *ckpts, *common, "--method", "uniform", "--data", str(out / "val.csv"), "--out", str(out / "uniform.safetensors")])
    ttakit_cli(["soup", *ckpts, *common, "--method", "greedy", "--data", str(out / "val.csv"), "--out", str(out / "greedy.safetensors")])
    table = {}
    soups = [str(out / "uniform.safetensors"), str(out / "greedy.safetensors")]
    for w in soups if quick else [*ckpts, *soups]:  # a quick run evaluates the soups only
        run = out / ("eval_" + Path(w).stem)
        ttakit_cli(["evaluate", str(out / "test.csv"), *common, "--weights", w, "--tta", "hflip", "--out", str(run), "--quiet",
                    "--workers", "0"])
        res = json.loads((run / "results.json").read_text())["results"]
        table[Path(w).stem] = (res["plain"]["top1"], res["hflip"]["top1"])
    print("\n| weights | test top-1 | + hflip TTA |\n|---|---:|---:|")
    for name, (plain, tta) in table.items():
        print(f"| {name} | {plain:.2%} | {tta:.2%} |")


if __name__ == "__main__":
    main()
