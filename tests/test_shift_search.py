"""``search --shifts``: views and adaptation chosen leaving one shift family out; policy files carrying adaptation."""

from __future__ import annotations

import json

import pytest
import torch

from ttakit.cli import main
from ttakit.errors import ConfigError
from ttakit.evaluation.shift_search import choose_across_families
from ttakit.evaluation.shift_streams import ShiftPlan

from test_adapt_cli import run_args  # noqa: F401  (the fixture: 9 random photos of 3 classes, a tiny model)


def _logits(labels: torch.Tensor, strength: torch.Tensor, seed: int) -> torch.Tensor:
    """Logits whose label margin is ``strength`` per photo, plus noise."""
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.one_hot(labels, 3).float() * strength[:, None] + torch.randn(len(labels), 3, generator=g)


def test_adaptation_is_chosen_when_it_helps_on_every_left_out_family():
    labels = torch.arange(120) % 3
    families = torch.arange(120) // 40  # 3 families of 40 photos
    weak, strong = torch.full((120,), 0.3), torch.full((120,), 3.0)
    plain = torch.stack([_logits(labels, weak, 0), _logits(labels, weak, 1)], 1)
    adapted = torch.stack([_logits(labels, strong, 2), _logits(labels, weak, 3)], 1)
    out = choose_across_families({"none": plain, "bn": adapted}, labels, families, "top1", budget=2)
    assert out["method"] == "bn" and out["cols"][0] == 0
    lo = out["lofo"]
    assert lo["top1"] > lo["plain_top1"] and lo["paired"]["ci_top1"][0] > 0
    assert set(lo["per_family"]) == {0, 1, 2}


def test_a_method_that_helps_one_family_only_is_not_chosen():
    labels = torch.arange(120) % 3
    families = torch.arange(120) // 40
    base = torch.full((120,), 1.5)
    plain = _logits(labels, base, 0)[:, None]
    # bn: far better on family 0, worse on families 1 and 2
    helped = torch.where(families == 0, torch.tensor(5.0), torch.tensor(-0.5))
    out = choose_across_families({"none": plain, "bn": _logits(labels, helped, 1)[:, None]}, labels, families, "top1", 1)
    assert out["method"] == "none"
    assert out["candidates"]["bn"]["top1"] < out["candidates"]["none"]["top1"]


def test_set_size_objective_is_relative_to_plain_on_each_left_out_family():
    labels = torch.arange(240) % 3
    families = torch.arange(240) % 4
    noisy = _logits(labels, torch.full((240,), 1.0), 0)
    sharp = _logits(labels, torch.full((240,), 4.0), 1)
    out = choose_across_families({"none": torch.stack([noisy, sharp], 1)}, labels, families, "set_size", 2, alpha=0.1)
    lo = out["lofo"]
    assert out["cols"][0] == 1 and lo["ratio"] < 0.9 and lo["ci_ratio"][0] <= lo["ratio"] <= lo["ci_ratio"][1]
    assert all(r["set_size"] < r["plain_set_size"] for r in lo["per_family"].values())
    with pytest.raises(ConfigError, match="alpha"):
        choose_across_families({"none": noisy[:, None]}, labels, families, "set_size", 1)
    with pytest.raises(ConfigError, match="photos in each shift family"):
        choose_across_families({"none": noisy[:12, None]}, labels[:12], families[:12], "set_size", 1, alpha=0.1)


def test_shift_plan_deals_photos_and_checks_its_fields():
    plan = ShiftPlan(families=("clean", "digital"), severities=(2, 4), limit=10)
    streams = plan.streams(100)
    assert [(f, s) for f, s, _ in streams] == [("clean", 0), ("jpeg", 2), ("jpeg", 4), ("pixelate", 2), ("pixelate", 4)]
    assert sorted(i for _, _, idx in streams for i in idx) == list(range(10))
    with pytest.raises(ConfigError, match="at least 3"):
        ShiftPlan(families=("clean", "fog"))
    with pytest.raises(ConfigError, match="adaptation candidates"):
        ShiftPlan(methods=("bn",))
    with pytest.raises(ConfigError, match="severities"):
        ShiftPlan(severities=(0,))


def test_search_shifts_prints_cost_first_and_saves_the_left_out_estimate(run_args, tmp_path, capsys):
    out = tmp_path / "search"
    argv = ["search", *run_args, "--shifts", "clean,fog,jpeg", "--pool", "identity + hflip", "--adapt-candidates",
            "none,bn", "--adapt-batch", "2", "--objective", "top1", "--budget", "2", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.index("expected cost") < printed.index("chosen policy")
    assert "adapt=bn" in printed and "in-sample" in printed and "per left-out family" in printed
    doc = json.loads((out / "policy.json").read_text())
    sh = doc["meta"]["shifts"]
    assert sh["families"] == ["clean", "fog", "jpeg"] and set(sh["candidates"]) == {"none", "bn"}
    assert set(sh["lofo"]["per_family"]) == {"clean", "fog", "jpeg"} and "ci_top1" in sh["lofo"]["paired"]
    assert (doc["meta"].get("adapt", {}).get("method", "none")) == sh["method"]
    copies = sorted((out / "shifts" / "fog-3").glob("*.jpg"))
    assert len(copies) == 3  # photos dealt in turn: 9 photos, 3 families
    cached = {p: p.stat().st_mtime_ns for p in (out / "shifts").rglob("*") if p.is_file()}
    assert main(argv) == 0  # again: copies and logits are reused, not made again
    assert {p: p.stat().st_mtime_ns for p in cached} == cached
    assert main([*argv, "--learn-weights"]) == 2  # an option that does nothing with --shifts is refused
    assert "--learn-weights does nothing with --shifts" in capsys.readouterr().err


def _policy_with_adapt(tmp_path, method: str) -> str:
    path = tmp_path / "carried.json"
    path.write_text(json.dumps({"views": ["identity", "hflip"], "meta": {"adapt": {"method": method, "batch": 3}}}))
    return str(path)


def test_evaluate_applies_the_files_adaptation_and_an_explicit_adapt_overrides_it(run_args, tmp_path, capsys):
    policy = _policy_with_adapt(tmp_path, "bn")
    out = tmp_path / "run"
    assert main(["evaluate", *run_args, "--tta", policy, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"note: adapt=bn (batch 3) from {policy}" in printed
    rows = json.loads((out / "results.json").read_text())["results"]
    assert rows[f"{policy} adapt=bn"]["adapt"] == "bn"
    from report_page import Page

    cells = Page((out / "report.html").read_text()).cells  # adapted rows in the table, paired against plain
    row = cells[f"{policy} adapt=bn"]
    assert row["top1"] == f"{rows[f'{policy} adapt=bn']['top1']:.2%}" and row["delta_top1"] not in ("", "–")
    out2 = tmp_path / "run2"
    assert main(["evaluate", *run_args, "--tta", policy, "--adapt", "auto", "--out", str(out2)]) == 0
    assert f"note: --adapt auto overrides adapt=bn from {policy}" in capsys.readouterr().out
    rows = json.loads((out2 / "results.json").read_text())["results"]
    assert f"{policy} adapt=auto" in rows and f"{policy} adapt=bn" not in rows


def test_predict_applies_the_files_adaptation(run_args, tmp_path, capsys):
    policy = _policy_with_adapt(tmp_path, "bn")
    photos = sorted(str(p) for p in (tmp_path / "data").rglob("*.png"))[:3]
    model = run_args[1:7]
    assert main(["predict", *photos, *model, "--tta", policy, "--json"]) == 0
    captured = capsys.readouterr()
    assert "note: adapt=bn (batch 3)" in captured.err
    adapted = json.loads(captured.out)["images"]
    plain_file = tmp_path / "plain.json"
    plain_file.write_text(json.dumps({"views": ["identity", "hflip"]}))
    assert main(["predict", *photos, *model, "--tta", str(plain_file), "--json"]) == 0
    unadapted = json.loads(capsys.readouterr().out)["images"]
    assert [i["tta"][0]["prob"] for i in adapted] != [i["tta"][0]["prob"] for i in unadapted]
    assert main(["predict", *photos, *model, "--tta", policy, "--adapt", "auto", "--json"]) == 0
    assert "note: --adapt auto overrides adapt=bn" in capsys.readouterr().err
