"""README's fenced code blocks, read and run as a reader would run them.

A block is a fenced ```bash or ```python block (other languages, e.g. ```text sample outputs,
are read but never run). An HTML comment on the line right before the fence says how a test
treats it::

    <!-- readme-test: skip network -->      needs the internet (model hub, downloads)
    <!-- readme-test: skip gpu -->          needs a GPU or several processes/machines
    <!-- readme-test: skip large-data -->   needs data or time this test does not have
    <!-- readme-test: skip install -->      installs packages (CI runs the install itself)
    <!-- readme-test: skip placeholder -->  names things the reader supplies (DATA, net, ...)
    <!-- readme-test: skip edits-repo -->   changes the checkout itself
    <!-- readme-test: small-data -->        runs, with ../shared/imagenet-sample replaced by a
                                            temporary folder of 4 of its photos

A marker may add free text after a colon (``skip network: hub weights``). A block without a
marker runs. Blocks run in a temporary folder holding what README's examples name: the bundled
photo as ``cat.jpg``, ``dog.png`` and ``photo.jpg``, and links to the checkout's ``examples/``
and ``benchmarks/``; ``ttakit`` and ``python`` mean this interpreter and these sources.

    >>> [b.lang for b in blocks("README.md")][:2]        # doctest: +SKIP
    ['bash', 'text']
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RUN_LANGS", "SKIP_KINDS", "Block", "blocks", "prepare_dir", "run_block"]

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "src" / "ttakit" / "assets" / "tiger_cat.jpg"
SAMPLE = Path(os.environ.get("TTAKIT_SAMPLE") or ROOT.parent / "shared" / "imagenet-sample")
SAMPLE_TEXT = "../shared/imagenet-sample"  # what README's commands name; small-data replaces it
RUN_LANGS = ("bash", "python")  # languages a test runs; any other fence is shown, not run
SKIP_KINDS = {
    "network": "needs the internet",
    "gpu": "needs a GPU or several processes",
    "large-data": "needs data or time a unit test does not have",
    "install": "installs packages (CI runs the install itself)",
    "placeholder": "names data or objects the reader supplies",
    "edits-repo": "changes the checkout itself",
}
PHOTO_NAMES = ("cat.jpg", "dog.png", "photo.jpg")  # the photo names README's examples use
_FENCE = re.compile(r"^```(\S*)\s*$")
_MARKER = re.compile(r"^<!--\s*readme-test:\s*(.+?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    lang: str  # the fence's language ('bash', 'python', 'text', '' when none)
    code: str  # the lines between the fences
    marker: str  # the readme-test marker right before the fence ('' when none), e.g. 'skip gpu'
    line: int  # 1-based line of the opening fence
    heading: str  # the nearest heading above the block, without its '#'s

    @property
    def skip_reason(self) -> str | None:
        """Why a test does not run this block (None: it runs)."""
        if self.lang not in RUN_LANGS:
            return f"```{self.lang or '(none)'} block: shown, not run"
        if not self.marker.startswith("skip"):
            return None
        kind, _, note = self.marker[4:].strip().partition(":")
        kind = kind.strip()
        if kind not in SKIP_KINDS:
            raise ValueError(f"line {self.line}: unknown readme-test skip kind {kind!r}; use one of {sorted(SKIP_KINDS)}")
        return f"skip {kind}: {SKIP_KINDS[kind]}" + (f" ({note.strip()})" if note.strip() else "")

    @property
    def small_data(self) -> bool:
        """Whether the block runs on a few sample photos instead of the whole folder."""
        return self.marker == "small-data"


def blocks(path: str | Path) -> list[Block]:
    """Every fenced code block of a Markdown file, in order."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    out, heading, i = [], "", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        fence = _FENCE.match(line)
        if fence:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
            if end is None:
                raise ValueError(f"{path}:{i + 1}: code fence never closed")
            before = _MARKER.match(lines[i - 1]) if i else None
            marker = before.group(1) if before else ""
            out.append(Block(fence.group(1), "\n".join(lines[i + 1:end]) + "\n", marker, i + 1, heading))
            i = end
        i += 1
    return out


def prepare_dir(block: Block, cwd: Path, n_photos: int = 4) -> str:
    """Fill ``cwd`` with what README's examples name; return the block's code as it will run there.

    Raises FileNotFoundError for a small-data block when the sample photos are absent.
    """
    for name in PHOTO_NAMES:
        if name.endswith(".png"):
            from PIL import Image

            Image.open(PHOTO).save(cwd / name)
        else:
            shutil.copyfile(PHOTO, cwd / name)
    for folder in ("examples", "benchmarks"):
        (cwd / folder).symlink_to(ROOT / folder, target_is_directory=True)
    code = block.code
    if block.small_data:
        photos = sorted(SAMPLE.glob("*.JPEG"))[:: 97][:n_photos] if SAMPLE.is_dir() else []
        if len(photos) < n_photos:
            raise FileNotFoundError(f"sample photos not found at {SAMPLE}")
        small = cwd / "sample"
        small.mkdir()
        for p in photos:
            shutil.copyfile(p, small / p.name)
        code = code.replace(SAMPLE_TEXT, str(small))
    return code


def run_block(block: Block, cwd: Path, env: dict[str, str] | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess:
    """Run one bash or python block in ``cwd`` (prepared by ``prepare_dir``), output captured.

    ``ttakit`` and ``python`` in a bash block mean this interpreter (``python -m ttakit``); a
    python block runs as a file with this interpreter. ``env`` defaults to this process's, with
    the checkout's ``src`` first on ``PYTHONPATH``.
    """
    if block.lang not in RUN_LANGS:
        raise ValueError(f"line {block.line}: a ```{block.lang} block is not run")
    code = prepare_dir(block, cwd)
    if env is None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    if block.lang == "python":
        script = cwd / f"readme_{block.line}.py"
        script.write_text(code, encoding="utf-8")
        cmd = [sys.executable, str(script)]
    else:
        prelude = (f'PY="{sys.executable}"\n'
                   'ttakit() { "$PY" -m ttakit "$@"; }\npython() { "$PY" "$@"; }\npython3() { "$PY" "$@"; }\n')
        cmd = ["bash", "-e", "-o", "pipefail", "-c", prelude + code]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
