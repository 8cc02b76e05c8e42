"""A task added from this file alone, by one registration: per-pixel regression (each pixel's grey level) scored by RMSE.

No ttakit module knows its name. Importing this module registers it (``--task-module
toy_task_plugin``, ``TTAKIT_TASK_MODULES=toy_task_plugin`` or a ``ttakit.tasks`` entry point);
it then runs through ``ttakit.evaluate``, the one pipeline (paired statistics against plain,
resume), torchrun, the report and the command line (``ttakit evaluate --task toy_rmse``,
``ttakit predict --task toy_rmse``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

import ttakit
from ttakit.evaluation.pipeline import EvalTask, Scored, stored_chunks, view_columns
from ttakit.evaluation.report import write_report
from ttakit.evaluation.report_gallery import gallery_page
from ttakit.evaluation.rows import PerImageCsv, row_header, timing
from ttakit.evaluation.scoring import EvalOptions, PolicyRun, policy_runs
from ttakit.evaluation.stats import compare_statistic
from ttakit.evaluation.store import LogitStore
from ttakit.runtime.config import RunConfig
from ttakit.task_spec import TaskColumns, TaskSpec, register_task
from ttakit.tasks.deaugment import DenseResult, deaugment_maps, segment_head
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
class ToyTask(EvalTask):
    """Per-pixel regression in the pipeline: de-augmented maps stored, merged by a masked mean."""

    name: str = NAME
    subdir: str = "regression"

    def runs(self, policies, merges):
        return policy_runs(policies, merges, resolve=lambda m: m, default=lambda p: "mean")

    def fingerprint(self, data: Photos) -> dict[str, Any]:
        return {"task": NAME}

    def pack(self, outs, inputs, views, indices, job) -> dict[str, Tensor]:
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


def page(out, doc, per_view, s):
    return gallery_page(out, doc, per_view, s.class_names, s.max_gallery, columns=COLUMNS)


def loaded(spec=None, weights=None, labels=None, options=None) -> ttakit.LoadedModel:
    """The task's model loader (whatever the model is named: there is one)."""
    return ttakit.LoadedModel(GreyGuess().eval(), "grey-guess", "none", CONFIG, ["grey"])


def photos_in(source, lm=None, options=None) -> Photos:
    """The task's data loader: every PNG of a folder."""
    return Photos(tuple(str(p) for p in sorted(Path(source).glob("*.png"))), str(source))


def describe(result) -> list[dict[str, float]]:
    """Each photo's predicted map, summarised: its mean grey level."""
    return [{"mean_grey": round(float(m.mean()), 6)} for m in result.output]


# The one registration: no ttakit module knows this task's name.
register_task(TaskSpec(
    NAME, "per-pixel grey level, scored by RMSE",
    head=lambda policy, **o: segment_head(policy, activation=None, **o),
    evaluation=lambda lm, data, run_config, scoring, options: ToyTask(),
    load_model=loaded, load_data=photos_in, report=page, columns=COLUMNS, describe=describe, result=DenseResult,
    commands={"evaluate": "ttakit.cli.task_commands:evaluate_task", "predict": "ttakit.cli.task_commands:predict_task"},
))


def evaluate_toy(data: Photos, out: Path, batch_size: int = 3) -> dict[str, Any]:
    return ttakit.evaluate(loaded(), data, ["hflip"], task=NAME, out_dir=out, run_config=RC,
                           options=EvalOptions(batch_size=batch_size, workers=0, quiet=True), device="cpu")


def make_photos(root: Path) -> Photos:
    root.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(0)
    for i in range(7):
        a = g.integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)
        a[:, : SIZE // 2] //= 2  # a darker left half: the model's lopsided guess differs under a flip
        Image.fromarray(a).save(root / f"{i}.png")
    (root / "broken.png").write_bytes(b"\x89PNG nope")
    return Photos(tuple(str(p) for p in sorted(root.glob("*.png"))), str(root))
