"""Shift families (ttakit.shifts): seeded, severity-ordered, type/size/mode kept."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ttakit.data import example_image_path
from ttakit.errors import ConfigError, UnknownNameError
from ttakit.shifts import SHIFT_GROUPS, SHIFTS, expand_families, shift_image, working_copy

PIXEL_FAMILIES = [f for g in ("noise", "blur", "weather", "digital") for f in SHIFT_GROUPS[g]]


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return working_copy(Image.open(example_image_path())).resize((160, 120))


def _change(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).mean())


def test_groups_cover_every_family_once():
    grouped = [f for g in SHIFT_GROUPS.values() for f in g]
    assert sorted(grouped) == SHIFTS.names() and len(grouped) == 14


@pytest.mark.parametrize("family", SHIFTS.names())
def test_family_is_seeded_and_keeps_size_and_mode(photo, family):
    a = shift_image(photo, family, 3, seed=7)
    assert a.size == photo.size and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(shift_image(photo, family, 3, seed=7)))
    assert _change(a, photo) > 0.5, "severity 3 must change the photo"
    arr = shift_image(np.asarray(photo), family, 2, seed=1)  # arrays in, arrays out
    assert isinstance(arr, np.ndarray) and arr.shape == np.asarray(photo).shape and arr.dtype == np.uint8
    grey = shift_image(photo.convert("L"), family, 1, seed=0)
    assert grey.mode == "L" and grey.size == photo.size


@pytest.mark.parametrize("family", PIXEL_FAMILIES)
def test_severity_is_monotone_in_pixel_change(photo, family):
    # Mean over three seeds: fog's texture (and motion's angle) is drawn afresh per seed.
    changes = [np.mean([_change(shift_image(photo, family, s, seed=k), photo) for k in range(3)]) for s in range(1, 6)]
    assert all(b > a for a, b in zip(changes, changes[1:])), changes


def test_random_families_differ_by_seed(photo):
    for family in ("gaussian_noise", "impulse_noise", "fog", "crop", "scale"):
        assert not np.array_equal(np.asarray(shift_image(photo, family, 3, seed=0)),
                                  np.asarray(shift_image(photo, family, 3, seed=1))), family


def test_geometry_keeps_less_of_the_photo_as_severity_grows(photo):
    # scale: the photo shrunk onto its mean colour, so the flat border grows with severity.
    flat = []
    for s in range(1, 6):
        a = np.asarray(shift_image(photo, "scale", s, seed=0)).astype(int)
        flat.append((np.abs(a - a[0, 0]).sum(-1) == 0).mean())
    assert all(b > a for a, b in zip(flat, flat[1:])), flat
    # crop: on a horizontal ramp the kept window's share of the ramp is what the output spans.
    ramp = np.repeat(np.repeat(np.linspace(0, 255, 200)[None, :, None], 100, 0), 3, 2).round().astype(np.uint8)
    spans = []
    for s in range(1, 6):
        row = np.asarray(shift_image(ramp, "crop", s, seed=s)).astype(float)[50, :, 0]
        spans.append(row.max() - row.min())
    assert all(b < a for a, b in zip(spans, spans[1:])), spans


def test_errors_name_the_parameter(photo):
    with pytest.raises(ConfigError, match="severity"):
        shift_image(photo, "fog", 6)
    with pytest.raises(UnknownNameError, match="gaussian_noise"):
        shift_image(photo, "gausian_noise", 1)
    with pytest.raises(ConfigError, match="uint8"):
        shift_image(np.zeros((8, 8, 3), np.float32), "fog", 1)


def test_expand_families():
    assert expand_families("noise,fog") == ["gaussian_noise", "shot_noise", "impulse_noise", "fog"]
    assert len(expand_families("all")) == 14
    with pytest.raises(ConfigError, match="families"):
        expand_families("")
