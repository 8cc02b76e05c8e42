"""Every benchmark and example runs in ``--quick`` mode and prints its table.

The scripts run one after another in one interpreter of their own (``tests/quick_runner.py``,
started by the first test here): an interpreter per script cost about 8 s of imports each (28
scripts, 5.5 min), and inside pytest's own process their native libraries' state mixed with the
rest of the suite's. Each script is still one test, named by the script, so a broken import, a
changed signature or a renamed result key fails as that script. The tests of a file share one
pytest-xdist worker (``--dist loadfile``), so the run happens once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*ROOT.glob("benchmarks/*.py"), *ROOT.glob("examples/*.py")])
HELPERS = {"bench_common.py"}  # modules the scripts share, not scripts
RUN = [s for s in SCRIPTS if s.name not in HELPERS]
# What a script's quick run prints besides its provenance line (a Markdown table unless noted).
PRINTS: dict[str, str] = {"bench_box_map.py": "paired bootstrap", "bench_import.py": "ttakit / (torch, torchvision)",
                          "bench_shift_families.py": "family          change", "bench_segment_scale.py": "part 2: ",
                          "make_corrupted.py": "wrote 4 photos", "make_segmentation.py": "wrote",
                          "make_segmentation_mosaics.py": "wrote", "serve_onnx.py": "policy "}
_RESULTS: dict[str, Any] = {}  # the runner's results, one run per process (pytest-xdist: --dist loadfile)


def _results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run every script's quick mode once (the first test asking), then answer from that run."""
    if not _RESULTS:
        tmp = tmp_path_factory.mktemp("quick")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, str(ROOT / "tests" / "quick_runner.py"), str(tmp / "results.json"),
                               str(tmp), *map(str, RUN)], cwd=tmp, env=env, capture_output=True, text=True, timeout=900)
        path = tmp / "results.json"
        _RESULTS.update(json.loads(path.read_text()) if path.is_file() else {})
        for r in _RESULTS.values():
            if not r["ok"] and done.returncode:
                r["error"] += f"\n(the runner exited with {done.returncode}: {done.stderr[-1500:]})"
    return _RESULTS


def test_every_script_is_run() -> None:
    assert len(RUN) >= 23, [s.name for s in SCRIPTS]


@pytest.mark.slow
@pytest.mark.parametrize("script", RUN, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_quick_run(script: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    r = _results(tmp_path_factory).get(f"{script.parent.name}/{script.name}")
    assert r is not None, f"the runner never reached {script.name}"
    assert r["ok"], r["error"]
    out = r["stdout"]
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
