"""Dataset evaluation: metrics, layouts, skipped files, resume, search."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from ttakit import ClassificationTTA, RunConfig, create_policy, load_image, load_model
from ttakit.cli import main
from ttakit.datasets import detect_dataset
from ttakit.errors import DatasetError
from ttakit.evaluation.evaluate import ClassifyScoring, ClassifyTask, EvalOptions, evaluate, union_views
from ttakit.evaluation.pipeline import compute_outputs
from ttakit.evaluation.classify_logits import data_hash, load_logits
from ttakit.evaluation.store import OutputStore, fingerprint, plan_chunks
from ttakit.evaluation.metrics import MetricAccumulator, ece, nll, topk_accuracy
from ttakit.evaluation.search import greedy_search, kfold_estimate, learn_weights, pick_adaptive_threshold

CLASSES = ["cat", "dog", "fox"]


# --------------------------------------------------------------------------- metrics
@pytest.mark.parametrize("bins", [5, 10, 15, 20])
def test_metric_accumulator_with_any_number_of_bins(bins):
    """Buffers used to be sized by ECE_BINS whatever ``bins`` was: any other count failed."""
    g = torch.Generator().manual_seed(bins)
    probs = torch.softmax(torch.randn(40, 4, generator=g) * 2, -1)
    labels = torch.randint(0, 4, (40,), generator=g)
    acc = MetricAccumulator(bins=bins)
    acc.update(probs[:25], labels[:25])
    acc.update(probs[25:], labels[25:])
    assert acc.count.shape == (bins,)
    assert math.isclose(acc.compute()["ece"], ece(probs, labels, bins=bins), rel_tol=1e-6)


def test_metrics_against_hand_computed_values():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.04, 0.9, 0.06]])
    labels = torch.tensor([0, 2, 2, 0])
    assert topk_accuracy(probs, labels, 1) == 0.5  # rows 0 and 2
    assert topk_accuracy(probs, labels, 2) == 0.75  # + row 1
    assert math.isclose(nll(probs, labels), -(math.log(0.7) + math.log(0.4) + math.log(0.4) + math.log(0.04)) / 4, rel_tol=1e-6)
    # 15 bins: conf 0.7 -> bin 10 (correct), 0.5 -> bin 7 (wrong), 0.4 -> bin 5 (correct), 0.9 -> bin 13 (wrong)
    expected = (abs(1 - 0.7) + abs(0 - 0.5) + abs(1 - 0.4) + abs(0 - 0.9)) / 4
    assert math.isclose(ece(probs, labels), expected, rel_tol=1e-6)
    # Two rows in one bin: |mean acc - mean conf| weighted by the bin's share.
    p2 = torch.tensor([[0.62, 0.38], [0.64, 0.36]])
    assert math.isclose(ece(p2, torch.tensor([0, 1])), abs(0.5 - 0.63), rel_tol=1e-6)
    acc = MetricAccumulator()
    acc.update(probs[:2], labels[:2], plain_correct=torch.tensor([False, True]))
    acc.update(probs[2:], labels[2:], plain_correct=torch.tensor([True, True]))
    m = acc.compute()
    assert m["top1"] == 0.5 and m["top5"] == 1.0 and math.isclose(m["ece"], expected, rel_tol=1e-6)
    assert math.isclose(m["nll"], nll(probs, labels), rel_tol=1e-6)
    assert m["fixed"] == 1 and m["broken"] == 2  # row 0 fixed; rows 1 and 3 broken


# --------------------------------------------------------------------------- data
def _png(path, seed, size=(40, 48)):
    rgb = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "data"
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(4):
            _png(root / name / f"{i}.png", 10 * c + i)
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "fox" / "readme.txt").write_text("ignored: not an image suffix")
    return root


@pytest.fixture()
def tiny_lm(labelled_model):
    return labelled_model  # conftest's: CLASSES, tmp_path/labels.txt


def test_layouts(folder, tmp_path, tiny_lm):
    ds = detect_dataset(folder, CLASSES)
    assert ds.layout == "imagefolder" and len(ds) == 13 and ds.n_classes == 3
    assert ds.labels[ds.paths.index(str(folder / "fox" / "0.png"))] == 2
    flat = tmp_path / "flat"
    flat.mkdir()
    _png(flat / "n02123159_tiger_cat.JPEG", 1)
    _png(flat / "n01440764_x.png", 2)
    names = load_model().class_names
    ds = detect_dataset(flat, names)
    assert ds.layout == "imagenet-flat" and sorted(ds.labels) == [0, 282]
    wnid_tree = tmp_path / "wnids" / "n02123159"
    wnid_tree.mkdir(parents=True)
    _png(wnid_tree / "a.jpg", 3)
    assert detect_dataset(tmp_path / "wnids", names).labels == (282,)
    table = tmp_path / "list.csv"
    table.write_text("path,label\ndata/cat/0.png,cat\ndata/fox/1.png,2\n")
    ds = detect_dataset(table, CLASSES)
    assert ds.layout == "csv" and ds.labels == (0, 2) and ds.paths[0] == str(tmp_path / "data/cat/0.png")
    with pytest.raises(DatasetError, match="'wolf' is not one of the model's 3 classes"):
        table.write_text("path,label\nx.png,wolf\n")
        detect_dataset(table, CLASSES)
    with pytest.raises(DatasetError, match="needs 'path' and 'label' columns"):
        table.write_text("file,class\nx.png,cat\n")
        detect_dataset(table, CLASSES)
    with pytest.raises(DatasetError, match="no such file"):
        detect_dataset(tmp_path / "nope", CLASSES)


# --------------------------------------------------------------------------- evaluate
def _run(tiny_lm, folder, out, **kw):
    data = detect_dataset(folder, CLASSES)
    pols = [create_policy("hflip"), create_policy("d4")]
    opts = EvalOptions(batch_size=4, workers=0, quiet=True, **kw)
    return evaluate(tiny_lm, data, pols, out_dir=out, merges=["mean", "gmean"], run_config=RunConfig(8, False),
                    options=opts)


def _strip_timing(doc):
    doc.pop("written")  # report.html, in each run's own folder
    for r in doc["results"].values():
        r.pop("seconds"), r.pop("images_per_s")
    return doc


def test_evaluate_outputs_and_skips(tiny_lm, folder, tmp_path):
    res = _run(tiny_lm, folder, tmp_path / "run")
    out = tmp_path / "run"
    doc = json.loads((out / "results.json").read_text())
    assert list(doc) == ["task", "model", "weights", "data", "n_images", "n_skipped", "n_nonfinite", "skipped", "results"]
    assert doc["n_skipped"] == 1
    assert doc["task"] == "classify"
    assert doc["n_images"] == 13
    assert doc["skipped"] == [{"path": str(folder / "dog" / "broken.png"), "reason": doc["skipped"][0]["reason"]}]
    assert "not an image" in doc["skipped"][0]["reason"]
    assert list(doc["results"]) == ["plain", "hflip@mean", "hflip@gmean", "d4@mean", "d4@gmean"]
    row = doc["results"]["d4@gmean"]
    common = {"merge", "views", "view_names", "top1", "top5", "nll", "nll_calibrated", "temperature_calibrated", "ece",
              "fixed", "broken", "seconds", "images_per_s"}
    paired = {"delta_top1", "ci_top1", "p_value", "delta_nll", "ci_nll", "significant", "images_needed", "verdict"}
    assert set(doc["results"]["plain"]) == common and set(row) == common | paired
    assert row["views"] == 8 and row["merge"] == "gmean" and len(row["view_names"]) == 8
    assert row["nll_calibrated"] <= row["nll"] + 1e-9  # T = 1 is on the grid: calibrating never hurts
    assert math.isclose(row["delta_top1"], row["top1"] - doc["results"]["plain"]["top1"], abs_tol=1e-9)
    assert row["ci_top1"][0] <= row["delta_top1"] <= row["ci_top1"][1] and row["verdict"].startswith("d4@gmean: ")
    # The numbers are those of the saved logits, recomputed here by hand.
    logits, labels, names, _ = load_logits(out)
    assert logits.shape == (12, 8, 3) and names[0] == "identity"  # d4 contains hflip: 8 distinct views
    probs = torch.softmax(logits[:, 0], -1)
    assert math.isclose(doc["results"]["plain"]["top1"], topk_accuracy(probs, labels), rel_tol=1e-6)
    plain_right = probs.argmax(-1) == labels
    merged = torch.softmax(torch.log_softmax(logits, -1).mean(1), -1)
    right = merged.argmax(-1) == labels
    assert row["fixed"] == int((right & ~plain_right).sum()) and row["broken"] == int((~right & plain_right).sum())
    with (out / "per_image.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0][:5] == ["index", "path", "label", "plain", "plain_prob"] and len(rows) == 13
    # one row schema for every task: the dataset index of each scored image (the broken file has none)
    assert [int(r[0]) for r in rows[1:]] == sorted(set(range(13)) - {_broken_index(folder)})
    assert not (out / "accuracy.png").exists()  # the cost charts are drawn once, in report.html
    assert set(json.loads((out / "per_view.json").read_text())) == set(names)
    assert res["per_view"]["identity"] == doc["results"]["plain"]["top1"]


def _broken_index(folder) -> int:
    return detect_dataset(str(folder), CLASSES).paths.index(str(folder / "dog" / "broken.png"))


def test_evaluate_adaptive_equals_classification_tta_predict(tiny_lm, folder, tmp_path):
    """evaluate replays adaptive TTA from stored logits; ClassificationTTA runs it live: same
    predictions, same number of view-forwards."""
    data = detect_dataset(folder, CLASSES)
    good = [i for i, p in enumerate(data.paths) if not p.endswith("broken.png")]
    photos = [load_image(data.paths[i]) for i in good]
    tta = ClassificationTTA(tiny_lm.model, "d4", norm=tiny_lm.normalization, run_config=RunConfig(8, False),
                            data_config=tiny_lm.data_config)
    plain = tta.forward_views(photos, [tta.views[0]])[:, 0]
    threshold = float(torch.softmax(plain, -1).max(-1).values.median())  # about half are unsure
    live = ClassificationTTA(tiny_lm.model, "d4", norm=tiny_lm.normalization, run_config=RunConfig(8, False),
                             adaptive=threshold, data_config=tiny_lm.data_config).predict(photos)
    assert 0 < int(live.augmented.sum()) < len(photos)
    opts = EvalOptions(batch_size=4, workers=0, quiet=True)
    doc = evaluate(tiny_lm, data, [create_policy("d4")], out_dir=tmp_path / "ada", run_config=RunConfig(8, False),
                   scoring=ClassifyScoring(adaptive=threshold), options=opts)
    row = doc["results"]["d4"]
    labels = torch.tensor([data.labels[i] for i in good])
    assert math.isclose(row["top1"], topk_accuracy(live.probs, labels), abs_tol=1e-6)
    with (tmp_path / "ada" / "per_image.csv").open() as f:
        stored = {r["path"]: r["d4"] for r in csv.DictReader(f)}
    assert [stored[data.paths[i]] for i in good] == [CLASSES[int(c)] for c in live.probs.argmax(-1)]
    assert math.isclose(row["forwards_fraction"], live.view_forwards / (len(photos) * 8), rel_tol=1e-9)


def test_strict_stops_at_a_bad_file(tiny_lm, folder, tmp_path):
    from ttakit import TTAKitError

    with pytest.raises(TTAKitError, match=r"broken.png.*`options.strict=True`"):
        _run(tiny_lm, folder, tmp_path / "strict", strict=True)


def test_resume_gives_the_same_results(tiny_lm, folder, tmp_path):
    full = _strip_timing(json.loads(json.dumps(_run(tiny_lm, folder, tmp_path / "full"))))
    # An interrupted run: only the first two chunks were written before it stopped.
    data = detect_dataset(folder, CLASSES)
    views = union_views([create_policy("hflip"), create_policy("d4")])
    store = OutputStore(tmp_path / "part", fingerprint(tiny_lm, data, views, 4, {"data_hash": data_hash(data)}))
    options = EvalOptions(batch_size=4, workers=0)
    task = ClassifyTask(tiny_lm.class_names, torch.tensor(data.labels))
    compute_outputs(task, tiny_lm, data, views, store, RunConfig(8, False), options, torch.device("cpu"),
                    plan_chunks(len(data), 4)[:2])
    assert len(list((tmp_path / "part" / "logits").glob("chunk_*"))) == 2
    resumed = _strip_timing(json.loads(json.dumps(_run(tiny_lm, folder, tmp_path / "part"))))
    assert resumed == full
    full_csv = (tmp_path / "full" / "per_image.csv").read_text()
    assert (tmp_path / "part" / "per_image.csv").read_text() == full_csv
    # A different request in the same folder is refused, not mixed in.
    from ttakit import TTAKitError

    with pytest.raises(TTAKitError, match="holds a different run"):
        evaluate(tiny_lm, data, [create_policy("vflip")], out_dir=tmp_path / "part", run_config=RunConfig(8, False),
                 options=EvalOptions(batch_size=4, workers=0, quiet=True))


def test_evaluate_with_input_stages_resumes_and_reuses(tiny_lm, folder, tmp_path, monkeypatch):
    """Input-stage views (re-sampled from the photo in the DataLoader workers) are stored like
    any view: a run resumes, and a later run asking for a subset costs no model time."""
    data = detect_dataset(folder, CLASSES)
    both = create_policy("hflip*input(160:1.0,192:0.875)+scale(1.1)")
    opts = EvalOptions(batch_size=4, workers=1, quiet=True)
    first = evaluate(tiny_lm, data, [both], out_dir=tmp_path / "run", run_config=RunConfig(8, False), options=opts)
    assert first["results"][both.name]["views"] == 5
    names = load_logits(tmp_path / "run")[2]
    assert {"input=160:1", "input=192:0.875|hflip", "scale=1.1"} <= set(names)
    # The stored logits of a stage view are the model's on that stage of the photo.
    photo = load_image(data.paths[0])
    tta = ClassificationTTA(tiny_lm.model, "input=192:0.875|hflip", run_config=RunConfig(8, False),
                            data_config=tiny_lm.data_config)
    logits, _, _, idx = load_logits(tmp_path / "run")
    torch.testing.assert_close(logits[idx.tolist().index(0), names.index("input=192:0.875|hflip")],
                               tta.forward_views([photo])[0, 0], atol=1e-5, rtol=1e-5)

    def no_model(*a, **k):
        raise AssertionError("the model ran although every view was stored")

    monkeypatch.setattr(tiny_lm.model, "forward", no_model)
    subset = create_policy("input(160:1.0,192:0.875)")
    again = evaluate(tiny_lm, data, [subset], out_dir=tmp_path / "run", run_config=RunConfig(8, False), options=opts)
    assert again["results"]["plain"]["top1"] == first["results"]["plain"]["top1"]
    assert again["results"][subset.name]["views"] == 2


def test_evaluate_cli(folder, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(CLASSES))
    code = main(["evaluate", str(folder), "--model", "test_resnet", "--labels", str(labels), "--weights", _weights(tmp_path),
                 "--tta", "hflip", "--tta", "scale(1,1.2)", "--out", str(tmp_path / "cli"), "--workers", "0",
                 "--adaptive", "0.5"])
    out = capsys.readouterr().out
    assert code == 0
    assert "imagefolder layout, 13 images, 3 classes" in out
    assert "skipped 1 file(s)" in out and "scale(1,1.2)" in out
    doc = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert 0 < doc["results"]["hflip"]["forwards_fraction"] <= 1.0


def _weights(tmp_path):
    import timm

    torch.manual_seed(0)
    path = tmp_path / "w.pth"
    torch.save(timm.create_model("test_resnet", num_classes=3).state_dict(), path)
    return str(path)


# --------------------------------------------------------------------------- search
def _synthetic_logits(n=300, c=10, seed=0):
    """Column 0: a decent plain view; 1: a complementary view; 2-3: noise; 4: a bad view."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n,), generator=g)
    signal = torch.nn.functional.one_hot(labels, c).float() * 2.0
    cols = [signal + torch.randn(n, c, generator=g) * 1.5, signal + torch.randn(n, c, generator=g) * 1.5,
            torch.randn(n, c, generator=g), torch.randn(n, c, generator=g), -signal + torch.randn(n, c, generator=g)]
    return torch.stack(cols, 1), labels


def test_search_is_deterministic_and_never_worse_than_plain():
    from ttakit.evaluation.search import evaluate_choice

    logits, labels = _synthetic_logits()
    a = greedy_search(logits, labels, budget=4)
    b = greedy_search(logits.clone(), labels.clone(), budget=4)
    assert a == b
    assert set(a.cols) <= {0, 1} and 0 in a.cols and 1 in a.cols  # the two useful views, no noise
    chosen = evaluate_choice(logits, labels, a.cols, a.temperature)
    plain_t = greedy_search(logits[:, :1], labels, 1).temperature
    assert chosen["nll"] <= evaluate_choice(logits, labels, [0], plain_t)["nll"] + 1e-9
    assert list(a.trace) == sorted(a.trace, reverse=True)  # each step improved
    # Only bad candidates besides plain: plain alone is chosen.
    bad = torch.stack([logits[:, 0], logits[:, 4], logits[:, 2]], 1)
    assert greedy_search(bad, labels, budget=3).cols == (0,)
    t1 = greedy_search(logits, labels, budget=3, objective="top1")
    assert evaluate_choice(logits, labels, t1.cols, 1.0)["top1"] >= evaluate_choice(logits, labels, [0], 1.0)["top1"]


def test_learned_weights_and_kfold():
    logits, labels = _synthetic_logits()
    w, t = learn_weights(logits, labels, [0, 1, 4])
    assert len(w) == 3 and math.isclose(sum(w), 1.0, rel_tol=1e-6)
    assert w[2] < 0.05 < min(w[0], w[1])  # the anti-correlated view is switched off
    assert t > 0
    est = kfold_estimate(logits, labels, budget=3, folds=3)
    assert est["folds"] == 3 and len(est["views_per_fold"]) == 3
    assert est["nll"] < est["plain_nll"]  # the complementary view helps on held-out folds too
    assert est == kfold_estimate(logits, labels, budget=3, folds=3)


def test_pick_adaptive_threshold_meets_the_cost():
    logits, _ = _synthetic_logits()
    plain = logits[:, 0]
    for target in (0.2, 0.4, 0.7):
        thr = pick_adaptive_threshold(plain, 4, target)  # 4 views besides the plain one
        conf = torch.softmax(plain, -1).max(-1).values
        spent = (len(conf) + int((conf < thr).sum()) * 4) / (len(conf) * 5)
        assert spent <= target + 1e-9 and spent > target - 4 / (5 * len(conf)) - 1e-9


def test_search_cli_writes_a_usable_policy(folder, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(CLASSES))
    common = ["--model", "test_resnet", "--labels", str(labels), "--weights", _weights(tmp_path), "--workers", "0", "--quiet"]
    code = main(["search", str(folder), *common, "--pool", "identity+hflip=1+scale(1.2)", "--budget", "3",
                 "--folds", "3", "--out", str(tmp_path / "s"), "--learn-weights", "--target-cost", "0.5"])
    out = capsys.readouterr().out
    assert code == 0 and "3-fold held-out estimate" in out
    pol = create_policy(str(tmp_path / "s" / "policy.json"))
    meta = pol.meta
    # The plain view is a candidate and weights are kept only where they help: never worse than plain.
    assert meta["selection_nll"] <= meta["plain_nll"] + 1e-9
    # The adaptive threshold spends at most the target share of view-forwards on the selection data.
    logits, _, _, _ = load_logits(tmp_path / "s" / "data")
    unsure = int((torch.softmax(logits[:, 0], -1).max(-1).values < meta["adaptive"]).sum())
    others = sum(not v.is_identity for v in pol.views)
    assert "kfold" in meta and (len(logits) + unsure * others) <= 0.5 * len(logits) * (others + 1) + 1e-9
    assert main(["predict", str(folder / "cat" / "0.png"), *common[:6], "--tta", str(tmp_path / "s" / "policy.json"), "--json"]) == 0


def test_search_with_a_separate_selection_set(folder, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(CLASSES))
    code = main(["search", str(folder), "--val", str(folder), "--model", "test_resnet", "--labels", str(labels),
                 "--weights", _weights(tmp_path), "--workers", "0", "--quiet", "--pool", "identity+hflip=1",
                 "--budget", "2", "--objective", "top1", "--out", str(tmp_path / "sv")])
    assert code == 0
    assert "held-out (DATA)" in capsys.readouterr().out
    meta = create_policy(str(tmp_path / "sv" / "policy.json")).meta
    assert meta["selection"] == str(folder) and "heldout" in meta and "kfold" not in meta


def test_a_subset_of_stored_views_reuses_the_logits(tiny_lm, folder, tmp_path):
    _run(tiny_lm, folder, tmp_path / "big")  # hflip and d4: 8 views stored
    chunks = sorted((tmp_path / "big" / "logits").glob("chunk_*"))
    stamps = [c.stat().st_mtime_ns for c in chunks]
    data = detect_dataset(folder, CLASSES)
    res = evaluate(tiny_lm, data, [create_policy("hflip"), create_policy("rot90(0,2)")], out_dir=tmp_path / "big",
                   run_config=RunConfig(8, False), options=EvalOptions(batch_size=4, workers=0, quiet=True))
    assert [c.stat().st_mtime_ns for c in chunks] == stamps  # nothing recomputed
    assert list(res["results"]) == ["plain", "hflip", "rot90(0,2)"]
    assert res["results"]["rot90(0,2)"]["views"] == 2


def test_extra_row_scores_see_every_rows_merged_probabilities(tiny_lm, folder, tmp_path):
    data = detect_dataset(folder, CLASSES)
    seen = {}

    def top1_again(probs, labels):  # an extra score recomputed from what it is given
        seen.update(probs)
        return {k: {"top1_again": float((p.argmax(1) == labels).float().mean())} for k, p in probs.items()}

    res = evaluate(tiny_lm, data, [create_policy("hflip")], out_dir=tmp_path / "x", run_config=RunConfig(8, False),
                   options=EvalOptions(batch_size=4, workers=0, quiet=True), extras=[top1_again])
    assert set(seen) == {"plain", "hflip"} and seen["plain"].shape == (len(data) - 1, len(CLASSES))  # one broken file
    for row in res["results"].values():
        assert row["top1_again"] == pytest.approx(row["top1"])


def test_classification_rows_keep_the_policy_weights(tiny_lm, folder, tmp_path):
    """Every task's rows open the same way: a weighted policy's row records its weights."""
    import dataclasses

    data = detect_dataset(folder, CLASSES)
    weighted = dataclasses.replace(create_policy("hflip"), weights=(0.75, 0.25), name="hflip-w")
    opts = EvalOptions(batch_size=8, workers=0, quiet=True, limit=6)
    rows = evaluate(tiny_lm, data, [weighted], out_dir=tmp_path / "w", run_config=RunConfig(8, False),
                    options=opts)["results"]
    assert rows["hflip-w"]["weights"] == [0.75, 0.25] and "weights" not in rows["plain"]
    assert list(rows["hflip-w"])[:4] == ["merge", "views", "view_names", "weights"]


def test_evaluate_gives_the_model_back_as_given(tiny_lm, folder, tmp_path):
    """The caller's model keeps its train/eval mode, requires_grad and memory format."""
    model = tiny_lm.model.train().requires_grad_(True)
    formats = [p.is_contiguous() for p in model.parameters() if p.ndim == 4]
    data = detect_dataset(folder, CLASSES)
    opts = EvalOptions(batch_size=8, workers=0, quiet=True, limit=4)
    try:
        evaluate(tiny_lm, data, [create_policy("hflip")], out_dir=tmp_path / "m", run_config=RunConfig(8, True),
                 options=opts)
        assert model.training and all(p.requires_grad for p in model.parameters())
        assert [p.is_contiguous() for p in model.parameters() if p.ndim == 4] == formats and all(formats)
    finally:
        model.eval().requires_grad_(False)
