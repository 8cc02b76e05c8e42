"""Every benchmark and example runs in ``--quick`` mode, in this process, and prints its table.

Each script is imported as a module (its folder on ``sys.path``, as when it runs as a script)
and its ``main(["--quick", ...])`` is called in a temporary working directory, so a broken
import, a changed signature or a renamed result key fails here, named by the script. The
state a script may change for its run (torch threads, environment, warning filters) is put
back afterwards.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*ROOT.glob("benchmarks/*.py"), *ROOT.glob("examples/*.py")])
HELPERS = {"bench_common.py"}  # modules the scripts share, not scripts
# Every script runs in a process of its own. Run in pytest's process, after the rest of the
# suite, one of them crashed the interpreter (SIGSEGV in native code, faulthandler silent; seen
# twice at the same test, on torch 2.14.1 and 2.4.1): not understood yet, so none shares the
# suite's process (each costs an interpreter start instead).
OWN_PROCESS = {s.name for s in SCRIPTS}
# Extra arguments of a quick run ({tmp}: the test's temporary folder).
ARGS: dict[str, list[str]] = {}
# What a script's quick run prints besides its provenance line (a Markdown table unless noted).
PRINTS: dict[str, str] = {"bench_box_map.py": "paired bootstrap", "bench_import.py": "ttakit / (torch, torchvision)", "bench_shift_families.py": "family          change", "bench_segment_scale.py": "part 2: ",
                          "make_corrupted.py": "wrote 4 photos", "make_segmentation.py": "wrote",
                          "make_segmentation_mosaics.py": "wrote", "serve_onnx.py": "policy "}


def _load(script: Path):
    spec = importlib.util.spec_from_file_location(script.stem, script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[script.stem] = module  # so a sibling's `from <stem> import ...` gets this one
    spec.loader.exec_module(module)
    return module


def test_every_script_is_run() -> None:
    assert len(SCRIPTS) - len(HELPERS) >= 23, [s.name for s in SCRIPTS]


@pytest.mark.slow
@pytest.mark.parametrize("script", [s for s in SCRIPTS if s.name not in HELPERS],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_quick_run(script: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    if script.name in OWN_PROCESS:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "OMP_NUM_THREADS": "1",
               "TTAKIT_CACHE": str(tmp_path / "cache")}  # one thread: tiny models on a shared CPU
        args = [a.format(tmp=tmp_path) for a in ARGS.get(script.name, [])]
        done = subprocess.run([sys.executable, str(script), "--quick", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert PRINTS.get(script.name, "|---") in done.stdout, done.stdout[-2000:]
        if script.parent.name == "benchmarks":
            assert done.stdout.startswith("<sub>measured "), done.stdout[:300]  # its provenance line first
        return
    monkeypatch.syspath_prepend(str(script.parent))
    monkeypatch.chdir(tmp_path)  # a relative output path lands here, never in the repository
    monkeypatch.setenv("TTAKIT_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared CPU, 2 torch threads fighting other jobs run tiny models 10x slower
    try:
        with warnings.catch_warnings():
            module = _load(script)
            module.main(["--quick", *(a.format(tmp=tmp_path) for a in ARGS.get(script.name, []))])
        gc.collect()  # what the run left behind is freed now, in its own test
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert PRINTS.get(script.name, "|---") in out, out[-2000:]
    if script.parent.name == "benchmarks":
        assert out.startswith("<sub>measured "), out[:300]  # its provenance line first


def test_gpu_bench_dry_run(tmp_path: Path) -> None:
    """``DRY_RUN=1 gpu_bench.sh`` installs and runs nothing: it parses every benchmark command's
    arguments with that script's own parser."""
    env = {**os.environ, "DRY_RUN": "1", "PYTHON": sys.executable, "OUT": str(tmp_path)}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_bench.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("arguments ok:") == 3, done.stdout
