"""One TaskSpec per task fills every index; an option acts or it is refused (command line and Python alike)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ttakit
from ttakit import task_spec
from ttakit.cli import main
from ttakit.errors import ConfigError
from ttakit.evaluation.pipeline import EvalJob
from ttakit.evaluation.report import write_report
from ttakit.evaluation.segment_eval import SegmentScoring, SegmentTask
from ttakit.datasets import find_masked_images
from ttakit.runtime.config import RunConfig
from ttakit.runtime.loop import run_views
from ttakit.tasks.export import graph_head
from ttakit.tasks.plan import OutputsHead, as_inputs

HERE = Path(__file__).parent
CLASSIFIER = f"{HERE / 'test_cli.py'}:make_classifier"


# --------------------------------------------------------------------------- one registration
def test_one_registration_fills_every_index():
    """A spec registered once is the Plan head, the export head, the report and the commands' task."""
    made = []

    def head(policy, **options):
        made.append(options)
        return OutputsHead()

    spec = ttakit.TaskSpec("spec_probe", "a probe", head=head, graph_head="ttakit.tasks.classify:ClassifyGraph",
                           report="ttakit.evaluation.report_classify:page", template="_classify.html.j2",
                           commands={"evaluate": "ttakit.cli.task_commands:evaluate_task"},
                           options=(ttakit.Option("depth", "a probe option", type="int", default=3),))
    ttakit.register_task(spec)
    try:
        plan = ttakit.Plan("hflip", task="spec_probe", shade="dark")
        assert isinstance(plan.head, OutputsHead) and made == [{"shade": "dark"}]
        assert graph_head("spec_probe", "hflip").task == "classify"  # the export head the spec names
        assert "spec_probe" in ttakit.list_tasks("evaluate") and "spec_probe" not in ttakit.list_tasks("predict")
        from ttakit.evaluation.task_registry import get_task as report_of

        assert report_of("spec_probe").template == "_classify.html.j2"
        assert task_spec.check_options(spec, "evaluate", {}) == {"depth": 3}
    finally:
        task_spec._TASKS.remove("spec_probe")
    with pytest.raises(ttakit.UnknownNameError, match="unknown task 'spec_probe'"):
        ttakit.get_task("spec_probe")


def test_built_in_tasks_are_registered_once_each():
    src = Path(ttakit.__file__).parent
    calls = [p for p in src.rglob("*.py") for line in p.read_text().splitlines() if line.startswith("register_task(")]
    assert len(calls) == 5 and {"classify", "segment", "detect", "keypoints", "outputs"} <= set(ttakit.list_tasks())
    with pytest.raises(ConfigError, match="task module 'no_such_module_here' cannot be imported"):
        task_spec.load_task_modules(["no_such_module_here"])


def test_an_unknown_task_module_is_one_line(capsys):
    assert main(["evaluate", "x", "--out", "o", "--task-module", "no_such_module_here"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ttakit: error: task module 'no_such_module_here' cannot be imported") and err.count("\n") == 1


# --------------------------------------------------------------------------- an option acts or is refused
@pytest.mark.parametrize("argv, message", [
    (["evaluate", "--task", "segment", "--conformal", "0.1"],
     "--conformal is not an option of task 'segment' (it is for: classify)"),
    (["evaluate", "--task", "detect", "--adapt", "bn"], "--adapt is not an option of task 'detect' (it is for: classify)"),
    (["evaluate", "--task", "segment", "--adapt", "bn"], "--adapt is not an option of task 'segment' (it is for: classify)"),
    (["evaluate", "--tile", "64", "--blend", "gaussian"], "--tile is not an option of task 'classify' (it is for: segment)"),
    (["evaluate", "--task", "segment", "--overlap", "0.5"], "--overlap does nothing without --tile"),
    (["evaluate", "--task", "detect", "--merge", "mean"],
     "--merge is not an option of task 'detect' (it is for: classify, segment; did you mean --box-merge?)"),
    (["evaluate", "--conformal-score", "aps"], "--conformal-score does nothing without --conformal"),
    (["predict", "--task", "detect", "--topk", "3"], "--topk is not an option of task 'detect' (it is for: classify)"),
    (["predict", "--adapt-batch", "8"], "--adapt-batch does nothing without --adapt"),
])
def test_an_option_the_run_does_not_use_is_refused_in_one_line(argv, message, capsys, tmp_path):
    tail = ["--out", str(tmp_path / "o"), str(tmp_path / "nowhere")] if argv[0] == "evaluate" else []
    assert main([*argv, "--model", CLASSIFIER, *tail]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ttakit: error: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()  # refused before anything ran or was written


def test_calibration_photos_without_int8_are_refused(capsys, tmp_path):
    photo = tmp_path / "cat.png"
    Image.new("RGB", (16, 16)).save(photo)
    code = main(["predict", str(photo), "--model", CLASSIFIER, "--tta", "hflip", "--calibration", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("ttakit: error: --calibration photos calibrate int8 and do nothing at --precision fp32")
    with pytest.raises(ConfigError, match="`calibration` photos calibrate int8 and do nothing at `precision='bf16'`"):
        ttakit.prepare_run(ttakit.runtime.prepare.load_classifier(CLASSIFIER), precision="bf16", calibration=tmp_path)


def test_python_refuses_what_the_command_line_refuses(tmp_path):
    with pytest.raises(ConfigError, match=r"^`conformal` is not an option of task 'segment' \(it is for: classify\)$"):
        ttakit.evaluate("unused", tmp_path, task="segment", out_dir=tmp_path / "o", conformal=0.1)
    with pytest.raises(ConfigError, match="`overlap` does nothing without `tile`"):
        ttakit.evaluate("unused", tmp_path, task="segment", out_dir=tmp_path / "o", num_classes=3, overlap=0.5)
    with pytest.raises(ConfigError, match="`tile` is not an option of task 'classify'"):
        ttakit.evaluate("unused", tmp_path, out_dir=tmp_path / "o", tile=64)
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- EvalTask methods are pure
class _Segmenter(torch.nn.Module):
    def forward(self, x):
        return torch.stack([x[:, 0], x[:, 1], x[:, 2]], 1) * 4  # (B, 3, H, W): the colours as classes


def test_segment_task_methods_take_what_they_need_explicitly(tmp_path):
    """pack scores the rows of the job it is given, whatever was called before (no hidden state)."""
    (tmp_path / "i").mkdir()
    (tmp_path / "m").mkdir()
    g = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(g.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(tmp_path / "i" / f"{i}.png")
        Image.fromarray(g.integers(0, 3, (24, 24), dtype=np.uint8), "L").save(tmp_path / "m" / f"{i}.png")
    data = find_masked_images(tmp_path / "i", tmp_path / "m")
    cfg = {"input_size": (3, 24, 24), "interpolation": "bilinear", "mean": (0.0,) * 3, "std": (1.0,) * 3,
           "crop_pct": 1.0, "crop_mode": "squash"}
    lm = ttakit.LoadedModel(_Segmenter(), "colours", "none", cfg, ["r", "g", "b"])
    task = SegmentTask(lm, SegmentScoring(3, store_budget=0), RunConfig(4, False))
    policy = ttakit.create_policy("hflip")
    views = list(policy.views)
    inputs = as_inputs([Image.open(p) for p in data.paths], views, cfg)
    outs = run_views(lm.model, inputs, views, lm.normalization, RunConfig(4, False))
    both = EvalJob(data, tuple(task.runs([policy], ["mean", "max"])))
    plain = EvalJob(data, tuple(task.runs([], None)))
    a = task.pack(outs, inputs, views, [0, 1], both)  # no runs()/fingerprint() call first, in either order
    b = task.pack(outs, inputs, views, [0, 1], plain)
    again = task.pack(outs, inputs, views, [0, 1], both)
    counts = lambda p: sorted(k for k in p if k.startswith("stats."))  # noqa: E731
    assert len(counts(a)) == len(counts(b)) + 2  # hflip@mean and hflip@max, counted only when asked for
    assert counts(a) == counts(again) and all(torch.equal(a[k], again[k]) for k in counts(a))
    assert write_report  # the report module stays importable beside the task (no cycle)


def test_a_task_from_an_entry_point(tmp_path, monkeypatch):
    """An installed package's ``ttakit.tasks`` entry point registers its task on the first lookup."""
    (tmp_path / "ep_probe_task.py").write_text(
        "import ttakit\nttakit.register_task(ttakit.TaskSpec('ep_probe', 'from an entry point'))\n")
    dist = tmp_path / "ep_probe-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-probe\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[ttakit.tasks]\nep_probe = ep_probe_task\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(task_spec, "_loaded", set())  # as in a fresh process
    try:
        assert "ep_probe" in ttakit.list_tasks() and ttakit.get_task("ep_probe").summary == "from an entry point"
    finally:
        if "ep_probe" in task_spec._TASKS:
            task_spec._TASKS.remove("ep_probe")
