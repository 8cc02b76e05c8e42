"""The HTML report: self-contained, faithful to results.json, re-rendered without a model, seen in a browser."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch import nn

import ttakit.cli.common
import ttakit.models
from report_page import Page, assert_whole_page, needs_chromium, one_thread, pixels, screenshots
from ttakit import RunConfig, create_policy, load_model
from ttakit.cli import main
from ttakit.datasets import detect_dataset
from ttakit.evaluation.evaluate import EvalOptions, evaluate
from ttakit.evaluation.report import write_report
from ttakit.evaluation.search import SearchOptions, search_policy
from ttakit.evaluation.classify_logits import load_logits
from ttakit.policy import Policy, parse_view, save_policy

CLASSES = ["cat", "dog", "fox"]
INPUT_STAGE = "identity + input=80:1|hflip"  # a view re-sampled from the photo at 80 px, then flipped


class FlipSensitive(nn.Module):
    """The tiny random ``test_resnet`` plus a head reading the left-minus-right brightness
    ``a``: class 0 when ``a > 0``, class 1, more confidently, when ``a < 0``. A flip turns
    ``a`` into ``-a``, so the hflip merge always says class 1 while plain follows the sign:
    hflip fixes left-bright "dog" photos and breaks left-bright "cat" ones, by construction."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        a = x[..., :half].mean((1, 2, 3)) - x[..., -half:].mean((1, 2, 3))
        head = torch.stack([2.0 * a.clamp_min(0), 6.0 * (-a).clamp_min(0), torch.zeros_like(a)], 1)
        return head + 0.01 * self.base(x)


def _photo(path: Path, seed: int, left_bright: bool) -> None:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 90, (48, 64, 3)).astype(np.uint8)
    rgb[:, slice(0, 32) if left_bright else slice(32, 64)] += 150
    Image.fromarray(rgb).save(path)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An evaluation (hflip, d4, an input-stage view) of 11 generated photos (and one
    unreadable file) by the flip-sensitive tiny model,
    written by :func:`evaluate` (which writes the report), then a search policy next to it."""
    root = tmp_path_factory.mktemp("report")
    data = root / "data"
    layout = {"cat": [True, True, False, False], "dog": [True, True, True, False], "fox": [True, False, True]}
    for c, (name, sides) in enumerate(layout.items()):
        (data / name).mkdir(parents=True)
        for i, left in enumerate(sides):
            _photo(data / name / f"{name}{i}.png", 10 * c + i, left)
    (data / "fox" / "broken.png").write_bytes(b"\x89PNG not really")  # skipped, not fatal
    torch.manual_seed(0)
    lm = load_model("test_resnet", weights="random", num_classes=3, labels=CLASSES)
    # 64 px inputs keep the run fast; the report must draw views at this size.
    lm = dataclasses.replace(lm, model=FlipSensitive(lm.model).eval(),
                             data_config={**lm.data_config, "input_size": (3, 64, 64)})
    out = root / "run"
    policies = [create_policy(p) for p in ("hflip", "d4", INPUT_STAGE)]
    with one_thread():
        res = evaluate(lm, detect_dataset(data, CLASSES), policies, out_dir=out,
                       run_config=RunConfig(16, False), options=EvalOptions(batch_size=4, workers=0, quiet=True))
    assert res["written"] == [str(out / "report.html")]
    (out / "report.first.html").write_text((out / "report.html").read_text())
    logits, labels, names, _ = load_logits(out)
    pool = Policy(tuple(parse_view(n) for n in names), name="pool")
    policy = search_policy(pool, logits, labels, SearchOptions(budget=3, folds=2), provenance={"data": str(data)})
    save_policy(policy, root / "policy.json")  # out/../policy.json: found without being named
    return out


def _page(path: Path) -> Page:
    return Page(path.read_text(encoding="utf-8"))


def test_page_is_self_contained_and_shows_fixed_and_broken_photos(run_dir):
    text = (run_dir / "report.first.html").read_text(encoding="utf-8")
    page = Page(text)
    assert page.links, "no src/href parsed: the parser or the page is broken"
    for tag, attr, value in page.links:
        assert not value.startswith(("http:", "https:", "//", "file:")), (tag, attr, value)
        if tag == "img":
            assert value.startswith("data:image/"), value[:40]
        if attr == "href":
            assert value.startswith("#"), value  # in-page anchors only
    assert "<script" not in text and "<link" not in text and "url(" not in text and "@import" not in text
    hflip = page.with_class("section", "policy")[0]["id"]
    body = text.split(f'id="{hflip}"')[1].split('<section class="policy"')[0]
    # By construction hflip fixes the 3 left-bright dogs and breaks the 2 left-bright cats.
    fixed, broken = Page(body).with_class("figure", "fixed"), Page(body).with_class("figure", "broken")
    assert len(fixed) == 3 and len(broken) == 2
    assert len(Page(body).with_class("img", "photo")) == 5
    views = [a for t, a in Page(body).tags if t == "img" and a.get("title") in ("identity", "hflip")]
    assert len(views) == 10  # both views of each photo, drawn as the model saw them
    # Every gallery photo is bright on the left (see FlipSensitive): the identity thumbnail
    # shows it so, the input-stage view (re-sampled from the photo at 80 px, then flipped)
    # shows it mirrored: views are drawn as the model saw them, input stage included.
    for title, left_brighter in (("identity", True), ("input=80:1|hflip", False)):
        thumbs = [pixels(a["src"]) for t, a in page.tags if t == "img" and a.get("title") == title]
        assert thumbs and all((t[:, :20].mean() > t[:, -20:].mean() + 40) == left_brighter for t in thumbs)
        assert all(t.shape == (48, 48, 3) for t in thumbs)


def test_table_numbers_equal_results_json(run_dir):
    doc = json.loads((run_dir / "results.json").read_text())
    page = _page(run_dir / "report.first.html")
    assert list(page.cells) == list(doc["results"]) == ["plain", "hflip", "d4", INPUT_STAGE]
    for key, r in doc["results"].items():
        cells = page.cells[key]
        assert cells["top1"] == f"{r['top1']:.2%}" and cells["top5"] == f"{r['top5']:.2%}"
        assert cells["nll"] == f"{r['nll']:.4f}" and cells["nll_calibrated"] == f"{r['nll_calibrated']:.4f}"
        assert cells["fixed"] == str(r["fixed"]) and cells["broken"] == str(r["broken"])
        if key != "plain":
            assert cells["delta_top1"] == f"{100 * r['delta_top1']:+.2f}"
            assert cells["delta_nll"] == f"{r['delta_nll']:+.4f}"
            assert cells["p_value"] == f"{r['p_value']:.3g}"
            assert cells["significant"] == ("yes" if r["significant"] else "no")
            assert r["verdict"] in (run_dir / "report.first.html").read_text()
    assert doc["results"]["hflip"]["fixed"] == 3 and doc["results"]["hflip"]["broken"] == 2
    # No conformal fields in results.json: no conformal section, nor a link to one.
    assert 'id="conformal"' not in (run_dir / "report.first.html").read_text()


def test_gallery_probabilities_are_recomputed_from_the_stored_logits(run_dir):
    logits, labels, names, _ = load_logits(run_dir)
    tta = torch.softmax(logits[:, [names.index("identity"), names.index("hflip")]], -1).mean(1)
    text = (run_dir / "report.first.html").read_text()
    dogs = [i for i in range(len(labels)) if labels[i] == 1 and tta[i].argmax() == 1 and logits[i, 0].argmax() == 0]
    assert len(dogs) == 3
    for i in dogs:  # each fixed dog's TTA top-1 probability is on the page, as printed there
        assert f'>dog</span><span class="prob">{100 * float(tta[i, 1]):.1f}%</span>' in text


def test_report_command_rerenders_without_a_model(run_dir, monkeypatch, capsys):
    def no_model(*args, **kwargs):
        raise AssertionError("ttakit report must not load a model")

    monkeypatch.setattr(ttakit.models, "load_model", no_model)
    monkeypatch.setattr(ttakit.runtime.prepare, "load_model", no_model)  # what the commands load models with
    monkeypatch.setattr("timm.create_model", no_model)  # the data config comes from the stored run
    (run_dir / "report.html").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert f"wrote {run_dir / 'report.html'}" in capsys.readouterr().out
    again = (run_dir / "report.html").read_text()
    first = (run_dir / "report.first.html").read_text()
    # The page evaluate wrote with the model's class names and data config, plus the trace of
    # ../policy.json (saved after the evaluation): the rest is the same, byte for byte.
    assert 'id="search-trace"' in again and 'id="search-trace"' not in first
    assert _without_search(again) == _without_search(first)


def _without_search(text: str) -> str:
    text = text.replace('<a href="#search">Search</a>', "")
    if '<h2 id="search">' in text:
        head, rest = text.split('<h2 id="search">', 1)
        text = head + '<section class="policy"' + rest.split('<section class="policy"', 1)[1]
    return " ".join(text.split())


def test_search_trace_appears(run_dir):
    policy = json.loads((run_dir.parent / "policy.json").read_text())
    page_text = write_report(run_dir, search_policy_path=run_dir.parent / "policy.json").read_text()
    page = Page(page_text)
    trace = policy["meta"]["trace"]
    assert trace and page.trace == [[str(i + 1), t["view"], f"{t['objective']:.4f}"] for i, t in enumerate(trace)]
    assert 'id="search"' in page_text and "was searched on" not in page_text
    # Without a policy.json anywhere near, no search section.
    (run_dir.parent / "policy.json").rename(run_dir.parent / "kept.json")
    try:
        assert 'id="search"' not in write_report(run_dir).read_text()
    finally:
        (run_dir.parent / "kept.json").rename(run_dir.parent / "policy.json")


def test_missing_photos_and_unknown_model_degrade_with_notes(run_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    meta = json.loads((copy / "logits" / "run.json").read_text())
    meta.pop("data_config")
    meta["model"] = "no_such_model"
    (copy / "logits" / "run.json").write_text(json.dumps(meta))
    rows = (copy / "per_image.csv").read_text().splitlines()
    first_dog = next(line.split(",")[0] for line in rows if ",dog," in line)
    csv_moved = (copy / "per_image.csv").read_text().replace(first_dog, str(tmp_path / "gone.png"))
    (copy / "per_image.csv").write_text(csv_moved)
    text = write_report(copy).read_text()
    assert "view thumbnails skipped" in text and "could not be read" in text and "photo unavailable" in text
    page = Page(text)
    assert not [a for t, a in page.tags if t == "img" and a.get("title") == "hflip"]
    assert page.cells["hflip"]["top1"] == _page(run_dir / "report.first.html").cells["hflip"]["top1"]


def test_search_and_evaluate_commands_write_the_report(tmp_path, capsys):
    data = tmp_path / "data"
    for c, name in enumerate(CLASSES):
        (data / name).mkdir(parents=True)
        _photo(data / name / "a.png", c, c % 2 == 0)
    torch.manual_seed(0)
    weights = tmp_path / "w.pth"
    torch.save(timm.create_model("test_resnet", num_classes=3).state_dict(), weights)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(CLASSES))
    common = ["--model", "test_resnet", "--labels", str(labels), "--weights", str(weights), "--workers", "0", "--quiet"]
    with one_thread():
        assert main(["search", str(data), *common, "--pool", "identity+hflip=1", "--budget", "2", "--folds", "2",
                     "--out", str(tmp_path / "s")]) == 0
        assert f"wrote {tmp_path / 's' / 'data' / 'report.html'}" in capsys.readouterr().out
        assert 'id="search-trace"' in (tmp_path / "s" / "data" / "report.html").read_text()
        assert main(["evaluate", str(data), *common, "--tta", "hflip", "--out", str(tmp_path / "e")]) == 0
    assert "report.html" in capsys.readouterr().out and (tmp_path / "e" / "report.html").exists()


# --------------------------------------------------------------------------- real browser
@needs_chromium
def test_headless_chromium_renders_the_whole_page_without_console_errors(run_dir, tmp_path):
    [(img, console)] = screenshots([run_dir / "report.first.html"], tmp_path)
    assert console == []  # the page has no script: any console line (an error, a blocked load) is a defect
    assert_whole_page(img)
