"""Run folders written by earlier versions still resume: the store's on-disk layout is a format.

The layout, as written since the first stored run (``evaluation/store.py``)::

    OUT/logits/run.json                        the fingerprint: model, weights, data, n_images,
                                               data_hash, views, batch_size, data_config
    OUT/logits/chunk_<start:09d>.safetensors   logits (n, U, C), labels (n,), indices (n,),
                                               seconds (U,); metadata {"skipped": "[...]"}

The folder here is written by hand from that description, not by the store, so renaming the
store's classes, folder or keys without reading the old layout fails this test.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from ttakit import RunConfig, create_policy, load_model
from ttakit.datasets import detect_dataset
from ttakit.evaluation.classify_logits import data_hash, load_logits
from ttakit.evaluation.evaluate import EvalOptions, evaluate

CLASSES = ["cat", "dog", "fox"]


def test_a_folder_in_the_old_layout_resumes(tmp_path):
    root = tmp_path / "data"
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(2):
            rgb = np.random.default_rng(10 * c + i).integers(0, 255, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(rgb).save(root / name / f"{i}.png")
    (tmp_path / "labels.txt").write_text("\n".join(CLASSES))
    torch.manual_seed(0)
    lm = load_model("test_resnet", num_classes=3, labels=tmp_path / "labels.txt", weights="random")
    data = detect_dataset(root, CLASSES)
    labels = torch.tensor(data.labels, dtype=torch.long)
    assert len(data) == 6  # chunks of 4: [0, 4) written by the "old version", [4, 6) missing

    # The interrupted old run: its fingerprint and its first chunk, with made-up logits that
    # call every image right (so reading them back shows in the scores).
    out = tmp_path / "run"
    (out / "logits").mkdir(parents=True)
    (out / "logits" / "run.json").write_text(json.dumps({
        "model": lm.name, "weights": lm.weights, "data": data.source, "n_images": 6, "data_hash": data_hash(data),
        "views": ["identity", "hflip"], "batch_size": 4, "data_config": lm.data_config,
    }, indent=1))
    old_logits = torch.zeros(4, 2, 3)
    old_logits[torch.arange(4), :, labels[:4]] = 5.0
    chunk0 = out / "logits" / "chunk_000000000.safetensors"
    save_file({"logits": old_logits, "labels": labels[:4], "indices": torch.arange(4),
               "seconds": torch.zeros(2, dtype=torch.float64)}, str(chunk0), metadata={"skipped": "[]"})
    written = chunk0.read_bytes()

    doc = evaluate(lm, data, [create_policy("hflip")], out_dir=out, run_config=RunConfig(8, False),
                   options=EvalOptions(batch_size=4, workers=0, quiet=True))

    assert chunk0.read_bytes() == written  # resumed: the old chunk was read, not redone
    new = load_file(str(out / "logits" / "chunk_000000004.safetensors"))  # the missing chunk, same layout
    assert new["logits"].shape == (2, 2, 3) and new["indices"].tolist() == [4, 5]
    logits, stored_labels, names, idx = load_logits(out)
    assert names == ["identity", "hflip"] and idx.tolist() == list(range(6))
    assert torch.equal(logits[:4], old_logits) and torch.equal(stored_labels, labels)
    right_after = int((new["logits"][:, 0].argmax(-1) == labels[4:]).sum())
    assert doc["n_images"] == 6
    assert doc["results"]["plain"]["top1"] == (4 + right_after) / 6  # the old chunk's scores count
