"""`ttakit search` on folders smaller than its k folds: one line of error, or fewer folds said aloud."""

from __future__ import annotations

import shutil

import pytest
import torch

from ttakit import ConfigError, example_image_path
from ttakit.cli import main
from ttakit.evaluation.search import kfold_estimate


def _cats(root, n):
    """An ImageNet-flat folder of ``n`` copies of the bundled tiger cat (class n02123159)."""
    root.mkdir()
    for i in range(n):
        shutil.copy(example_image_path(), root / f"n02123159_cat{i}.JPEG")
    return root


def _search(folder, out, *extra):
    return main(["search", str(folder), "--pool", "identity+hflip=1", "--budget", "2", "--workers", "0", "--quiet",
                 "--out", str(out), *extra])


def test_one_photo_ends_in_one_error_line(tmp_path, capsys):
    assert _search(_cats(tmp_path / "one", 1), tmp_path / "s") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ttakit: error: ") and "Traceback" not in err[0]
    assert "at least 2 folds and 2 labelled photos" in err[0] and "got 1 photo:" in err[0]


def test_fewer_photos_than_folds_fall_back_to_leave_one_out(tmp_path, capsys):
    assert _search(_cats(tmp_path / "three", 3), tmp_path / "s", "--folds", "5") == 0
    out = capsys.readouterr().out
    assert "3-fold held-out estimate" in out
    assert "note: 5 folds need at least 5 photos; used 3 folds of one photo each" in out


@pytest.mark.parametrize("n,folds", [(5, 4), (7, 3), (2, 2)])
def test_every_fold_holds_out_photos(n, folds):
    # torch.chunk would give 3 parts for 5 photos in 4 folds; each fold must hold photos out.
    labels = torch.arange(n) % 2
    logits = torch.randn(n, 2, 2, generator=torch.Generator().manual_seed(0))
    res = kfold_estimate(logits, labels, budget=1, folds=folds)
    assert res["folds"] == folds and len(res["views_per_fold"]) == folds and "note" not in res
    with pytest.raises(ConfigError, match="got 1 photo"):
        kfold_estimate(logits[:1], labels[:1], budget=1, folds=folds)
