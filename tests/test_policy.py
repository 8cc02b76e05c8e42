"""Presets, policy text, JSON files and the factory."""

from __future__ import annotations

import json

import pytest

from ttakit import PolicyError, create_policy, list_presets, load_policy, parse_policy, save_policy
from ttakit.policy import Policy, parse_view, product, register_preset, union
from ttakit.transforms import HFlip, Rot90, Scale
from ttakit.views import View


@pytest.mark.parametrize(
    "text,count",
    [("none", 1), ("hflip", 2), ("vflip", 2), ("flip", 4), ("d4", 8), ("five_crop", 5), ("ten_crop", 10), ("multiscale", 3)],
)
def test_presets_have_the_documented_size(text, count):
    views = parse_policy(text)
    assert len(views) == count
    assert len({v.name for v in views}) == count  # no duplicates


CFG_224 = {"input_size": (3, 224, 224), "crop_pct": 0.875, "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.5,) * 3}


def test_every_preset_is_listed_and_parses():
    import ttakit.policy

    for name, text in list_presets().items():
        resolved = ttakit.policy.PRESETS.get(name).resolve(name, CFG_224)
        assert parse_policy(name, CFG_224) == parse_policy(resolved)
        assert text == resolved or text.startswith("<")  # model-dependent presets are described


def test_input_stage_text_names_and_json(tmp_path):
    from ttakit.stages import Input

    views = parse_policy("hflip*input(224:1.0,256:1.0)")
    assert [v.name for v in views] == ["input=224:1", "input=256:1", "input=224:1|hflip", "input=256:1|hflip"]
    assert views[3].source == Input(256, 1.0) and views[3].transforms == (HFlip(),)
    one = parse_policy("input=288:1.0|hflip")  # '|' chains: one mirrored view, not the hflip preset
    assert len(one) == 1 and one[0].name == "input=288:1|hflip"
    assert parse_policy("hflip|input=288:1.0") == one  # the input stage always runs first
    assert parse_view("input=224:0.875:tl|hflip").source == Input(224, 0.875, "tl")
    for v in views + one:
        assert parse_view(v.name) == v
    pol = Policy(views, weights=(1, 1, 2, 2), merge="sum")
    assert load_policy(save_policy(pol, tmp_path / "p.json")).views == views
    with pytest.raises(PolicyError, match="one input stage"):
        parse_policy("input=224:1.0|input=256:1.0")
    with pytest.raises(PolicyError, match="crop_pct"):
        parse_policy("input=224:1.5")
    with pytest.raises(PolicyError, match="SIZE:CROP_PCT"):
        parse_policy("input=224:1:tl:x")


def test_model_dependent_presets():
    assert [v.name for v in parse_policy("fixres", CFG_224)] == ["identity", "input=256:1"]
    test_size = {**CFG_224, "test_input_size": (3, 288, 288)}  # timm's own larger test size wins
    assert [v.name for v in parse_policy("fixres", test_size)] == ["identity", "input=288:1"]
    with pytest.raises(PolicyError, match="depends on the model's input size"):
        parse_policy("fixres")
    tut = create_policy("tutorial")
    assert tut.merge == "sum" and tut.view_names == ["identity", "input=256:1|hflip"]
    assert create_policy("hflip*tutorial").merge is None  # a composed preset does not impose its merge
    pool = parse_policy("search_pool", CFG_224)
    assert len(pool) == len(set(v.name for v in pool)) and pool[0].is_identity
    assert {"input=224:1", "input=320:1|hflip", "input=224:0.875:br", "brightness=1.2"} <= {v.name for v in pool}


def test_product_order_and_names():
    names = [v.name for v in parse_policy("hflip*scale(0.9,1,1.1)")]
    assert names == ["scale=0.9", "identity", "scale=1.1", "hflip|scale=0.9", "hflip", "hflip|scale=1.1"]


def test_union_drops_repeats_and_keeps_order():
    assert [v.name for v in parse_policy("hflip + flip")] == ["identity", "hflip", "vflip", "hflip|vflip"]


def test_parentheses_pipe_and_single_views():
    assert [v.name for v in parse_policy("(hflip + vflip=1) * resize(288)")] == ["resize=288", "hflip|resize=288", "vflip|resize=288"]
    assert parse_policy("hflip=1|scale=0.9") == (View((HFlip(), Scale(0.9))),)
    assert parse_policy("rot90(1,3)") == (View((Rot90(1),)), View((Rot90(3),)))


def test_crop_families():
    names = [v.name for v in parse_policy("five_crop(192)")]
    assert names == ["crop=center:192", "crop=tl:192", "crop=tr:192", "crop=bl:192", "crop=br:192"]
    assert [v.name for v in parse_policy("ten_crop(160x192)")][5] == "hflip|crop=center:160x192"


def test_d4_matches_ttach_order():
    # ttach's d4: HorizontalFlip x Rotate90([0, 90, 180, 270]), flip applied first.
    assert [v.name for v in parse_policy("d4")][:5] == ["identity", "rot90=1", "rot90=2", "rot90=3", "hflip"]


@pytest.mark.parametrize(
    "text,match",
    [
        ("", "empty"),
        ("hflip*", "expected"),
        ("scale(0.9,", "expected"),
        ("scale(0.9 1)", "expected ',' or"),
        ("bogus", "unknown preset 'bogus'; choose one of none, hflip"),
        ("tutorail", "did you mean 'tutorial'"),
        ("bogus(1)", "unknown transform 'bogus'"),
        ("hflip*scale", "'scale' needs a value"),
        ("input", "'input' needs a value"),
        ("scale(abc)", "scale expects a number"),
        ("rot90(1.5)", "rot90 expects an integer"),
        ("(hflip", r"expected '\)'"),
        ("hflip)", r"unexpected '\)'"),
        ("shift(3)", "shift expects DX:DY"),
        ("crop=middle:10", "crop position"),
        ("scale(-1)", "positive"),
        ("five_crop(1,2)", "one size"),
    ],
)
def test_malformed_text_raises_policy_error(text, match):
    with pytest.raises(PolicyError, match=match):
        create_policy(text)


def test_json_round_trip(tmp_path):
    pol = Policy(parse_policy("hflip*scale(1,1.2)") + (View((HFlip(),)),), weights=(1, 2, 3, 4, 0.5), merge="gmean",
                 temperature=1.3, name="mine", meta={"how": "test"})
    path = save_policy(pol, tmp_path / "p.json")
    back = create_policy(str(path))
    assert back == pol  # views (with the repeated one), weights, merge, temperature, name
    assert back.meta == {"how": "test"}
    assert json.loads(path.read_text())["views"][-1] == "hflip"


def test_json_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PolicyError, match="not valid JSON"):
        load_policy(bad)
    bad.write_text(json.dumps({"views": ["hflip", 3]}))
    with pytest.raises(PolicyError, match="each view is a name"):
        load_policy(bad)
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy(tmp_path / "missing.json")
    bad.write_text(json.dumps({"views": ["hflip"], "weights": [1, 2]}))
    with pytest.raises(PolicyError, match="1 views but 2 weights"):
        load_policy(bad)


def test_factory_accepts_objects_and_combinators():
    views = product(parse_policy("hflip"), parse_policy("rot90(0,2)"))
    assert create_policy(list(views)).view_names == ["identity", "rot90=2", "hflip", "hflip|rot90=2"]
    assert create_policy(View((HFlip(),))).view_names == ["hflip"]
    assert union(parse_policy("hflip"), parse_policy("hflip")) == parse_policy("hflip")
    assert parse_view("identity") == View()
    with pytest.raises(PolicyError):
        create_policy(42)  # type: ignore[arg-type]


def test_register_preset():
    import ttakit.policy

    register_preset("test_zoom_pair", "scale(1,1.15)")
    try:
        assert [v.name for v in parse_policy("hflip*test_zoom_pair")][-1] == "hflip|scale=1.15"
        with pytest.raises(ValueError, match="already registered"):
            register_preset("test_zoom_pair", "hflip")
    finally:
        ttakit.policy.PRESETS.remove("test_zoom_pair")
    assert "test_zoom_pair" not in list_presets()
    with pytest.raises(PolicyError):
        register_preset("Bad Name", "hflip")
