"""What the report tests read from a page: its tags and table cells, its pictures, its screenshot in headless Chromium."""

from __future__ import annotations

import base64
import contextlib
import io
import shutil
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

FOOTER_RGB = (0x24, 0x3B, 0x53)  # the footer's background (--footer in the template)


class Page(HTMLParser):
    """What the tests read from a page: every src/href, table cells by row and class, script tags."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.links: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.cells: dict[str, dict[str, str]] = {}  # results row key -> td class -> text
        self.trace: list[list[str]] = []
        self._row: str | None = None
        self._cell: str | None = None
        self._in_trace = False
        self._trace_row: list[str] | None = None
        self._text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        self.links += [(tag, k, a[k]) for k in ("src", "href") if k in a]
        if tag == "table" and a.get("id") == "search-trace":
            self._in_trace = True
        if tag == "tr" and "data-key" in a:
            self._row = a["data-key"]
            self.cells[self._row] = {}
        if tag == "tr" and self._in_trace:
            self._trace_row = []
        if tag == "td":
            self._cell, self._text = a.get("class", "").split(" ")[0], []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            text = "".join(self._text).strip()
            if self._row is not None:
                self.cells[self._row][self._cell] = text
            if self._trace_row is not None:
                self._trace_row.append(text)
            self._cell = None
        if tag == "tr":
            if self._trace_row:
                self.trace.append(self._trace_row)
            self._row, self._trace_row = None, None
        if tag == "table":
            self._in_trace = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._text.append(data)

    def with_class(self, tag: str, cls: str) -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == tag and cls in a.get("class", "").split()]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread for these tiny forwards: on a shared CI machine its thread pool
    spins for longer than the convolutions take."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def pixels(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/jpeg;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"), dtype=float)


def chromium() -> str | None:
    """The headless browser on this machine, if any."""
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def screenshots(pages: list[Path], tmp_path: Path) -> list[tuple[np.ndarray, list[str]]]:
    """A 1280 px wide headless-Chromium screenshot of each page (browsers run side by side)
    and its console lines."""
    runs = []
    for i, page in enumerate(pages):
        shot = tmp_path / f"page{i}.png"
        proc = subprocess.Popen(
            [chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--no-first-run",
             "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp_path / f'profile{i}'}",
             f"--screenshot={shot}", "--window-size=1280,6000", page.as_uri()],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        runs.append((shot, proc))
    found = []
    for shot, proc in runs:
        _, err = proc.communicate(timeout=90)
        assert shot.exists(), err[-2000:]
        console = [line for line in err.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
        found.append((np.asarray(Image.open(shot).convert("RGB")).astype(np.int16), console))
    return found


def assert_whole_page(img: np.ndarray) -> None:
    """Not blank (text, charts, photos) and not cut off (the footer is in the shot, only the
    page background below it)."""
    assert img.shape[1] == 1280
    top = img[:1500]
    colours = (top[..., 0].astype(np.int64) << 16) | (top[..., 1].astype(np.int64) << 8) | top[..., 2]  # RGB as one int
    assert top.std() > 20 and len(np.unique(colours)) > 200  # (np.unique(axis=0) took 4 s a page)
    is_footer = (np.abs(img - np.array(FOOTER_RGB)).max(axis=2) <= 3).mean(axis=1) > 0.5
    rows = np.flatnonzero(is_footer)
    assert len(rows) > 20, "footer not in the screenshot: the page is cut off or did not render"
    below = img[rows[-1] + 1:]
    assert len(below) > 0 and (below >= 250).all(), "something is drawn below the footer"


needs_chromium = pytest.mark.skipif(chromium() is None, reason="headless Chromium not installed (apt-get install chromium)")
