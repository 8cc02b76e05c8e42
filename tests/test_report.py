"""The HTML report: self-contained, faithful to results.json, re-rendered without a model, seen in a browser."""

from __future__ import annotations

import base64
import contextlib
import csv
import dataclasses
import io
import json
import shutil
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch import nn

import ttakit
import ttakit.cli.common
import ttakit.models
from ttakit import RunConfig, create_policy, load_model
from ttakit.cli import main
from ttakit.datasets import detect_dataset, find_masked_images
from ttakit.evaluation.evaluate import EvalOptions, evaluate
from ttakit.evaluation.overlays import segmentation_panels
from ttakit.evaluation.report import render_page, write_report
from ttakit.evaluation.report_gallery import Gallery, detection_gallery, gallery_page, segmentation_gallery
from ttakit.evaluation.search import SearchOptions, search_policy
from ttakit.evaluation.segment_eval import SegmentScoring, evaluate_segmentation
from ttakit.evaluation.store import load_logits
from ttakit.policy import Policy, parse_view, save_policy

CLASSES = ["cat", "dog", "fox"]
FOOTER_RGB = (0x24, 0x3B, 0x53)  # the footer's background (--footer in the template)
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


class _Page(HTMLParser):
    """What the tests read from a page: every src/href, table cells by row and class, script tags."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.links: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.cells: dict[str, dict[str, str]] = {}  # results row key -> td class -> text
        self.trace: list[list[str]] = []
        self._row: str | None = None
        self._cell: str | None = None
        self._in_trace = False
        self._trace_row: list[str] | None = None
        self._text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        self.links += [(tag, k, a[k]) for k in ("src", "href") if k in a]
        if tag == "table" and a.get("id") == "search-trace":
            self._in_trace = True
        if tag == "tr" and "data-key" in a:
            self._row = a["data-key"]
            self.cells[self._row] = {}
        if tag == "tr" and self._in_trace:
            self._trace_row = []
        if tag == "td":
            self._cell, self._text = a.get("class", "").split(" ")[0], []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            text = "".join(self._text).strip()
            if self._row is not None:
                self.cells[self._row][self._cell] = text
            if self._trace_row is not None:
                self._trace_row.append(text)
            self._cell = None
        if tag == "tr":
            if self._trace_row:
                self.trace.append(self._trace_row)
            self._row, self._trace_row = None, None
        if tag == "table":
            self._in_trace = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._text.append(data)

    def with_class(self, tag: str, cls: str) -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == tag and cls in a.get("class", "").split()]


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Torch on one thread for these tiny forwards: on a shared CI machine its thread pool
    spins for longer than the convolutions take."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
    lm = load_model("test_resnet", num_classes=3, labels=CLASSES)
    # 64 px inputs keep the run fast; the report must draw views at this size.
    lm = dataclasses.replace(lm, model=FlipSensitive(lm.model).eval(),
                             data_config={**lm.data_config, "input_size": (3, 64, 64)})
    out = root / "run"
    policies = [create_policy(p) for p in ("hflip", "d4", INPUT_STAGE)]
    with _one_thread():
        res = evaluate(lm, detect_dataset(data, CLASSES), policies, None, out,
                       RunConfig(16, False), EvalOptions(batch_size=4, workers=0, quiet=True))
    assert res["written"] == [str(out / "report.html")]
    (out / "report.first.html").write_text((out / "report.html").read_text())
    logits, labels, names, _ = load_logits(out)
    pool = Policy(tuple(parse_view(n) for n in names), name="pool")
    policy = search_policy(pool, logits, labels, SearchOptions(budget=3, folds=2), provenance={"data": str(data)})
    save_policy(policy, root / "policy.json")  # out/../policy.json: found without being named
    return out


def _page(path: Path) -> _Page:
    return _Page(path.read_text(encoding="utf-8"))


def test_page_is_self_contained_and_shows_fixed_and_broken_photos(run_dir):
    text = (run_dir / "report.first.html").read_text(encoding="utf-8")
    page = _Page(text)
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
    fixed, broken = _Page(body).with_class("figure", "fixed"), _Page(body).with_class("figure", "broken")
    assert len(fixed) == 3 and len(broken) == 2
    assert len(_Page(body).with_class("img", "photo")) == 5
    views = [a for t, a in _Page(body).tags if t == "img" and a.get("title") in ("identity", "hflip")]
    assert len(views) == 10  # both views of each photo, drawn as the model saw them
    # Every gallery photo is bright on the left (see FlipSensitive): the identity thumbnail
    # shows it so, the input-stage view (re-sampled from the photo at 80 px, then flipped)
    # shows it mirrored: views are drawn as the model saw them, input stage included.
    for title, left_brighter in (("identity", True), ("input=80:1|hflip", False)):
        thumbs = [_pixels(a["src"]) for t, a in page.tags if t == "img" and a.get("title") == title]
        assert thumbs and all((t[:, :20].mean() > t[:, -20:].mean() + 40) == left_brighter for t in thumbs)
        assert all(t.shape == (48, 48, 3) for t in thumbs)


def _pixels(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/jpeg;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"), dtype=float)


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
    monkeypatch.setattr(ttakit.cli.common, "load_model", no_model)
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
    page = _Page(page_text)
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
    page = _Page(text)
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
    with _one_thread():
        assert main(["search", str(data), *common, "--pool", "identity+hflip=1", "--budget", "2", "--folds", "2",
                     "--out", str(tmp_path / "s")]) == 0
        assert f"wrote {tmp_path / 's' / 'data' / 'report.html'}" in capsys.readouterr().out
        assert 'id="search-trace"' in (tmp_path / "s" / "data" / "report.html").read_text()
        assert main(["evaluate", str(data), *common, "--tta", "hflip", "--out", str(tmp_path / "e")]) == 0
    assert "report.html" in capsys.readouterr().out and (tmp_path / "e" / "report.html").exists()


# --------------------------------------------------------------------------- real browser
def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def _screenshots(pages: list[Path], tmp_path: Path) -> list[tuple[np.ndarray, list[str]]]:
    """A 1280 px wide headless-Chromium screenshot of each page (browsers run side by side)
    and its console lines."""
    runs = []
    for i, page in enumerate(pages):
        shot = tmp_path / f"page{i}.png"
        proc = subprocess.Popen(
            [_chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--no-first-run",
             "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp_path / f'profile{i}'}",
             f"--screenshot={shot}", "--window-size=1280,6000", page.as_uri()],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        runs.append((shot, proc))
    found = []
    for shot, proc in runs:
        _, err = proc.communicate(timeout=90)
        assert shot.exists(), err[-2000:]
        console = [line for line in err.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
        found.append((np.asarray(Image.open(shot).convert("RGB")).astype(np.int16), console))
    return found


def _assert_whole_page(img: np.ndarray) -> None:
    """Not blank (text, charts, photos) and not cut off (the footer is in the shot, only the
    page background below it)."""
    assert img.shape[1] == 1280
    top = img[:1500]
    assert top.std() > 20 and len(np.unique(top.reshape(-1, 3), axis=0)) > 200
    is_footer = (np.abs(img - np.array(FOOTER_RGB)).max(axis=2) <= 3).mean(axis=1) > 0.5
    rows = np.flatnonzero(is_footer)
    assert len(rows) > 20, "footer not in the screenshot: the page is cut off or did not render"
    below = img[rows[-1] + 1:]
    assert len(below) > 0 and (below >= 250).all(), "something is drawn below the footer"


needs_chromium = pytest.mark.skipif(_chromium() is None, reason="headless Chromium not installed (apt-get install chromium)")


@needs_chromium
def test_headless_chromium_renders_the_whole_page_without_console_errors(run_dir, tmp_path):
    [(img, console)] = _screenshots([run_dir / "report.first.html"], tmp_path)
    assert console == []  # the page has no script: any console line (an error, a blocked load) is a defect
    _assert_whole_page(img)


# --------------------------------------------------------------------------- segmentation and detection pages
def _scene(seed: int, size: tuple[int, int] = (48, 64)) -> tuple[np.ndarray, np.ndarray]:
    """A photo with one bright rectangle (class 1 on background 0) and its mask."""
    rng = np.random.default_rng(seed)
    photo = rng.integers(0, 80, (*size, 3)).astype(np.uint8)
    mask = np.zeros(size, np.int64)
    top, left = int(rng.integers(4, 20)), int(rng.integers(20, 30))  # the object crosses x = 40
    mask[top:top + 20, left:left + 26] = 1
    photo[mask == 1] += 150
    return photo, mask


def _iou(pred: np.ndarray, truth: np.ndarray, k: int = 2) -> float:
    ious = [((pred == c) & (truth == c)).sum() / u for c in range(k) if (u := ((pred == c) | (truth == c)).sum())]
    return float(np.mean(ious))


def _segmentation_folder(root: Path) -> tuple[Path, dict, Gallery]:
    """A scored segmentation folder in memory: 6 photos, a plain model that misses the right
    part of each object and a TTA that finds it on even images and loses it on odd ones."""
    paths, truths, preds = [], [], {"plain": [], "hflip": []}
    for j in range(6):
        photo, mask = _scene(j)
        path = root / f"scene{j}.png"
        Image.fromarray(photo).save(path)
        plain = mask.copy()
        plain[:, 40:] = 0
        tta = mask.copy() if j % 2 == 0 else np.zeros_like(mask)
        paths.append(str(path))
        truths.append(mask)
        preds["plain"].append(plain)
        preds["hflip"].append(tta)
    scores = {k: [_iou(p, t) for p, t in zip(v, truths)] for k, v in preds.items()}
    results = {k: {"merge": "mean", "views": 1 if k == "plain" else 2, "view_names": ["identity", "hflip"][:1 if k == "plain" else 2],
                   "miou": float(np.mean(v)), "pixel_acc": 0.9, "seconds": 0.01,
                   "per_class_iou": [0.9, float(np.mean(v))]} for k, v in scores.items()}
    results["hflip"].update(delta_miou=results["hflip"]["miou"] - results["plain"]["miou"], ci_miou=[-0.1, 0.2],
                            significant=False, verdict="hflip: mIoU within noise")
    doc = {"task": "segment", "model": "toy", "weights": "none", "data": str(root), "n_images": 6, "skipped": [],
           "class_names": ["background", "box"], "results": results}
    gallery = segmentation_gallery(paths, scores, lambda j: truths[j], lambda k, j: preds[k][j], 2)
    return root, doc, gallery


def test_segmentation_gallery_shows_the_photos_tta_changed_most_with_changed_pixels_marked(tmp_path):
    root, doc, gallery = _segmentation_folder(tmp_path)
    context = gallery_page(root, doc, {"identity": 0.7, "hflip": 0.6}, None, 12, gallery)
    text = render_page(doc, context)
    page = _Page(text)
    assert page.cells["hflip"]["miou"] == f"{doc['results']['hflip']['miou']:.2%}"
    assert page.cells["hflip"]["delta_miou"] == f"{100 * doc['results']['hflip']['delta_miou']:+.2f}"
    raised, lowered = page.with_class("figure", "raised"), page.with_class("figure", "lowered")
    assert len(raised) == 3 and len(lowered) == 3  # even images gained, odd ones lost
    assert len([a for t, a in page.tags if t == "img" and a.get("title") == "changed"]) == 6
    # The changed-pixels picture of the first raised photo: green where TTA found the object's right part.
    photo, mask = _scene(0)
    card = text.split('class="pcard raised"')[1]
    changed = _pixels(_Page(card).links[4][2]).astype(float)
    fixed = (mask == 1) & (np.arange(mask.shape[1]) >= 40)[None, :]
    assert changed[fixed].mean(0)[1] > changed[fixed].mean(0)[0] + 60  # green
    untouched = mask == 0
    assert changed[untouched].mean() < 90  # dimmed photo, no colour


def test_segmentation_panels_colour_each_change_by_its_effect():
    truth = np.zeros((40, 40), np.int64)
    truth[:, 20:] = 1
    plain, tta = truth.copy(), truth.copy()
    plain[:10, 20:] = 0  # TTA fixes these
    tta[30:, :20] = 1  # TTA breaks these
    panels = dict(segmentation_panels(np.full((40, 40, 3), 100, np.uint8), truth, plain, tta, 2, side=40))
    changed = _pixels(panels["changed"])
    assert changed[2:8, 24:36].mean((0, 1)).argmax() == 1  # green
    assert changed[32:38, 4:16].mean((0, 1)).argmax() == 0  # red
    assert np.ptp(changed[14:26, 4:16].mean((0, 1))) < 10  # unchanged: grey


def _detection_page(root: Path) -> tuple[dict, Gallery]:
    paths, boxes = [], []
    for j in range(4):
        photo, mask = _scene(10 + j)
        Image.fromarray(photo).save(root / f"det{j}.png")
        paths.append(str(root / f"det{j}.png"))
        ys, xs = np.nonzero(mask)
        boxes.append(np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], float))

    def prediction(key: str, j: int) -> dict[str, np.ndarray]:
        shift = 0.0 if (key == "hflip") == (j % 2 == 0) else 12.0
        return {"boxes": boxes[j] + shift, "scores": np.array([0.9]), "labels": np.array([0])}

    scores = {"plain": [0.5 if j % 2 == 0 else 0.9 for j in range(4)], "hflip": [0.9 if j % 2 == 0 else 0.5 for j in range(4)]}
    results = {"plain": {"merge": "nms", "views": 1, "map": 0.7, "map50": 0.9, "map75": 0.6, "seconds": 0.02},
               "hflip@wbf": {"merge": "wbf", "views": 2, "map": 0.72, "map50": 0.91, "map75": 0.62, "seconds": 0.04,
                             "delta_map": 0.02, "ci_map": [0.01, 0.03], "significant": True,
                             "verdict": "hflip@wbf: mAP +2.0 pt: significant gain"}}
    doc = {"task": "detect", "model": "toy", "weights": "none", "data": str(root), "n_images": 4, "skipped": [],
           "class_names": ["box"], "results": results}
    gallery = detection_gallery(paths, {"plain": scores["plain"], "hflip@wbf": scores["hflip"]},
                                lambda j: (boxes[j], np.array([0])),
                                lambda k, j: prediction("hflip" if k != "plain" else k, j), 1)
    return doc, gallery


class BrightSegmenter(nn.Module):
    """Class 1 where the photo is bright, with a left-to-right bias: a flip moves the bias, so
    hflip TTA changes some pixels near the threshold (a fixed rule, no training)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-0.25, 0.25, x.shape[-1]).view(1, 1, -1)
        bright = x.mean(1) - 0.45 + ramp  # (B, H, W)
        return torch.stack([-bright, bright], 1) * 8.0


SEG_CONFIG = {"input_size": (3, 48, 64), "interpolation": "bilinear", "mean": (0.0,) * 3, "std": (1.0,) * 3,
              "crop_pct": 1.0, "crop_mode": "squash"}


def test_segmentation_evaluation_writes_a_report_with_its_gallery(tmp_path):
    """The real pipeline (evaluate_segmentation) writes report.html through its finish step,
    with a card for each photo whose IoU hflip changed; ``ttakit report`` re-renders it."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for j in range(6):
        photo, mask = _scene(20 + j)
        Image.fromarray(photo).save(tmp_path / "images" / f"s{j}.png")
        Image.fromarray(mask.astype(np.uint8)).save(tmp_path / "masks" / f"s{j}.png")
    lm = ttakit.LoadedModel(BrightSegmenter().eval(), "bright", "none", SEG_CONFIG, ["background", "box"])
    out = tmp_path / "run"
    with _one_thread():
        res = evaluate_segmentation(lm, find_masked_images(tmp_path / "images", tmp_path / "masks"),
                                    [create_policy("hflip")], None, out, RunConfig(16, False), SegmentScoring(2),
                                    EvalOptions(batch_size=4, workers=0, quiet=True))
    assert str(out / "report.html") in res["written"]
    with (out / "per_image.csv").open() as f:
        rows = list(csv.DictReader(f))
    changed = sum(r["plain_iou"] != r["hflip_iou"] for r in rows)
    assert changed > 0
    text = (out / "report.html").read_text()
    page = _Page(text)
    assert len(page.with_class("figure", "pcard")) == changed  # every changed photo, at most 12 each way
    assert len([a for t, a in page.tags if t == "img" and a.get("title") == "TTA"]) == changed
    assert page.cells["hflip"]["miou"] == f"{res['results']['hflip']['miou']:.2%}"
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert " ".join((out / "report.html").read_text().split()) == " ".join(text.split())
    # Without the stored outputs the table stands and a note says why the gallery is missing.
    shutil.rmtree(out / "segmentation")
    assert main(["report", str(out)]) == 0
    bare = _Page((out / "report.html").read_text())
    assert not bare.with_class("figure", "pcard") and "the gallery is left out" in (out / "report.html").read_text()
    assert bare.cells["hflip"] == page.cells["hflip"]


@needs_chromium
def test_segmentation_and_detection_pages_render_whole_in_chromium(tmp_path):
    pages = []
    for task in ("segment", "detect"):
        root = tmp_path / task
        root.mkdir()
        if task == "segment":
            _, doc, gallery = _segmentation_folder(root)
        else:
            doc, gallery = _detection_page(root)
        text = render_page(doc, gallery_page(root, doc, {}, None, 12, gallery))
        assert "<script" not in text and all(v.startswith(("data:image/", "#")) for _, _, v in _Page(text).links)
        assert _Page(text).with_class("figure", "pcard")  # the gallery is there
        pages.append(root / "report.html")
        pages[-1].write_text(text, encoding="utf-8")
    for img, console in _screenshots(pages, tmp_path):
        assert console == []
        _assert_whole_page(img)
