"""The toy task of ``toy_task_plugin`` (registered there, once, outside the package) through
``ttakit.evaluate``, resume, torchrun, the report and the command line. Run as a script
(``python tests/test_toy_task.py OUT DATA``), it evaluates into OUT, which is how the torchrun
test starts its ranks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from toy_task_plugin import NAME, SIZE, GreyGuess, Photos, evaluate_toy, grey, loaded  # beside this file

from ttakit.cli import main
from ttakit.runtime.distributed import DistContext


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


def _without_timing(doc: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(dict(getattr(doc, "doc", doc))))
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
    assert res.out == out and [r["key"] for r in res.rows] == ["plain", "hflip"] and res.verdicts == [rows["hflip"]["verdict"]]


def _rows_close(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert list(a) == list(b)
    for key in a:
        assert abs(a[key]["rmse"] - b[key]["rmse"]) < 1e-6 and a[key]["view_names"] == b[key]["view_names"], key


def test_toy_task_from_the_command_line_evaluates_resumes_and_reports(tmp_path):
    """A fresh process: the task exists only once --task-module has imported its module."""
    data = make_photos(tmp_path / "photos")
    reference = evaluate_toy(data, tmp_path / "python")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    env.pop("TTAKIT_TASK_MODULES", None)
    argv = [sys.executable, "-m", "ttakit", "evaluate", str(tmp_path / "photos"), "--task", NAME, "--out",
            str(tmp_path / "cli"), "--batch-size", "3", "--workers", "0", "--device", "cpu", "--quiet"]
    unknown = subprocess.run(argv, capture_output=True, text=True, timeout=240, env=env)
    assert unknown.returncode == 2 and "invalid choice" in unknown.stderr and NAME in unknown.stderr, unknown.stderr
    run = subprocess.run(argv + ["--task-module", "toy_task_plugin"], capture_output=True, text=True, timeout=240,
                         env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    doc = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert doc["task"] == NAME and doc["n_skipped"] == 1
    _rows_close(doc["results"], reference.results)
    assert "RMSE" in run.stdout and "hflip: RMSE" in run.stdout and (tmp_path / "cli" / "report.html").exists()
    # resume, in this process (the module is imported here already): only the lost chunk runs again
    sorted((tmp_path / "cli" / "regression").glob("chunk_*.safetensors"))[0].unlink()
    GreyGuess.calls = 0
    assert main(argv[3:] + ["--task-module", "toy_task_plugin"]) == 0
    assert GreyGuess.calls == 3 * 2  # the first chunk: three photos, two views
    _rows_close(json.loads((tmp_path / "cli" / "results.json").read_text())["results"], reference.results)


def test_toy_task_predicts_from_the_command_line(tmp_path, capsys, monkeypatch):
    data = make_photos(tmp_path / "photos")
    monkeypatch.setenv("TTAKIT_TASK_MODULES", "toy_task_plugin")
    code = main(["predict", data.paths[0], "--task", NAME, "--tta", "hflip", "--device", "cpu", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    x = torch.from_numpy(np.asarray(Image.open(data.paths[0]).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        plain = loaded().model(x)
        flipped = (plain + loaded().model(x.flip(-1)).flip(-1)) / 2
    assert doc["task"] == NAME and doc["policy"] == ["identity", "hflip"]
    assert abs(doc["images"][0]["plain"]["mean_grey"] - float(plain.mean())) < 1e-5
    assert abs(doc["images"][0]["tta"]["mean_grey"] - float(flipped.mean())) < 1e-5
    # an option the toy task does not take is refused, naming it and who takes it
    code = main(["predict", data.paths[0], "--task", NAME, "--adaptive", "0.5", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == "ttakit: error: --adaptive is not an option of task 'toy_rmse' (it is for: classify)"


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
