"""The toy task of ``toy_task_plugin`` (registered there, once, outside the package) through
``ttakit.evaluate``, resume, the report and the command line; under torchrun:
tests/test_distributed.py (with tests/dist_driver.py).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch
from PIL import Image

from cli_session import run_commands  # beside this file
from toy_task_plugin import NAME, SIZE, GreyGuess, Photos, evaluate_toy, grey, loaded, make_photos

from ttakit.cli import main


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
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # run_commands puts tests/ on the path: the module is importable
    env.pop("TTAKIT_TASK_MODULES", None)
    argv = ["evaluate", str(tmp_path / "photos"), "--task", NAME, "--out", str(tmp_path / "cli"), "--batch-size", "3",
            "--workers", "0", "--device", "cpu", "--quiet"]
    # One fresh interpreter: without the module the task is unknown, then with it the run works.
    done = run_commands([argv, argv + ["--task-module", "toy_task_plugin"]], env=env)
    assert done.codes[0] == 2 and "invalid choice" in done.stderr[0] and NAME in done.stderr[0], done.stderr[0]
    assert done.codes[1] == 0, done.stderr[1][-3000:]
    doc = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert doc["task"] == NAME and doc["n_skipped"] == 1
    _rows_close(doc["results"], reference.results)
    assert "RMSE" in done.stdout[1] and "hflip: RMSE" in done.stdout[1] and (tmp_path / "cli" / "report.html").exists()
    # resume, in this process (the module is imported here already): only the lost chunk runs again
    sorted((tmp_path / "cli" / "regression").glob("chunk_*.safetensors"))[0].unlink()
    GreyGuess.calls = 0
    assert main(argv + ["--task-module", "toy_task_plugin"]) == 0
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
