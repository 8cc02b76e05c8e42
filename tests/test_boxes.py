"""Box merges of ttakit.tasks.boxes, checked against ensemble_boxes 1.0.9, and their options."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from ensemble_boxes import soft_nms as eb_soft_nms
from ensemble_boxes import weighted_boxes_fusion as eb_wbf
from ensemble_boxes.ensemble_boxes_nms import cpu_soft_nms_float

import ttakit.tasks.boxes.engine as engine
from ttakit.errors import ConfigError, ShapeError, TTAKitError, UnknownNameError
from ttakit.tasks.boxes import (
    BOX_MERGES,
    CONF_TYPES,
    ConcatOptions,
    NMSOptions,
    SoftNMSOptions,
    WBFOptions,
    box_merge_options,
    box_options_for_run,
    concat,
    get_box_merge,
    list_box_merges,
    nms,
    soft_nms,
    weighted_boxes_fusion,
)

SIZE = (60, 80)  # (H, W) of the synthetic images
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# --------------------------------------------------------------------------- data
def random_detections(n: int, n_views: int, n_classes: int, seed: int, size=SIZE):
    """Boxes anywhere (some partly outside the image, some with swapped corners)."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 1.1, h * 1.1]) - 4
    wh = torch.rand(n, 2, generator=g) * torch.tensor([w / 3, h / 3]) + 0.5
    b = torch.cat([xy, xy + wh], 1)
    swap = torch.rand(n, generator=g) < 0.05
    b[swap] = b[swap][:, [2, 3, 0, 1]]
    return (b, torch.rand(n, generator=g) * 0.99 + 0.01, torch.randint(n_classes, (n,), generator=g),
            torch.randint(n_views, (n,), generator=g))


def clustered_detections(n_objects: int, n_views: int, per_view: int, n_classes: int, seed: int,
                         size=SIZE, jitter: float = 0.08):
    """Jittered boxes around a few objects, as a detector under TTA gives (10% wrong labels)."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    side = torch.exp(math.log(8) + torch.rand(n_objects, generator=g, dtype=torch.float64) * math.log(5))
    centre = torch.rand(n_objects, 2, generator=g, dtype=torch.float64) * torch.tensor([w, h])
    obj = torch.cat([centre - side[:, None] / 2, centre + side[:, None] / 2], 1)  # (O, 4)
    cls = torch.randint(n_classes, (n_objects,), generator=g)
    out = []
    for v in range(n_views):
        noise = torch.randn(n_objects, per_view, 4, generator=g, dtype=torch.float64)
        b = obj[:, None] + noise * jitter * side[:, None, None]
        s = torch.rand(n_objects, generator=g)[:, None] * 0.5 + torch.rand(n_objects, per_view, generator=g) * 0.45
        s = s + 0.05
        lab = cls[:, None].repeat(1, per_view)
        wrong = torch.rand(n_objects, per_view, generator=g) < 0.1
        lab[wrong] = torch.randint(n_classes, (int(wrong.sum()),), generator=g)
        out.append((b.reshape(-1, 4), s.reshape(-1), lab.reshape(-1), torch.full((n_objects * per_view,), v)))
    b, s, lab, v = (torch.cat(x) for x in zip(*out))
    b = torch.cat([torch.minimum(b[:, :2], b[:, 2:]), torch.maximum(b[:, :2], b[:, 2:])], 1)
    return b.float(), s.float(), lab, v


def per_view_lists(boxes, scores, labels, view_ids, n_views, size=SIZE):
    """ensemble_boxes' input: per-view numpy arrays, coordinates divided by the image size."""
    h, w = size
    scale = torch.tensor([w, h, w, h], dtype=torch.float64)
    sel = [view_ids == v for v in range(n_views)]
    return ([(boxes[m].double() / scale).numpy() for m in sel], [scores[m].double().numpy() for m in sel],
            [labels[m].numpy() for m in sel])


def canonical(b, s, lab):
    """Rows sorted by descending score, then x1 (a total order for distinct clusters)."""
    b, s, lab = (np.asarray(x, dtype=np.float64) for x in (b, s, lab))
    o = np.lexsort((b[:, 0], -s)) if len(s) else np.zeros(0, dtype=int)
    return b[o], s[o], lab[o]


def assert_same(ours, theirs, atol, size=SIZE):
    h, w = size
    ob = ours[0].detach().cpu().double() / torch.tensor([w, h, w, h], dtype=torch.float64)
    o = canonical(ob.numpy(), ours[1].cpu().numpy(), ours[2].cpu().numpy())
    t = canonical(*theirs)
    assert len(o[1]) == len(t[1]), f"{len(o[1])} merged boxes vs {len(t[1])} from ensemble_boxes"
    for a, b, what in zip(o, t, ("boxes", "scores", "labels")):
        np.testing.assert_allclose(a, b, rtol=0, atol=atol, err_msg=what)


def run_eb(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ensemble_boxes warns about every clipped box
        return fn(*args, **kwargs)


# --------------------------------------------------------------------------- WBF parity
@pytest.mark.parametrize("conf_type", CONF_TYPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_wbf_matches_ensemble_boxes_random(conf_type, seed):
    b, s, lab, v = random_detections(150, 4, 3, seed)
    weights = [1.0, 2.0, 0.5, 1.5] if seed else None
    thr = (0.55, 0.3)[seed]  # 0.3 takes the path for thresholds below 1/2
    ours = weighted_boxes_fusion(b, s, lab, v, 4, weights, iou_threshold=thr, conf_type=conf_type, image_size=SIZE)
    theirs = run_eb(eb_wbf, *per_view_lists(b, s, lab, v, 4), weights=weights, iou_thr=thr, conf_type=conf_type)
    assert_same(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("conf_type", CONF_TYPES)
def test_wbf_matches_ensemble_boxes_clustered(conf_type):
    b, s, lab, v = clustered_detections(n_objects=12, n_views=5, per_view=6, n_classes=3, seed=3)
    weights = [0.5, 1.0, 1.5, 2.0, 1.0]
    ours = weighted_boxes_fusion(b, s, lab, v, 5, weights, conf_type=conf_type, image_size=SIZE)
    theirs = run_eb(eb_wbf, *per_view_lists(b, s, lab, v, 5), weights=weights, conf_type=conf_type)
    assert_same(ours, theirs, atol=1e-5)
    assert len(ours[0]) < len(b) / 3  # clusters really formed


@pytest.mark.parametrize(("thr", "skip", "overflow"), [(0.7, 0.3, False), (0.45, 0.0, True)])
def test_wbf_options_match(thr, skip, overflow):
    b, s, lab, v = clustered_detections(n_objects=10, n_views=4, per_view=5, n_classes=2, seed=4)
    ours = weighted_boxes_fusion(b, s, lab, v, 4, iou_threshold=thr, skip_threshold=skip,
                                 allows_overflow=overflow, image_size=SIZE)
    theirs = run_eb(eb_wbf, *per_view_lists(b, s, lab, v, 4), iou_thr=thr, skip_box_thr=skip,
                    allows_overflow=overflow)
    assert_same(ours, theirs, atol=1e-5)
    if overflow:
        assert float(ours[1].max()) > 1.0  # more boxes than views in a cluster


def test_wbf_dense_scene_merges_groups_and_matches(monkeypatch):
    """One class, crowded: first-guess groups interact, so they are merged and clustered again."""
    calls = []
    real = engine._cluster_groups
    monkeypatch.setattr(engine, "_cluster_groups", lambda *a: calls.append(1) or real(*a))
    b, s, lab, v = clustered_detections(n_objects=20, n_views=5, per_view=6, n_classes=1, seed=7,
                                        size=(40, 50), jitter=0.12)
    ours = weighted_boxes_fusion(b, s, lab, v, 5, conf_type="box_and_model_avg", image_size=(40, 50))
    theirs = run_eb(eb_wbf, *per_view_lists(b, s, lab, v, 5, size=(40, 50)), conf_type="box_and_model_avg")
    assert len(calls) >= 2  # the merge path ran
    assert_same(ours, theirs, atol=1e-5, size=(40, 50))


def test_wbf_small_boxes_inside_a_large_one():
    """A large box around a grid of small ones (low IoU with it): 31 clusters side by side."""
    g = torch.Generator().manual_seed(8)
    xs, ys = torch.meshgrid(torch.arange(6) * 13.0 + 1, torch.arange(5) * 11.0 + 1, indexing="ij")
    small = torch.stack([xs, ys, xs + 10, ys + 8], -1).reshape(-1, 4)
    b = torch.cat([torch.tensor([[0.0, 0.0, 79.0, 59.0]]), small, small + torch.rand(30, 4, generator=g) * 0.8])
    s = torch.cat([torch.tensor([0.99]), torch.rand(60, generator=g) * 0.9])
    lab, v = torch.zeros(61, dtype=torch.int64), torch.arange(61) % 2
    ours = weighted_boxes_fusion(b, s, lab, v, 2, image_size=SIZE)
    theirs = run_eb(eb_wbf, *per_view_lists(b, s, lab, v, 2))
    assert_same(ours, theirs, atol=1e-5)
    assert len(ours[0]) == 31


def test_wbf_bit_exact_in_float64():
    """Normalised float64 input: same float32 rounding of fused boxes as ensemble_boxes, bit for bit."""
    b, s, lab, v = clustered_detections(n_objects=10, n_views=4, per_view=5, n_classes=2, seed=5)
    b = (b.double() / torch.tensor([SIZE[1], SIZE[0], SIZE[1], SIZE[0]])).clamp(0, 1)
    ours = weighted_boxes_fusion(b, s.double(), lab, v, 4, [1.0, 0.7, 1.3, 0.9])
    theirs = run_eb(eb_wbf, *per_view_lists(b, s, lab, v, 4, size=(1, 1)), weights=[1.0, 0.7, 1.3, 0.9])
    # ensemble_boxes' float32 rounding follows NumPy 2's promotion rules (NEP 50); under NumPy 1's
    # value-based casting its own results move by up to one float32 ulp.
    exact = np.lib.NumpyVersion(np.__version__) >= "2.0.0"
    assert_same(ours, theirs, atol=0.0 if exact else 1.2e-7, size=(1, 1))


# --------------------------------------------------------------------------- WBF behaviour
@pytest.mark.parametrize("device", DEVICES)
def test_empty_inputs(device):
    e4, e = torch.zeros(0, 4, device=device), torch.zeros(0, device=device)
    ei = torch.zeros(0, dtype=torch.int64, device=device)
    for name in list_box_merges():
        b, s, lab = get_box_merge(name)(e4, e, ei, ei, 3, None)
        assert b.shape == (0, 4) and s.shape == (0,) and lab.shape == (0,), name
        assert b.dtype == torch.float32 and lab.dtype == torch.int64 and b.device.type == device, name


def test_all_boxes_skipped_gives_empty():
    b, s, lab, v = random_detections(20, 2, 2, 0)
    out = weighted_boxes_fusion(b, s * 0.1, lab, v, 2, skip_threshold=0.5)
    assert out[0].shape == (0, 4)


@pytest.mark.parametrize("device", DEVICES)
def test_single_box(device):
    box = torch.tensor([[10.0, 20.0, 30.0, 50.0]], device=device)
    one = torch.tensor([0.8], device=device), torch.tensor([4], device=device), torch.tensor([1], device=device)
    b, s, lab = weighted_boxes_fusion(box, *one, n_views=2)
    assert torch.equal(b, box) and torch.equal(lab.cpu(), torch.tensor([4]))
    assert s.item() == pytest.approx(0.8 * 1 / 2)  # avg: score * min(V, 1) / V
    b, s, lab = weighted_boxes_fusion(box, *one, n_views=2, conf_type="max")
    assert s.item() == pytest.approx(0.8)


def test_overlapping_boxes_of_different_labels_never_merge():
    box = torch.tensor([[10.0, 10.0, 40.0, 40.0]] * 4)
    scores, labels, views = torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([0, 1, 0, 2]), torch.tensor([0, 1, 1, 0])
    for name in ("wbf", "nms", "soft_nms"):
        b, s, lab = get_box_merge(name)(box, scores, labels, views, 2, None)
        assert sorted(lab.tolist()) == [0, 1, 2], name  # one per label: only the two 0s merged
    b, s, lab = soft_nms(box, scores, labels)  # the second 0 (IoU 1) decays to 0; others untouched
    assert s.tolist() == pytest.approx([0.9, 0.8, 0.6]) and lab.tolist() == [0, 1, 2]


def test_view_weights_pull_the_fused_box():
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0], [2.0, 0.0, 12.0, 10.0]])
    s, lab, v = torch.tensor([0.5, 0.5]), torch.tensor([0, 0]), torch.tensor([0, 1])
    even = weighted_boxes_fusion(box, s, lab, v, 2)
    heavy = weighted_boxes_fusion(box, s, lab, v, 2, weights=[3.0, 1.0])
    assert even[0][0, 0].item() == pytest.approx(1.0)  # plain mean
    assert heavy[0][0, 0].item() == pytest.approx(0.5)  # (3 * 0 + 1 * 2) / 4
    assert heavy[1].item() == pytest.approx((1.5 + 0.5) / 2 * 2 / 4)  # mean weighted score * min(V, n) / sum(w)


def test_wbf_without_image_size_keeps_pixels():
    box = torch.tensor([[-5.0, 10.0, 200.0, 90.0], [-4.0, 10.0, 201.0, 90.0]])
    b, s, lab = weighted_boxes_fusion(box, torch.tensor([0.5, 0.5]), torch.tensor([0, 0]), torch.tensor([0, 1]), 2)
    assert b.tolist() == [[-4.5, 10.0, 200.5, 90.0]]  # nothing clipped
    b, _, _ = weighted_boxes_fusion(box, torch.tensor([0.5, 0.5]), torch.tensor([0, 0]), torch.tensor([0, 1]), 2,
                                    image_size=(100, 100))
    assert b.tolist() == [[0.0, 10.0, 100.0, 90.0]]


@pytest.mark.parametrize("device", DEVICES)
def test_wbf_on_device_matches_cpu(device):
    b, s, lab, v = clustered_detections(n_objects=8, n_views=3, per_view=4, n_classes=2, seed=9)
    ref = weighted_boxes_fusion(b, s, lab, v, 3, image_size=SIZE)
    out = weighted_boxes_fusion(b.to(device), s.to(device), lab.to(device), v.to(device), 3, image_size=SIZE)
    assert out[0].device.type == device
    for a, r in zip(out, ref):
        torch.testing.assert_close(a.cpu(), r, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- NMS and soft-NMS parity
def per_label_reference(b, s, lab, method: int, thr: float, thresh: float, sigma: float = 0.5):
    """ensemble_boxes' own NMS / soft-NMS loop (``cpu_soft_nms_float``; its numba NMS is slow to
    compile), label by label, on boxes inside the image. Returns kept boxes, decayed scores, labels."""
    h, w = SIZE
    norm = (b.double() / torch.tensor([w, h, w, h])).numpy()
    out_b, out_s, out_l = [], [], []
    for label in np.unique(lab.numpy()):
        m = lab.numpy() == label
        sc = s.double().numpy()[m].copy()
        keep = cpu_soft_nms_float(norm[m].copy(), sc, Nt=thr, sigma=sigma, thresh=thresh, method=method)
        out_b.append(norm[m][keep]), out_s.append(sc[sc > thresh]), out_l.append(np.full(len(keep), label))
    return np.concatenate(out_b), np.concatenate(out_s), np.concatenate(out_l)


def inside_image(b):
    return torch.minimum(b.clamp(min=1.0), torch.tensor([SIZE[1], SIZE[0], SIZE[1], SIZE[0]]) - 1.0)


def test_nms_matches_ensemble_boxes():
    b, s, lab, v = clustered_detections(n_objects=10, n_views=3, per_view=5, n_classes=3, seed=11)
    b = inside_image(b)
    weights = torch.tensor([2.0, 1.0, 1.0])
    ours = get_box_merge("nms")(b, s, lab, v, 3, weights, NMSOptions(iou_threshold=0.5), image_size=SIZE)
    # method 3 is ensemble_boxes' hard NMS; weights scale scores by w / w.sum() there too
    theirs = per_label_reference(b, s * weights[v] / weights.sum(), lab, method=3, thr=0.5, thresh=0.0)
    assert_same(ours, theirs, atol=1e-6)
    assert 0 < len(ours[0]) < len(b) / 2


@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_soft_nms_matches_ensemble_boxes(method):
    b, s, lab, v = clustered_detections(n_objects=8, n_views=3, per_view=4, n_classes=2, seed=12)
    b = inside_image(b)  # nothing to clip: ensemble_boxes' inner loop sees the same boxes
    code = {"linear": 1, "gaussian": 2}[method]
    kw = dict(iou_threshold=0.3, sigma=0.5, method=method, score_threshold=0.05, image_size=SIZE)
    # ensemble_boxes returns the kept boxes' original scores
    original = soft_nms(b, s, lab, rescore=False, **kw)
    theirs = run_eb(eb_soft_nms, *per_view_lists(b, s, lab, v, 3), method=code, iou_thr=0.3, sigma=0.5, thresh=0.05)
    assert_same(original, theirs, atol=1e-6)
    # the decayed scores, read from ensemble_boxes' own soft-NMS loop
    ours = soft_nms(b, s, lab, **kw)
    assert_same(ours, per_label_reference(b, s, lab, method=code, thr=0.3, thresh=0.05), atol=1e-6)
    assert ours[1].sum() < original[1].sum() - 0.1  # scores really decayed
    assert len(ours[0]) < len(b)  # some boxes decayed below the threshold


def test_soft_nms_with_view_weights_matches_ensemble_boxes():
    b, s, lab, v = random_detections(60, 2, 2, 13)
    b = b.clamp(min=0).clamp(max=torch.tensor([SIZE[1], SIZE[0], SIZE[1], SIZE[0]], dtype=torch.float32))
    opts = SoftNMSOptions(method="gaussian", rescore=False)
    ours = get_box_merge("soft_nms")(b, s, lab, v, 2, [1.0, 3.0], opts, image_size=SIZE)
    theirs = run_eb(eb_soft_nms, *per_view_lists(b, s, lab, v, 2), method=2, iou_thr=0.3, weights=[1.0, 3.0])
    assert_same(ours, theirs, atol=1e-6)


def test_soft_nms_linear_decay_by_hand():
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0], [0.0, 0.0, 10.0, 1.0]])
    b, s, lab = soft_nms(box, torch.tensor([0.9, 0.8, 0.7]), torch.zeros(3, dtype=torch.int64), iou_threshold=0.3)
    # box 2 (IoU 0.5 with box 1) -> 0.8 * 0.5; box 3: IoU 0.1 with box 1, 0.2 with box 2: untouched
    assert s.tolist() == pytest.approx([0.9, 0.7, 0.4])


def test_concat_keeps_every_box_sorted():
    b, s, lab, v = random_detections(30, 3, 4, 14)
    out = get_box_merge("concat")(b, s, lab, v, 3, None)
    assert len(out[0]) == 30 and (out[1][:-1] >= out[1][1:]).all()
    assert sorted(out[1].tolist()) == sorted(s.tolist())
    weighted = get_box_merge("concat")(b, s, lab, v, 3, [1.0, 1.0, 2.0])
    assert weighted[1].sum().item() == pytest.approx((s * torch.tensor([1.0, 1.0, 2.0])[v] / 4).sum().item(), rel=1e-5)
    assert torch.equal(concat(b, s, lab)[0], out[0])
    with_options = get_box_merge("concat")(b, s, lab, v, 3, None, ConcatOptions())
    assert all(torch.equal(x, y) for x, y in zip(with_options, out))


# --------------------------------------------------------------------------- registry and errors
def test_registry_names_and_unknown_name():
    assert list(BOX_MERGES) == list_box_merges() == ["wbf", "nms", "soft_nms", "concat"]  # the default first
    with pytest.raises(UnknownNameError, match="did you mean 'wbf'.*choose one of wbf, nms, soft_nms, concat") as err:
        get_box_merge("wfb")
    assert isinstance(err.value, TTAKitError) and err.value.known == list_box_merges()


def test_registry_passes_options():
    b, s, lab, v = clustered_detections(n_objects=6, n_views=3, per_view=3, n_classes=2, seed=15)
    loose = get_box_merge("wbf")(b, s, lab, v, 3, None, WBFOptions(iou_threshold=0.3))
    tight = get_box_merge("wbf")(b, s, lab, v, 3, None, WBFOptions(iou_threshold=0.8))
    assert len(loose[0]) < len(tight[0])
    assert all(torch.equal(x, y) for x, y in zip(get_box_merge("wbf")(b, s, lab, v, 3),
                                                  weighted_boxes_fusion(b, s, lab, v, 3)))  # defaults
    with pytest.raises(ConfigError, match="box merge 'nms' takes NMSOptions, got WBFOptions"):
        get_box_merge("nms")(b, s, lab, v, 3, None, WBFOptions())


# --------------------------------------------------------------------------- options
def test_each_merge_has_its_options_dataclass_and_the_functions_share_its_defaults():
    for name, entry in BOX_MERGES.items():
        assert entry.options_type.merge == name
    assert WBFOptions.keys() == ("iou_threshold", "skip_threshold", "conf_type", "allows_overflow")
    assert SoftNMSOptions.keys() == ("iou_threshold", "sigma", "method", "score_threshold", "rescore")
    assert NMSOptions.keys() == ("iou_threshold",) and ConcatOptions.keys() == ()
    with pytest.raises(AttributeError):
        WBFOptions().iou_threshold = 0.1  # frozen
    assert NMSOptions(1).iou_threshold == 1.0 and isinstance(NMSOptions(1).iou_threshold, float)


@pytest.mark.parametrize(("cls", "kwargs", "message"), [
    (WBFOptions, {"iou_threshold": 1.5}, "iou_threshold must be a number in \\[0, 1\\], got 1.5"),
    (WBFOptions, {"skip_threshold": -0.1}, "skip_threshold must be a number in \\[0, 1\\]"),
    (WBFOptions, {"conf_type": "mean"}, "conf_type must be one of avg, max, box_and_model_avg, absent_model_aware_avg"),
    (WBFOptions, {"allows_overflow": "yes"}, "allows_overflow must be true or false"),
    (NMSOptions, {"iou_threshold": "0.5"}, "iou_threshold must be a number"),
    (NMSOptions, {"iou_threshold": True}, "iou_threshold must be a number"),
    (SoftNMSOptions, {"sigma": 0}, "sigma must be a number > 0, got 0"),
    (SoftNMSOptions, {"method": "cubic"}, "method must be one of linear, gaussian, got 'cubic'"),
    (SoftNMSOptions, {"score_threshold": 2}, "score_threshold must be a number in"),
    (SoftNMSOptions, {"rescore": 1}, "rescore must be true or false"),
])
def test_bad_option_values_fail_at_construction(cls, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        cls(**kwargs)


def test_options_from_a_mapping_generic_and_per_merge_keys():
    given = {"iou_threshold": 0.6, "skip_threshold": 0.1, "soft_nms.sigma": 0.2, "wbf.iou_threshold": 0.7}
    opts = box_options_for_run(["wbf", "nms", "soft_nms", "concat"], given)
    assert opts == {"wbf": WBFOptions(iou_threshold=0.7, skip_threshold=0.1),  # MERGE.KEY wins over KEY
                    "nms": NMSOptions(iou_threshold=0.6),
                    "soft_nms": SoftNMSOptions(iou_threshold=0.6, sigma=0.2),
                    "concat": ConcatOptions()}  # concat in a run with options: no options, no error
    assert box_merge_options("soft_nms", {"method": "gaussian"}) == SoftNMSOptions(method="gaussian")
    assert box_merge_options("concat", {}) == box_merge_options("concat", None) == ConcatOptions()
    assert box_merge_options("nms", NMSOptions(0.3)) == NMSOptions(0.3)


@pytest.mark.parametrize(("merges", "given", "message"), [
    (["wbf", "nms"], {"iou_treshold": 0.5},
     "^no box merge of this run \\(wbf, nms\\) has an option 'iou_treshold'; "
     "accepted keys: iou_threshold, skip_threshold, conf_type, allows_overflow$"),
    (["nms"], {"sigma": 0.5}, "^box merge 'nms' has no option 'sigma'; accepted keys: iou_threshold$"),
    (["concat"], {"iou_threshold": 0.5}, "^box merge 'concat' has no option 'iou_threshold'; concat takes no options$"),
    (["wbf", "nms"], {"wbf.sigma": 0.5},
     "^box merge 'wbf' has no option 'sigma'; accepted keys: iou_threshold, skip_threshold, conf_type, allows_overflow$"),
    (["wbf"], {"nms.iou_threshold": 0.5}, "^box option 'nms.iou_threshold' is for 'nms', which this run does not use"),
    (["wbf", "soft_nms"], {"soft_nms.iou_threshold": 1.2}, "^box merge 'soft_nms': iou_threshold must be a number in"),
])
def test_an_option_no_merge_of_the_run_takes_is_one_line_naming_the_accepted_keys(merges, given, message):
    with pytest.raises(ConfigError, match=message) as err:
        box_options_for_run(merges, given)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="^box options \\(iou_threshold\\) given, but this run merges no boxes$"):
        box_options_for_run([], {"iou_threshold": 0.5})
    assert box_options_for_run([], {}) == {}
    with pytest.raises(UnknownNameError, match="unknown box merge 'wfb'"):
        box_options_for_run(["wbf"], {"wfb.iou_threshold": 0.5})
    with pytest.raises(ConfigError, match="box merge 'wbf' takes WBFOptions, got NMSOptions"):
        box_merge_options("wbf", NMSOptions())


def test_bad_inputs_raise():
    b, s, lab, v = random_detections(5, 2, 2, 16)
    with pytest.raises(ShapeError):
        weighted_boxes_fusion(b[:, :3], s, lab, v, 2)
    with pytest.raises(ShapeError):
        nms(b, s[:4], lab)
    with pytest.raises(ShapeError):
        weighted_boxes_fusion(b, s, lab, v, 2, weights=[1.0, 1.0, 1.0])
    with pytest.raises(ConfigError, match="conf_type must be one of"):
        weighted_boxes_fusion(b, s, lab, v, 2, conf_type="mean")
    with pytest.raises(ConfigError, match="method must be one of linear, gaussian"):
        soft_nms(b, s, lab, method="cubic")
    with pytest.raises(ConfigError, match="view_ids must be in \\[0, 2\\)"):
        weighted_boxes_fusion(b, s, lab, v + 5, 2)
    with pytest.raises(ConfigError, match="iou_threshold must be a number in"):
        weighted_boxes_fusion(b, s, lab, v, 2, iou_threshold=1.5)
    with pytest.raises(ConfigError, match="iou_threshold must be a number in"):
        nms(b, s, lab, iou_threshold=-0.5)
