"""A task added from this file alone: per-pixel regression (each pixel's grey level) scored by RMSE.

It is registered here and nowhere else, and runs through the one pipeline (evaluate, paired
statistics against plain, resume), under torchrun with two processes, and into the report:
no ttakit module knows its name. Run as a script (``python tests/test_toy_task.py OUT DATA``),
it evaluates into OUT, which is how the torchrun test starts its ranks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

import ttakit
from ttakit.evaluation.pipeline import Scored, run_evaluation, stored_chunks, view_columns
from ttakit.evaluation.report import write_report
from ttakit.evaluation.report_gallery import gallery_page
from ttakit.evaluation.rows import PerImageCsv, row_header, timing
from ttakit.evaluation.scoring import EvalOptions, PolicyRun, policy_runs
from ttakit.evaluation.stats import compare_statistic
from ttakit.evaluation.store import LogitStore
from ttakit.evaluation.task_registry import EVAL_TASKS, ReportSpec, TaskColumns
from ttakit.runtime.config import RunConfig
from ttakit.runtime.distributed import DistContext
from ttakit.tasks.deaugment import deaugment_maps
from ttakit.tasks.geometry import Geometry

NAME = "toy_rmse"
SIZE = 32
CONFIG = {"input_size": (3, SIZE, SIZE), "interpolation": "bilinear", "mean": (0.0,) * 3, "std": (1.0,) * 3,
          "crop_pct": 1.0, "crop_mode": "center"}
RC = RunConfig(8, False)
COLUMNS = TaskColumns("rmse", "RMSE", (("rmse", "RMSE"),), "RMSE", percent=False, higher_is_better=False)


class GreyGuess(torch.nn.Module):
    """Guesses each pixel's grey level from a 3x3 neighbourhood, lopsidedly (so flips matter)."""

    calls = 0

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, :, 1, 1] = torch.tensor([0.25, 0.5, 0.1])
            self.conv.weight[0, :, 1, 2] = 0.05  # the right neighbour: a flip sees the left one
            self.conv.bias.fill_(0.02)

    def forward(self, x: Tensor) -> Tensor:
        GreyGuess.calls += len(x)
        return self.conv(x)


def grey(path: str) -> np.ndarray:
    """The truth: the photo's grey level in [0, 1] (ITU-R 601-2 luma, as PIL's ``L``)."""
    return np.asarray(Image.open(path).convert("L"), dtype=np.float64) / 255.0


@dataclass(frozen=True)
class Photos:
    """The dataset: photos whose own grey levels are the per-pixel targets."""

    paths: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.paths)

    def head(self, n: int | None) -> Photos:
        return self if n is None else Photos(self.paths[:n], self.source)


def rmse_of(sq: np.ndarray, px: np.ndarray, w: np.ndarray) -> np.ndarray:
    """RMSE over all pixels of images weighted ``w (r, n)`` from per-image squared-error sums."""
    return np.sqrt((w @ sq) / (w @ px))


@dataclass
class ToyTask:
    """Per-pixel regression in the pipeline: de-augmented maps stored, merged by a masked mean."""

    name: str = NAME
    subdir: str = "regression"

    def runs(self, policies, merges):
        return policy_runs(policies, merges, resolve=lambda m: m, default=lambda p: "mean")

    def fingerprint(self, data: Photos) -> dict[str, Any]:
        return {"task": NAME}

    def pack(self, outs, inputs, views, indices) -> dict[str, Tensor]:
        y, m = deaugment_maps(views, outs, Geometry.of(inputs, CONFIG), activation=None)  # (U, n, 1, H, W), (U, 1|n, 1, H, W)
        m = m.expand(-1, y.shape[1], -1, -1, -1)
        return {"maps": y.transpose(0, 1).float().cpu(), "masks": m.transpose(0, 1).float().cpu()}

    def empty(self, views) -> dict[str, Tensor]:
        return {"maps": torch.zeros(0, len(views), 1, SIZE, SIZE), "masks": torch.zeros(0, len(views), 1, SIZE, SIZE)}

    def score(self, store: LogitStore, data: Photos, runs: Sequence[PolicyRun], out: Path) -> Scored:
        cols = view_columns(store, runs)
        sq = {r.key: [] for r in runs}
        seconds = {r.key: 0.0 for r in runs}
        skipped: list[dict[str, Any]] = []
        indices: list[int] = []
        for payload in stored_chunks(store, data, skipped):
            here = payload["indices"].tolist()
            indices += here
            truth = torch.from_numpy(np.stack([grey(data.paths[i]) for i in here])).float()[:, None]  # (n, 1, H, W)
            for r, c in zip(runs, cols):
                y, m = payload["maps"][:, c], payload["masks"][:, c]  # (n, V, 1, H, W)
                merged = (y * m).sum(1) / m.sum(1).clamp_min(1e-12)
                sq[r.key].append(((merged - truth) ** 2).flatten(1).sum(1).double())
                seconds[r.key] += float(payload["seconds"][c].sum())
        px = np.full(len(indices), SIZE * SIZE, dtype=np.float64)
        state = {k: torch.cat(v).numpy() for k, v in sq.items()}
        results = {r.key: {**row_header(r), "rmse": float(rmse_of(state[r.key], px, np.ones((1, len(px))))[0]),
                           **timing(seconds[r.key], len(indices))} for r in runs}
        with PerImageCsv(out / "per_image.csv", [], [r.key for r in runs], ["rmse"]) as table:
            for j, i in enumerate(indices):
                table.write(i, data.paths[i], [], [float(np.sqrt(state[r.key][j] / px[j])) for r in runs])
        return Scored(results, {}, skipped, (state, px))

    def compare(self, scored: Scored, key: str):
        state, px = scored.state
        cmp = compare_statistic(lambda w: rmse_of(state[key], px, w) - rmse_of(state["plain"], px, w), len(px),
                                "rmse", 500)
        return cmp.to_dict(), cmp.verdict(key, "RMSE")

    def finish(self, out, lm, options) -> list[str]:
        return [str(write_report(out))]


def _page(out, doc, per_view, s):
    return gallery_page(out, doc, per_view, s.class_names, s.max_gallery, columns=COLUMNS)


if NAME not in EVAL_TASKS:
    EVAL_TASKS.add(NAME, ReportSpec(_page, COLUMNS))


def loaded() -> ttakit.LoadedModel:
    return ttakit.LoadedModel(GreyGuess().eval(), "grey-guess", "none", CONFIG, ["grey"])


def evaluate_toy(data: Photos, out: Path, batch_size: int = 3) -> dict[str, Any]:
    policies = [ttakit.create_policy("hflip")]
    return run_evaluation(ToyTask(), loaded(), data, policies, out_dir=out, run_config=RC,
                          options=EvalOptions(batch_size=batch_size, workers=0, quiet=True))


def make_photos(root: Path) -> Photos:
    root.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(0)
    for i in range(7):
        a = g.integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)
        a[:, : SIZE // 2] //= 2  # a darker left half: the model's lopsided guess differs under a flip
        Image.fromarray(a).save(root / f"{i}.png")
    (root / "broken.png").write_bytes(b"\x89PNG nope")
    return Photos(tuple(str(p) for p in sorted(root.glob("*.png"))), str(root))


def _reference_rmse(data: Photos, flip: bool) -> float:
    """RMSE computed here: the model on each photo (and on its mirror image, mirrored back)."""
    model, err, n = loaded().model, 0.0, 0
    for p in data.paths:
        try:
            x = torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None]
        except OSError:
            continue
        with torch.no_grad():
            y = model(x)
            if flip:
                y = (y + model(x.flip(-1)).flip(-1)) / 2
        err += float(((y[0, 0].double().numpy() - grey(p)) ** 2).sum())
        n += SIZE * SIZE
    return float(np.sqrt(err / n))


def _without_timing(doc: dict[str, Any]) -> dict[str, Any]:
    doc = json.loads(json.dumps(doc))
    for r in doc["results"].values():
        r.pop("seconds"), r.pop("images_per_s")
    return doc


def test_toy_task_evaluates_compares_resumes_and_reports(tmp_path):
    data = make_photos(tmp_path / "photos")
    out = tmp_path / "run"
    GreyGuess.calls = 0
    res = evaluate_toy(data, out)
    assert GreyGuess.calls == 7 * 2  # 7 readable photos x 2 views
    rows = res["results"]
    assert res["task"] == NAME and list(rows) == ["plain", "hflip"] and res["n_skipped"] == 1
    assert abs(rows["plain"]["rmse"] - _reference_rmse(data, flip=False)) < 1e-6
    assert abs(rows["hflip"]["rmse"] - _reference_rmse(data, flip=True)) < 1e-6
    assert rows["hflip"]["rmse"] != rows["plain"]["rmse"]
    # paired statistics against plain, on the same images
    lo, hi = rows["hflip"]["ci_rmse"]
    assert abs(rows["hflip"]["delta_rmse"] - (rows["hflip"]["rmse"] - rows["plain"]["rmse"])) < 1e-12
    assert lo <= rows["hflip"]["delta_rmse"] <= hi and rows["hflip"]["verdict"].startswith("hflip: RMSE")
    # one per-image CSV: index, path, then each row's metric
    header = (out / "per_image.csv").read_text().splitlines()[0]
    assert header == "index,path,plain_rmse,hflip_rmse"
    # the report, from the registry: the toy task's table with its own (non-percent) numbers
    page = (out / "report.html").read_text()
    assert "RMSE" in page and f"{rows['plain']['rmse']:.4g}" in page
    # resume: a lost chunk is recomputed, nothing else
    chunks = sorted((out / "regression").glob("chunk_*.safetensors"))
    assert len(chunks) == 3
    chunks[2].unlink()
    GreyGuess.calls = 0
    again = evaluate_toy(data, out)
    assert GreyGuess.calls == 1 * 2  # the last chunk (6.png, broken.png): its one photo, two views
    assert _without_timing(again)["results"] == _without_timing(res)["results"]


def test_toy_task_under_torchrun_matches_one_process(tmp_path):
    data = make_photos(tmp_path / "photos")
    single = evaluate_toy(data, tmp_path / "single")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TTAKIT_DIST_BACKEND": "gloo",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", __file__,
           str(tmp_path / "multi"), str(tmp_path / "photos")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    multi = json.loads((tmp_path / "multi" / "results.json").read_text())
    assert _without_timing(multi) == _without_timing({k: single[k] for k in multi})
    assert (tmp_path / "multi" / "per_image.csv").read_text() == (tmp_path / "single" / "per_image.csv").read_text()


if __name__ == "__main__":  # a torchrun rank: join the process group explicitly, then evaluate
    DistContext.init()
    try:
        folder = Path(sys.argv[2])
        evaluate_toy(Photos(tuple(str(p) for p in sorted(folder.glob("*.png"))), str(folder)), Path(sys.argv[1]))
    finally:
        torch.distributed.destroy_process_group()
