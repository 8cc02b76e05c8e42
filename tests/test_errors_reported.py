"""Errors say what happened: a transform bug crashes, only undecodable files are skipped, the
export check is never skipped in silence, no process group starts by itself, and the command
line names flags where the library names parameters."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from ttakit.cli import main
from ttakit.cli.flags import translate
from ttakit.datasets import make_loader
from ttakit.errors import BackendError, TTAKitError
from ttakit.runtime.distributed import DistContext


def _photos(tmp_path, n=3):
    paths = []
    for i in range(n):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(p)
        paths.append(str(p))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG nope")
    return paths + [str(tmp_path / "broken.png")]


def _to_tensor(img):
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float()


class _Buggy:
    """A transform with a bug on one photo (picklable: DataLoader workers)."""

    def __call__(self, img):
        if np.asarray(img).mean() > 50:
            raise ValueError("a bug in the transform")
        return _to_tensor(img)


@pytest.mark.parametrize("workers", [0, 1])
def test_only_undecodable_files_are_skipped_and_a_transform_bug_crashes(tmp_path, workers):
    paths = _photos(tmp_path)
    idx, x, bad = next(iter(make_loader(paths, _to_tensor, [range(4)], workers)))
    assert idx == [0, 1, 2] and x.shape == (3, 3, 8, 8)
    assert [i for i, _ in bad] == [3] and "not an image" in bad[0][1]
    with pytest.raises(ValueError, match="a bug in the transform"):
        next(iter(make_loader(paths, _Buggy(), [range(4)], workers)))


def test_no_process_group_starts_by_itself(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun, but nobody asked to join
    monkeypatch.setenv("RANK", "1")
    ctx = DistContext.current()
    assert ctx == DistContext() and not torch.distributed.is_initialized()


def test_export_check_without_onnxruntime_is_an_error(tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    net = timm.create_model("test_resnet", num_classes=3).eval()
    from ttakit import export_tta

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what Python does where it is not installed
    out = tmp_path / "x.onnx"
    with pytest.raises(BackendError, match=r"needs onnxruntime.*`check=False`"):
        export_tta(net, "hflip", out, input_size=(32, 32))
    assert not out.exists()  # refused before anything was written
    assert export_tta(net, "hflip", out, input_size=(32, 32), check=False) == out


def test_library_errors_name_parameters_and_the_cli_names_flags(tmp_path, capsys):
    from ttakit.evaluation.store import OutputStore

    OutputStore(tmp_path, {"model": "a", "views": ["identity"]})
    with pytest.raises(TTAKitError, match="use another `out_dir`") as e:
        OutputStore(tmp_path, {"model": "b", "views": ["identity"]})
    assert "--out" not in str(e.value)
    assert translate(str(e.value)).endswith("use another --out, or delete this folder to start over")
    assert translate("`options.strict=True`; `task='segment'`; `check=False`") == "--strict; --task segment; --no-check"
    # The command line prints the flag.
    data = tmp_path / "data"
    (data / "cat").mkdir(parents=True)
    (data / "dog").mkdir()
    for d in ("cat", "dog"):
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(data / d / "0.png")
    (data / "dog" / "broken.png").write_bytes(b"nope")
    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    torch.save(timm.create_model("test_resnet", num_classes=2).state_dict(), tmp_path / "w.pth")
    code = main(["evaluate", str(data), "--model", "test_resnet", "--weights", str(tmp_path / "w.pth"),
                 "--labels", str(tmp_path / "labels.txt"),
                 "--workers", "0", "--quiet", "--strict", "--out", str(tmp_path / "ev")])
    err = capsys.readouterr().err
    assert code == 2 and "broken.png" in err and "(--strict: an unreadable file is an error)" in err
