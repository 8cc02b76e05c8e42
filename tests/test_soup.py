"""Model soups: exact averaging arithmetic, the greedy rule, every mismatch error, real ingredients."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import load_file

from ttakit import WeightsError, greedy_soup, load_model, uniform_soup
from ttakit.cli import main
from ttakit.soup import accuracy_scorer, finetune_head, save_state_dict


def _sd(w, b, n=3, dtype=torch.float32):
    return {"w": torch.tensor(w, dtype=dtype), "b": torch.tensor(b, dtype=dtype), "bn.num_batches_tracked": torch.tensor(n)}


def test_uniform_soup_arithmetic_is_exact():
    soup = uniform_soup([_sd([1.0, 2.0], [0.5], 3), _sd([3.0, 6.0], [1.5], 7), _sd([5.0, 1.0], [1.0], 5)])
    assert torch.equal(soup["w"], torch.tensor([3.0, 3.0]))
    assert torch.equal(soup["b"], torch.tensor([1.0]))
    assert soup["bn.num_batches_tracked"].item() == 7  # counters: the largest, not an average
    assert soup["w"].dtype == torch.float32
    half = uniform_soup([_sd([1.0], [0.0], dtype=torch.float16), _sd([2.0], [0.0], dtype=torch.float16)])
    assert half["w"].dtype == torch.float16 and half["w"].item() == 1.5  # summed in float64, cast back
    assert torch.equal(uniform_soup([_sd([1.0, 2.0], [0.5])])["w"], torch.tensor([1.0, 2.0]))


def test_soup_from_files_all_formats(tmp_path):
    a, b = _sd([1.0, 2.0], [0.0]), _sd([3.0, 4.0], [2.0])
    torch.save({"state_dict": a}, tmp_path / "a.pth")
    save_state_dict(b, tmp_path / "b.safetensors")
    soup = uniform_soup([tmp_path / "a.pth", str(tmp_path / "b.safetensors")])
    assert torch.equal(soup["w"], torch.tensor([2.0, 3.0])) and torch.equal(soup["b"], torch.tensor([1.0]))


@pytest.mark.parametrize(
    "other,message",
    [
        ({"w": torch.zeros(2), "b": torch.zeros(1)}, "key 'bn.num_batches_tracked' is missing"),
        ({**_sd([0.0, 0.0], [0.0]), "extra": torch.zeros(1)}, "unexpected key 'extra'"),
        (_sd([0.0, 0.0, 0.0], [0.0]), r"'w' has shape \(3,\), ingredient 0 has \(2,\)"),
        ({**_sd([0.0, 0.0], [0.0]), "b": torch.zeros(1, dtype=torch.long)}, "'b' is torch.int64"),
        ({**_sd([0.0, 0.0], [0.0]), "idx": torch.tensor([2])}, "unexpected key 'idx'"),
    ],
)
def test_mismatches_name_the_first_bad_key(other, message):
    with pytest.raises(WeightsError, match=message):
        uniform_soup([_sd([1.0, 2.0], [0.5]), other])


def test_integer_buffers_must_agree():
    a = {**_sd([1.0], [0.0]), "index": torch.tensor([0, 1])}
    b = {**_sd([1.0], [0.0]), "index": torch.tensor([1, 0])}
    with pytest.raises(WeightsError, match="integer tensor 'index' differs"):
        uniform_soup([a, b])
    with pytest.raises(WeightsError, match="at least one ingredient"):
        uniform_soup([])


def test_greedy_rule():
    # Score = minus the distance of w to a target; ingredient 2 alone is best.
    target = torch.tensor([2.0, 2.0])

    def score(sd):
        return -float((sd["w"] - target).norm())

    ings = [_sd([0.0, 0.0], [0.0]), _sd([3.0, 3.0], [0.0]), _sd([2.5, 1.5], [0.0]), _sd([1.5, 2.5], [0.0]), _sd([9.0, 9.0], [0.0])]
    res = greedy_soup(ings, score)
    assert res.order[0] == 2
    # 2 then 3 averages to exactly the target; 1, 0 and 4 would each move it away: left out.
    assert res.chosen == (2, 3)
    assert torch.equal(res.state_dict["w"], target) and res.soup_score == 0.0
    assert res.soup_score >= max(res.scores)


@pytest.fixture(scope="module")
def real_ingredients(tmp_path_factory):
    """Heads of a tiny timm CNN fine-tuned on a synthetic 3-class colour task, 4 seeds/lrs."""
    torch.manual_seed(0)
    base = timm.create_model("test_resnet", num_classes=3)
    g = torch.Generator().manual_seed(0)

    def make(n):
        y = torch.randint(0, 3, (n,), generator=g)
        x = torch.randn(n, 3, 64, 64, generator=g) * 0.8
        x[torch.arange(n), y] += 1.0  # the class is the brighter channel
        return x, y

    xtr, ytr = make(120)
    xte, yte = make(90)
    d = tmp_path_factory.mktemp("soup")
    paths = []
    for k, (seed, lr) in enumerate([(0, 0.05), (1, 0.1), (2, 0.02), (3, 0.05)]):
        paths.append(save_state_dict(finetune_head(base.eval(), xtr, ytr, 3, lr=lr, seed=seed, epochs=15), d / f"i{k}.safetensors"))
    return base, paths, xte, yte, d


def _average(states):
    """The plain average of state dicts, written out here: floats averaged in float64 and cast
    back, integer buffers (equal across these ingredients, or counters) the largest."""
    return {k: torch.stack([s[k].double() for s in states]).mean(0).to(v.dtype) if v.is_floating_point()
            else torch.stack([s[k] for s in states]).max(0).values for k, v in states[0].items()}


def test_real_ingredients_greedy_soup_is_the_greedy_rule_replayed(real_ingredients):
    base, paths, xte, yte, _ = real_ingredients
    model = timm.create_model("test_resnet", num_classes=3).eval()
    score = accuracy_scorer(model, xte, yte)
    states = [load_file(str(p)) for p in paths]
    singles = [score(s) for s in states]
    assert min(singles) > 0.5  # the heads learned the task
    greedy = greedy_soup(paths, score)
    assert greedy.scores == tuple(singles)
    assert list(greedy.order) == sorted(range(len(paths)), key=lambda i: -singles[i])
    # The rule replayed by hand: the best ingredient, then each next one kept when the average
    # of the soup so far and it scores no lower on the held-out images.
    chosen, current = [greedy.order[0]], singles[greedy.order[0]]
    for i in greedy.order[1:]:
        s = score(_average([states[j] for j in [*chosen, i]]))
        if s >= current:
            chosen, current = [*chosen, i], s
    assert len(chosen) >= 2  # here the rule really mixes ingredients (a best-single soup would not show it)
    assert greedy.chosen == tuple(chosen)
    want = _average([states[j] for j in chosen])  # the soup's weights: the mean of the chosen ingredients
    assert set(greedy.state_dict) == set(want)
    for k, v in want.items():
        torch.testing.assert_close(greedy.state_dict[k], v, rtol=0, atol=1e-7)
    assert greedy.soup_score == current == score(greedy.state_dict)  # its score, recomputed
    uniform = uniform_soup(paths)
    torch.testing.assert_close(uniform["fc.weight"], _average(states)["fc.weight"], rtol=0, atol=1e-7)
    assert score(uniform) >= min(singles)


def test_soup_cli_and_evaluate_with_soup_weights(real_ingredients, tmp_path, capsys):
    from PIL import Image

    _, paths, xte, yte, d = real_ingredients
    names = ["red", "green", "blue"]
    root = tmp_path / "val"
    for c in names:
        (root / c).mkdir(parents=True)
    for i in range(12):  # real image files for the CLI: a bright channel per class
        arr = torch.zeros(64, 64, 3, dtype=torch.uint8) + 60
        arr[..., i % 3] = 200
        Image.fromarray(arr.numpy()).save(root / names[i % 3] / f"{i}.png")
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(names))
    ck = [str(p) for p in paths]
    assert main(["soup", *ck, "--model", "test_resnet", "--out", str(tmp_path / "u.safetensors")]) == 0
    assert main(["soup", *ck, "--model", "test_resnet", "--labels", str(labels), "--method", "greedy", "--data", str(root),
                 "--out", str(tmp_path / "g.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "greedy soup of" in out and "held-out top-1" in out
    soup = load_file(str(tmp_path / "u.safetensors"))
    torch.testing.assert_close(soup["fc.weight"], uniform_soup(paths)["fc.weight"])
    lm = load_model("test_resnet", weights=tmp_path / "g.safetensors", labels=labels)
    assert lm.num_classes == 3
    assert main(["evaluate", str(root), "--model", "test_resnet", "--weights", str(tmp_path / "g.safetensors"), "--labels",
                 str(labels), "--tta", "hflip", "--out", str(tmp_path / "ev"), "--workers", "0", "--quiet"]) == 0
    assert main(["soup", *ck, "--model", "test_resnet", "--method", "greedy", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "--method greedy needs held-out data" in capsys.readouterr().err
