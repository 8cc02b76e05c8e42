"""Fork safety: a process that holds OpenVINO and ONNX Runtime runs ``evaluate`` with decoding
workers and input stages, then starts subprocesses, and nothing crashes, hangs or is left
changed (signal handlers, the thread's signal stack, torch threads, live threads)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest
import torch

from ttakit.datasets import DecodeLoader

# The whole scenario runs in a child interpreter, so that a segfault fails this test instead of
# killing the test session.
SCENARIO = textwrap.dedent("""
    import gc, os, signal, subprocess, sys, threading
    from pathlib import Path
    import numpy as np, timm, torch
    from PIL import Image
    from ttakit import RunConfig, create_policy
    from ttakit.datasets import detect_dataset
    from ttakit.evaluation.evaluate import EvalOptions, evaluate
    from ttakit.models import LoadedModel
    from ttakit.runtime.backends import create_backend
    from ttakit.runtime.signal_stack import current_signal_stack

    root = Path(sys.argv[1])
    classes = ["cat", "dog"]
    rng = np.random.default_rng(0)
    for c in classes:
        (root / "data" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (72, 90, 3), dtype=np.uint8)).save(root / "data" / c / f"{i}.jpg")
    torch.manual_seed(0)
    net = timm.create_model("test_resnet", num_classes=2).eval()
    cfg = {"input_size": (3, 64, 64), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3,
           "crop_pct": 1.0, "crop_mode": "center"}
    lm = LoadedModel(net, "test_resnet", "random", cfg, classes)
    stack = current_signal_stack()
    backends = [create_backend(n, net, input_size=(64, 64), key="test_resnet") for n in ("openvino", "onnxruntime")]
    before = (signal.getsignal(signal.SIGCHLD), torch.get_num_threads(), threading.active_count())
    data = detect_dataset(root / "data", classes)
    policy = create_policy("hflip*input(72:1.0,80:0.875)")
    for i in range(2):  # one run on each backend
        res = evaluate(lm, data, [policy], out_dir=root / f"run{i}", run_config=RunConfig(4, False),
                       options=EvalOptions(batch_size=2, workers=2, quiet=True), backend=backends[i % 2])
        assert res["results"][policy.name]["views"] == 4, res["results"]
    after = (signal.getsignal(signal.SIGCHLD), torch.get_num_threads(), threading.active_count())
    assert after == before, (before, after)
    # A second OpenVINO backend, then both freed in the order they were made: the thread's
    # signal stack must be the one it had (runtime/signal_stack.py). torch's DataLoader workers
    # install a Python SIGCHLD handler, which runs on that stack when a subprocess below ends:
    # with a freed stack there, the first subprocess killed this process (SIGSEGV).
    second = create_backend("openvino", net, input_size=(64, 64), key="test_resnet")
    second(torch.randn(2, 3, 64, 64))
    for _ in torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 3)), num_workers=1, batch_size=2):
        pass
    del backends[:], second
    gc.collect()
    assert current_signal_stack() == stack, (current_signal_stack(), stack)
    for i in range(20):
        r = subprocess.run([sys.executable, "-c", "print('ok')"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stdout == "ok\\n", r
    print("survived")
""")


def test_backends_then_evaluate_with_workers_then_subprocesses_do_not_crash(tmp_path):
    env = {**os.environ, "TTAKIT_CACHE": str(tmp_path / "cache")}
    res = subprocess.run([sys.executable, "-c", SCENARIO, str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, f"exit {res.returncode} ({'signal ' + str(-res.returncode) if res.returncode < 0 else ''}):\n{res.stderr[-3000:]}"
    assert res.stdout.strip().endswith("survived")


class _Items:
    def __init__(self, fail_at: int | None = None) -> None:
        self.fail_at = fail_at
        self.threads: set[str] = set()

    def __getitem__(self, i: int) -> int:
        self.threads.add(threading.current_thread().name)
        if i == self.fail_at:
            raise RuntimeError(f"item {i} is broken")
        return i * i


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_decode_loader_keeps_order_and_matches_inline_decoding(workers):
    batches = [[4, 0], [7], [1, 2, 3], [], [9, 8, 6, 5]]
    items = _Items()
    got = list(DecodeLoader(items, batches, list, workers=workers))
    assert got == [[i * i for i in b] for b in batches]
    if workers:
        assert all(t.startswith("ttakit-decode") for t in items.threads)
    else:
        assert items.threads == {threading.current_thread().name}


def test_decode_loader_raises_the_workers_error_and_leaves_no_thread():
    before = threading.active_count()
    with pytest.raises(RuntimeError, match="item 5 is broken"):
        list(DecodeLoader(_Items(fail_at=5), [[i] for i in range(40)], list, workers=2))
    loader = iter(DecodeLoader(_Items(), [[i] for i in range(40)], list, workers=2))
    assert next(loader) == [0]
    loader.close()  # the consumer stops early: queued batches are cancelled, the threads joined
    assert threading.active_count() == before
    assert torch.get_num_threads() >= 1
    with pytest.raises(ValueError, match="workers must be >= 0"):
        DecodeLoader([], [], list, workers=-1)
