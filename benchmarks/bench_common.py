"""What the benchmarks share: the sample photos, logging, the load, the provenance line, quick mode.

Not a benchmark itself. Every benchmark prints :func:`provenance` first, so a table pasted from
its output says where it came from (commit, CPU and the flags that matter, load, command).
``--quick`` runs use :func:`load_bench_model` (timm's tiny ``test_efficientnet`` with random
weights) and :func:`quick_folders` (a few sample photos, or copies of the bundled photo where
``../shared/imagenet-sample`` is absent, and a corrupted copy of them).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import subprocess
import sys
from datetime import date
from pathlib import Path

import ttakit

ROOT = Path(__file__).resolve().parents[1]
# The 500 sample photos (``TTAKIT_SAMPLE`` overrides: a worktree's ../shared may not exist).
SAMPLE = Path(os.environ.get("TTAKIT_SAMPLE") or ROOT.parent / "shared" / "imagenet-sample")
QUICK_MODEL = "test_efficientnet"  # timm's tiny test model: quick runs check the code, not the figures
QUICK_SIZE = 64  # its input side in quick runs (fully convolutional: any size runs)
CPU_FLAGS = ("avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_avg() -> str:
    try:
        return " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def cpu() -> str:
    """``lscpu``'s model name and which of AVX-512, its bf16/fp16/VNNI and AMX this CPU has."""
    name, flags = platform.processor() or platform.machine(), set()
    info = Path("/proc/cpuinfo")
    for line in info.read_text().splitlines() if info.exists() else []:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            name = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
    has = [f for f in CPU_FLAGS if f in flags]
    return f"{name} ({', '.join(has) if has else 'no AVX-512, no AMX'}{', avx2' if 'avx2' in flags else ''}), " \
           f"{os.cpu_count()} cores"


def commit() -> str:
    """The short commit of the checkout (``+dirty`` when it has changes), or ``unknown``."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        sha = git("rev-parse", "--short", "HEAD")
        return (sha + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(script: str, argv: list[str] | None) -> str:
    """One line: date, CPU, load, command and commit (what BENCHMARKS.md puts under a table)."""
    args = sys.argv[1:] if argv is None else argv
    cmd = " ".join(["python", f"benchmarks/{Path(script).name}", *args])
    return f"<sub>measured {date.today().isoformat()}, {cpu()}, load {load_avg()}, `{cmd}`, commit {commit()}</sub>"


def load_bench_model(quick: bool) -> ttakit.LoadedModel:
    """The default model, or in a quick run timm's tiny test model with random weights at 64 px."""
    if not quick:
        return ttakit.load_model()
    lm = ttakit.load_model(QUICK_MODEL, weights="random")
    return dataclasses.replace(lm, data_config={**lm.data_config, "input_size": (3, QUICK_SIZE, QUICK_SIZE)})


def quick_folders(dst: Path, n: int = 4) -> dict[str, Path]:
    """``{"clean": folder, "corrupted": folder}`` of ``n`` labelled photos each (``<wnid>_<name>``
    files): the first sample photos (the bundled photo, flipped and cropped, where the sample
    folder is absent), and a blurred, darkened copy of them."""
    from PIL import ImageEnhance, ImageFilter, ImageOps

    clean, corrupted = dst / "clean", dst / "corrupted"
    clean.mkdir(parents=True, exist_ok=True)
    corrupted.mkdir(parents=True, exist_ok=True)
    files = sorted(SAMPLE.glob("*.JPEG"))[:: max(1, 500 // n)][:n] if SAMPLE.is_dir() else []
    if files:
        photos = {f.name: ttakit.load_image(f) for f in files}
    else:
        cat = ttakit.load_image(ttakit.example_image_path())
        w, h = cat.size
        variants = [cat, ImageOps.mirror(cat), cat.crop((0, 0, w * 3 // 4, h)), cat.crop((w // 4, 0, w, h))]
        photos = {f"n02123159_tiger_cat_{k}.JPEG": variants[k % len(variants)] for k in range(n)}
    for name, im in photos.items():
        im.save(clean / name, quality=92)
        blurred = im.filter(ImageFilter.GaussianBlur(2))
        ImageEnhance.Brightness(blurred).enhance(0.6).save(corrupted / name, quality=92)
    return {"clean": clean, "corrupted": corrupted}


def check_args(argv: list[str]) -> None:
    """``SCRIPT ARG...``: parse the arguments with SCRIPT's own ``parser()`` and run nothing
    (``DRY_RUN=1 benchmarks/gpu_bench.sh``); argparse exits with its message on a bad one."""
    import importlib.util

    script, *args = argv
    spec = importlib.util.spec_from_file_location(Path(script).stem, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.parser().parse_args(args)
    print(f"arguments ok: {script} {' '.join(args)}")


def check_args_file(path: str) -> None:
    """:func:`check_args` for every command in ``path``: one a line, ``\\x1f`` after each argument."""
    for line in Path(path).read_text().splitlines():
        if line:
            check_args(line.split("\x1f")[:-1])
