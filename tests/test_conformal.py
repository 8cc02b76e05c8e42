"""Conformal prediction sets: parity with TorchCP, the coverage guarantee, errors, evaluation."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ttakit.conformal import (
    SCORES,
    Calibration,
    calibrate,
    conformal_quantile,
    conformity_scores,
    min_calibration_size,
    prediction_sets,
)
from ttakit.errors import ConfigError, PolicyError, UnknownNameError
from ttakit.evaluation.conformal import (
    ConformalOptions,
    conformal_metrics,
    conformal_verdict,
    greedy_set_size,
    random_splits,
)


def synthetic(n: int, classes: int = 10, seed: int = 0, sharp: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities of a noisy classifier and labels drawn from them (so some sets must be large)."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(sharp * torch.randn(n, classes, generator=g), -1)
    labels = torch.multinomial(probs, 1, generator=g).squeeze(1)
    return probs, labels


# --------------------------------------------------------------------------- TorchCP parity
def torchcp_score(name: str):
    cls = pytest.importorskip("torchcp.classification")
    spec = SCORES.get(name)
    if spec.kind == "thr":
        return cls.LAC(score_type="identity")
    if spec.kind == "aps":
        return cls.APS(score_type="identity", randomized=spec.randomized)
    return cls.RAPS(score_type="identity", randomized=spec.randomized, penalty=spec.penalty, kreg=spec.kreg)


@pytest.mark.parametrize("name", SCORES.names())
@pytest.mark.parametrize("alpha", [0.1, 0.05])
def test_matches_torchcp(name, alpha):
    """Same probabilities, same random draws: TorchCP's threshold to 1e-6 and the same sets."""
    score = torchcp_score(name)  # skips where TorchCP is not installed
    from torchcp.classification.predictor import SplitPredictor

    probs, labels = synthetic(300, classes=20, seed=1)
    cal, test = probs[:200], probs[200:]
    with pytest.warns(DeprecationWarning):
        predictor = SplitPredictor(score, alpha=alpha)
    torch.manual_seed(5)  # TorchCP draws from the global generator; ours from one seeded the same
    predictor.calculate_threshold(cal, labels[:200], alpha)
    ours = calibrate(cal, labels[:200], alpha, name, generator=torch.Generator().manual_seed(5))
    assert abs(ours.threshold - float(predictor.q_hat)) <= 1e-6
    torch.manual_seed(7)
    theirs = predictor.predict_with_logits(test).bool()
    sets = prediction_sets(test, ours, generator=torch.Generator().manual_seed(7))
    assert torch.equal(sets, theirs)
    assert 0 < sets.sum() < sets.numel()  # the comparison is not trivial


def test_quantile_matches_torchcp_rank():
    """The finite-sample quantile is TorchCP's ceil((n+1)(1-alpha))-th smallest for every n."""
    common = pytest.importorskip("torchcp.utils.common")
    for n in range(min_calibration_size(0.1), 60):
        scores = torch.rand(n, generator=torch.Generator().manual_seed(n))
        assert conformal_quantile(scores, 0.1) == float(common.calculate_conformal_value(scores, 0.1))


# --------------------------------------------------------------------------- the guarantee
@pytest.mark.parametrize("name", SCORES.names())
def test_coverage_guarantee_on_fresh_data(name):
    """Over 100 independent draws the mean coverage lies in [1-a, 1-a+1/(n+1)] +/- 3 MC errors."""
    alpha, n_cal, n_test = 0.1, 100, 200
    covs = []
    for rep in range(100):
        probs, labels = synthetic(n_cal + n_test, seed=100 + rep)
        cal = calibrate(probs[:n_cal], labels[:n_cal], alpha, name, generator=torch.Generator().manual_seed(rep))
        sets = prediction_sets(probs[n_cal:], cal, generator=torch.Generator().manual_seed(10_000 + rep))
        covs.append(sets[torch.arange(n_test), labels[n_cal:]].double().mean())
    covs_t = torch.stack(covs)
    mean, err = float(covs_t.mean()), float(covs_t.std() / 10)
    assert 1 - alpha - 3 * err <= mean <= 1 - alpha + 1 / (n_cal + 1) + 3 * err


@pytest.mark.parametrize("name", ["thr", "aps", "raps_rand"])
def test_split_metrics_cover(name):
    """conformal_metrics over 100 random splits of one data set: coverage within its bounds."""
    probs, labels = synthetic(400, seed=3)
    m = conformal_metrics({"plain": probs}, labels, ConformalOptions(0.1, name, splits=100))["plain"]
    lo, hi = m["coverage_bounds"]
    assert m["n_cal"] == 200 and hi == pytest.approx(0.9 + 1 / 201)
    assert lo - 3 * m["coverage_mc_error"] <= m["coverage"] <= hi + 3 * m["coverage_mc_error"]
    assert sum(m["size_histogram"].values()) == pytest.approx(1.0)
    assert m["worst_class_coverage"] <= m["coverage"]
    assert 0 <= m["empty_rate"] <= m["size_histogram"]["0"] + 1e-12 < 1


# --------------------------------------------------------------------------- properties
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), alpha=st.sampled_from([0.05, 0.1, 0.2]), name=st.sampled_from(["thr", "aps", "raps"]))
def test_sets_shrink_as_alpha_grows(seed, alpha, name):
    probs, labels = synthetic(60, seed=seed)
    wide = prediction_sets(probs, calibrate(probs, labels, alpha / 2, name))
    narrow = prediction_sets(probs, calibrate(probs, labels, alpha, name))
    assert not (narrow & ~wide).any()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), name=st.sampled_from(["aps", "raps"]))
def test_adaptive_sets_are_top_ranked_prefixes(seed, name):
    """Fixed aps/raps sets always hold the k most probable classes for some k."""
    probs, labels = synthetic(40, seed=seed)
    sets = prediction_sets(probs, calibrate(probs, labels, 0.1, name))
    by_rank = sets.gather(1, probs.argsort(-1, descending=True)).int()
    assert torch.equal(by_rank, by_rank.cummin(-1).values)


def test_label_scores_are_the_all_class_scores_at_the_label():
    probs, labels = synthetic(50, seed=4)
    for name in ("thr", "aps", "raps"):
        all_scores = conformity_scores(probs, name)
        assert torch.allclose(conformity_scores(probs, name, labels), all_scores[torch.arange(50), labels])


# --------------------------------------------------------------------------- errors and round trip
def test_too_few_calibration_images_is_one_error():
    probs, labels = synthetic(min_calibration_size(0.05) - 1, seed=0)
    with pytest.raises(ConfigError, match="too few for alpha=0.05: need at least 19"):
        calibrate(probs, labels, 0.05)
    calibrate(*synthetic(19, seed=0), 0.05)  # one more image is enough
    with pytest.raises(ConfigError, match="alpha must be in"):
        calibrate(probs, labels, 1.0)
    with pytest.raises(UnknownNameError, match="choose one of thr, aps"):
        calibrate(probs, labels, 0.1, "apss")


def test_min_calibration_size_is_the_smallest():
    for alpha in (0.01, 0.05, 0.1, 0.2, 0.33):
        n = min_calibration_size(alpha)
        assert math.ceil((n + 1) * (1 - alpha)) <= n and math.ceil(n * (1 - alpha)) > n - 1


def test_calibration_round_trip_and_checks():
    cal = calibrate(*synthetic(100), 0.1, "aps")
    assert Calibration.from_dict(cal.to_dict()) == cal and cal.coverage == pytest.approx(0.9)
    with pytest.raises(ConfigError, match="needs alpha, score, threshold and n"):
        Calibration.from_dict({"alpha": 0.1})


# --------------------------------------------------------------------------- evaluation
def test_better_classifier_gets_smaller_sets_with_an_interval():
    probs, labels = synthetic(400, seed=5)
    sharper = torch.softmax(probs.log() * 0.5 + 3 * torch.nn.functional.one_hot(labels, 10), -1)
    rows = conformal_metrics({"plain": probs, "tta": sharper, "same": probs}, labels,
                             ConformalOptions(0.1, "aps", splits=50))
    tta, same = rows["tta"], rows["same"]
    assert tta["delta_set_size"] < 0 and tta["ci_set_size"][1] < 0 and tta["ci_rel_set_size"][1] < 0
    assert same["delta_set_size"] == 0 and same["ci_set_size"] == [0.0, 0.0]  # paired: same splits, same draws
    assert "vs plain" in conformal_verdict("tta", tta) and "delta_set_size" not in rows["plain"]


def test_splits_are_fixed_by_the_seed_and_checked():
    a = random_splits(50, ConformalOptions(splits=3, seed=1))
    b = random_splits(50, ConformalOptions(splits=3, seed=1))
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b))
    assert sorted(torch.cat(a[0]).tolist()) == list(range(50))
    with pytest.raises(ConfigError, match="needs at least 19"):
        random_splits(30, ConformalOptions(alpha=0.05))


def test_greedy_set_size_prefers_the_sharper_view():
    probs, labels = synthetic(200, seed=6)
    good = probs.log() + 2 * torch.nn.functional.one_hot(labels, 10)
    logits = torch.stack([probs.log(), good], dim=1)  # (N, U=2, C): plain, a better view
    cols, temperature, trace = greedy_set_size(logits, labels, 0.1, "aps", budget=3)
    assert cols[0] == 1 and list(trace) == sorted(trace, reverse=True)


# --------------------------------------------------------------------------- ttakit calibrate
CLASSES = ["cat", "dog", "fox"]


@pytest.fixture()
def tiny_run(tmp_path):
    """12 random photos in 3 classes and the flags of a tiny 3-class timm model."""
    import numpy as np
    import timm
    from PIL import Image

    for c, name in enumerate(CLASSES):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(4):
            rgb = np.random.default_rng(10 * c + i).integers(0, 255, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(rgb).save(tmp_path / "data" / name / f"{i}.png")
    (tmp_path / "labels.txt").write_text("\n".join(CLASSES))
    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet", num_classes=3).state_dict(), tmp_path / "w.pth")
    return tmp_path, ["--model", "test_resnet", "--labels", str(tmp_path / "labels.txt"), "--weights",
                      str(tmp_path / "w.pth"), "--workers", "0", "--quiet"]


def test_calibrate_cli_writes_the_policy_with_its_calibration(tiny_run, capsys):
    from ttakit.cli import main
    from ttakit.evaluation.classify_logits import load_logits
    from ttakit.merge import merge_logits
    from ttakit.policy import create_policy

    root, flags = tiny_run
    out = root / "calib.json"
    assert main(["calibrate", str(root / "data"), *flags, "--tta", "hflip", "--alpha", "0.2", "--score", "aps",
                 "--out", str(out)]) == 0
    assert "for 80% coverage" in capsys.readouterr().out
    pol = create_policy(str(out))
    cal = Calibration.from_dict(pol.meta["conformal"])
    assert pol.view_names == ["identity", "hflip"] and (cal.alpha, cal.score, cal.n) == (0.2, "aps", 12)
    # The same threshold from the stored logits merged by hand: nothing but the policy's merge.
    logits, labels, names, _ = load_logits(root / "calib.logits")
    probs = merge_logits(logits[:, [names.index("identity"), names.index("hflip")]], "mean")
    assert cal.threshold == pytest.approx(calibrate(probs, labels, 0.2, "aps").threshold, abs=1e-6)
    # Too few images for alpha: one line, exit status 2.
    assert main(["calibrate", str(root / "data"), *flags, "--alpha", "0.05", "--out", str(out)]) == 2
    assert "12 calibration images are too few for alpha=0.05" in capsys.readouterr().err


def test_unit_bootstrap_weights_reproduce_the_plain_splits():
    """Every image drawn once: each resample's set size is the mean over the interval splits."""
    probs, labels = synthetic(120, seed=8)
    for name in ("thr", "aps"):
        m = conformal_metrics({"plain": probs}, labels, ConformalOptions(0.1, name, splits=10),
                              counts=torch.ones(3, 120))["plain"]
        assert m["set_size_replicates"] == pytest.approx([m["set_size"]] * 3)


def test_evaluate_adds_conformal_columns_from_the_stored_logits(tiny_run):
    """evaluate(..., extras=[ConformalScorer]) adds each row's sets, paired with plain."""
    from ttakit import RunConfig, create_policy, load_model
    from ttakit.datasets import detect_dataset
    from ttakit.evaluation.conformal import ConformalScorer
    from ttakit.evaluation.evaluate import EvalOptions, evaluate

    root, _ = tiny_run
    lm = load_model("test_resnet", weights=str(root / "w.pth"), labels=root / "labels.txt", num_classes=3)
    data = detect_dataset(root / "data", CLASSES)
    res = evaluate(lm, data, [create_policy("hflip")], out_dir=root / "ev", run_config=RunConfig(8, False),
                   options=EvalOptions(batch_size=5, workers=0, quiet=True),
                   extras=[ConformalScorer(ConformalOptions(0.2, "aps", splits=20, bootstrap=50))])
    doc = json.loads((root / "ev" / "results.json").read_text())
    for key in ("plain", "hflip"):
        c = doc["results"][key]["conformal"]
        assert c["n_cal"] == 6 and c["splits"] == 20 and 1 <= c["set_size"] <= 3
        assert "set_size_replicates" not in c and c["verdict"].startswith(f"{key}: aps sets at alpha 0.2")
    assert "ci_set_size" in res["results"]["hflip"]["conformal"]


def test_evaluate_report_shows_the_conformal_sets_with_a_histogram_per_row(tiny_run):
    """The report of a conformal evaluation: its table holds results.json's numbers, one
    set-size histogram per row (a bar per non-empty size bin, with that bin's share)."""
    from report_page import Page

    from ttakit import RunConfig, create_policy, load_model
    from ttakit.datasets import detect_dataset
    from ttakit.evaluation.conformal import ConformalScorer
    from ttakit.evaluation.evaluate import EvalOptions, evaluate

    root, _ = tiny_run
    lm = load_model("test_resnet", weights=str(root / "w.pth"), labels=root / "labels.txt", num_classes=3)
    res = evaluate(lm, detect_dataset(root / "data", CLASSES), [create_policy("hflip")], out_dir=root / "ev",
                   run_config=RunConfig(8, False), options=EvalOptions(batch_size=5, workers=0, quiet=True),
                   extras=[ConformalScorer(ConformalOptions(0.2, "aps", splits=20, bootstrap=50))])
    text = (root / "ev" / "report.html").read_text(encoding="utf-8")
    doc = json.loads((root / "ev" / "results.json").read_text())
    assert res["written"] == [str(root / "ev" / "report.html")]
    assert '<h2 id="conformal">' in text and '<a href="#conformal">' in text
    assert "aps sets at alpha 0.2, scored from the stored logits over 20 random splits" in text
    assert "(6 calibration / 6 test images)" in text
    table = text.split('id="conformal-table"')[1].split("</table>")[0]
    cells = Page(table.replace("data-conformal-key=", "data-key=")).cells
    assert list(cells) == list(doc["results"]) == ["plain", "hflip"]
    for key, row in doc["results"].items():
        c = row["conformal"]
        assert cells[key]["coverage"] == f"{100 * c['coverage']:.1f}% ± {100 * c['coverage_std']:.1f}"
        assert cells[key]["set_size"] == f"{c['set_size']:.2f}"
        assert cells[key]["singleton_rate"] == f"{c['singleton_rate']:.1%}"
        assert cells[key]["empty_rate"] == f"{c['empty_rate']:.1%}"
    c = doc["results"]["hflip"]["conformal"]
    lo, hi = c["ci_set_size"]
    assert cells["hflip"]["delta_set_size"] == f"{c['delta_set_size']:+.2f}"
    assert cells["hflip"]["ci_set_size"] == f"[{lo:+.2f}, {hi:+.2f}]"
    assert cells["plain"]["delta_set_size"] == cells["plain"]["ci_set_size"] == "–"
    # One histogram per row, after the table: one bar per size bin the row's sets reached.
    sizes = text.split('class="charts conformal-sizes"')[1].split("</div>")[0]
    charts = sizes.split('<svg class="chart"')[1:]
    assert len(charts) == len(doc["results"])
    for (key, row), svg in zip(doc["results"].items(), charts):
        hist = row["conformal"]["size_histogram"]
        assert f'aria-label="{key} (mean size {row["conformal"]["set_size"]:.2f})"' in svg
        tips = [t.split("</title>")[0] for t in svg.split("<title>")[1:]]
        assert tips and len(tips) == sum(share > 0 for share in hist.values())
        for tip in tips:
            label, share = tip.removeprefix("size ").split(": ")[0], tip.split(": ")[1].split(" of test sets")[0]
            assert share == f"{hist[label]:.1%}"


def test_evaluate_cli_prints_the_conformal_table(tiny_run, capsys):
    from ttakit.cli import main

    root, flags = tiny_run
    assert main(["evaluate", str(root / "data"), *flags, "--tta", "hflip", "--conformal", "0.2",
                 "--conformal-score", "aps", "--out", str(root / "ev")]) == 0
    out = capsys.readouterr().out
    assert "conformal sets (aps, alpha 0.2; 100 random splits, 6 calibration / 6 test images)" in out
    assert "hflip: aps sets at alpha 0.2 cover" in out
    doc = json.loads((root / "ev" / "results.json").read_text())
    assert doc["results"]["hflip"]["conformal"]["size_histogram"]


def test_calibrated_policy_predicts_sets(tiny_run, capsys):
    """calib.json -> ClassificationTTA returns the sets; `ttakit predict` prints them."""
    import timm

    from ttakit import ClassificationTTA
    from ttakit.cli import main

    root, flags = tiny_run
    out = root / "calib.json"
    assert main(["calibrate", str(root / "data"), *flags, "--tta", "hflip", "--alpha", "0.2", "--out", str(out)]) == 0
    net = timm.create_model("test_resnet", num_classes=3)
    net.load_state_dict(torch.load(root / "w.pth"))
    tta = ClassificationTTA(net.eval(), str(out))
    res = tta.predict(torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    saved = json.loads(out.read_text())["meta"]["conformal"]  # the threshold as calibrate wrote it
    assert saved["score"] == "thr" and tta.conformal.threshold == saved["threshold"]
    # LAC sets by their definition: the classes whose probability is at least 1 - threshold.
    expected = res.probs.double().numpy() >= 1 - saved["threshold"] - 1e-12
    assert res.sets.shape == (16, 3) and (res.sets.numpy() == expected).all()
    assert 0 < res.sets.sum() < res.sets.numel()  # neither every class nor none: the check bites
    assert ClassificationTTA(net, "hflip").predict(torch.randn(1, 3, 64, 64)).sets is None
    capsys.readouterr()
    photo = str(root / "data" / "cat" / "0.png")
    assert main(["predict", photo, *flags[:6], "--tta", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "  set: {" in printed and "} (80% coverage)" in printed
    assert main(["predict", photo, *flags[:6], "--tta", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["conformal"] == saved | {"alpha": 0.2}
    image = doc["images"][0]
    # The printed set: the printed TTA classes whose probability is at least 1 - threshold.
    assert len(image["tta"]) == 3
    want = {c["label"] for c in image["tta"] if c["prob"] >= 1 - saved["threshold"]}
    assert {c["label"] for c in image["set"]} == want and want


@pytest.mark.parametrize("score", ["thr", "aps"])
def test_export_of_a_calibrated_policy_returns_the_sets(tmp_path, score):
    """The threshold is in the graph: onnxruntime's set mask equals ClassificationTTA's."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import timm

    from ttakit import ClassificationTTA, create_policy
    from ttakit.cli.calibrate import calibrated_policy
    from ttakit import export_tta

    torch.manual_seed(0)
    net = timm.create_model("test_resnet", num_classes=10).eval()
    x = torch.randn(6, 3, 64, 64)
    probs = ClassificationTTA(net, "hflip")(x)
    ranked = conformity_scores(probs, score).flatten().sort().values
    k = len(ranked) // 2
    threshold = float(ranked[k] + ranked[k + 1]) / 2  # half the classes in; none on the edge
    policy = calibrated_policy(create_policy("hflip"), "mean", Calibration(0.1, score, threshold, 50), "synthetic")
    path = export_tta(net, policy, tmp_path / "calib.onnx", input_size=(64, 64))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got_probs, got_sets = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    expected = ClassificationTTA(net, policy).predict(x).sets
    assert got_sets.dtype == bool and torch.equal(torch.from_numpy(got_sets), expected)
    assert 0 < expected.sum() < expected.numel()
    assert abs(got_probs - probs.numpy()).max() < 1e-4
    with pytest.raises(PolicyError, match="randomised conformal score"):
        rand = calibrated_policy(create_policy("hflip"), "mean", Calibration(0.1, "aps_rand", 0.5, 50), "synthetic")
        export_tta(net, rand, tmp_path / "rand.onnx", input_size=(64, 64))


def test_search_set_size_objective_calibrates_on_images_it_did_not_choose_on(tiny_run, capsys):
    from ttakit.cli import main
    from ttakit.evaluation.search import SearchOptions, search_policy
    from ttakit.policy import Policy, create_policy
    from ttakit.views import View

    probs, labels = synthetic(200, seed=9)
    good = probs.log() + 2 * torch.nn.functional.one_hot(labels, 10)
    logits = torch.stack([probs.log(), good], dim=1)  # (N, U=2, C): plain, a better view
    pool = Policy((View(), create_policy("hflip").views[1]))
    opts = SearchOptions(budget=2, objective="set_size", conformal=0.1, conformal_score="aps", learn_weights=True)
    pol = search_policy(pool, logits[:120], labels[:120], opts, selection=(logits[120:], labels[120:]))
    meta = pol.meta
    assert pol.view_names[0] == "hflip" and meta["chosen_on"] + meta["calibrated_on"] == 80
    assert Calibration.from_dict(meta["conformal"]).n == meta["calibrated_on"]
    assert meta["heldout"]["set_size"] < meta["heldout"]["plain"]["set_size"]
    with pytest.raises(ConfigError, match="go together"):
        SearchOptions(objective="set_size")
    root, flags = tiny_run
    assert main(["search", str(root / "data"), *flags, "--pool", "identity+hflip", "--budget", "2", "--objective",
                 "set_size", "--conformal", "0.3", "--out", str(root / "s")]) == 0
    assert "calibrated on 6 others" in capsys.readouterr().out
    assert "conformal" in create_policy(str(root / "s" / "policy.json")).meta
    assert main(["search", str(root / "data"), *flags, "--pool", "identity+hflip", "--budget", "2", "--objective",
                 "set_size", "--conformal", "0.2", "--out", str(root / "s")]) == 2
    assert "too few for a set-size search at alpha=0.2" in capsys.readouterr().err
