"""What the classification report reads back from an evaluation folder: its rows rescored from the stored logits, names, configs.

Nothing here runs a model: each ``results.json`` row is rebuilt as a :class:`PolicyRun`, and its
merged probabilities are recomputed chunk by chunk from ``logits/`` through the one
classification path (:func:`~ttakit.evaluation.classify_logits.classify_stored`), reduced to what the
page shows. Class names, the model's data config and a search's ``policy.json`` are recovered
from the folder when they are not given.

Example:
    >>> run = rebuild_run("hflip", {"merge": "mean", "view_names": ["identity", "hflip"]}, None)
    >>> run.key, run.merge, run.policy.view_names
    ('hflip', 'mean', ['identity', 'hflip'])
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import DatasetError, TTAKitError
from ..policy import Policy, create_policy, parse_view
from ..views import View
from .charts import colour
from .metrics import MetricAccumulator
from .classify_logits import ClassifyScoring, classify_stored
from .scoring import PolicyRun
from .store import OutputStore

__all__ = ["RowData", "find_policy", "read_csv", "rebuild_run", "resolve_class_names", "resolve_data_config",
           "score_rows"]


@dataclass
class RowData:
    """Everything the page shows about one results row, recomputed from the stored logits."""

    key: str
    run: PolicyRun
    result: dict[str, Any]
    colour: str
    acc: MetricAccumulator = field(default_factory=MetricAccumulator)
    top_idx: list[Tensor] = field(default_factory=list)  # (n, k) per chunk
    top_val: list[Tensor] = field(default_factory=list)
    p_true: list[Tensor] = field(default_factory=list)  # (n,) probability of the label
    idx: Tensor = field(init=False, repr=False)  # (N, k) top classes, once all chunks are read
    val: Tensor = field(init=False, repr=False)  # (N, k) their probabilities
    pt: Tensor = field(init=False, repr=False)  # (N,) probability of the label

    def done(self) -> None:
        """Join the chunks' parts (after the last chunk)."""
        self.idx, self.val, self.pt = torch.cat(self.top_idx), torch.cat(self.top_val), torch.cat(self.p_true)
        self.top_idx, self.top_val, self.p_true = [], [], []


def rebuild_run(key: str, row: Mapping[str, Any], data_config: Mapping[str, Any] | None) -> PolicyRun:
    """The :class:`PolicyRun` of a ``results.json`` row.

    Rows are named by the policy as written, so the name usually resolves again (a preset,
    policy text, a JSON file with its weights and temperature; presets that depend on the
    model resolve with its ``data_config``); when it does not, or gives other views, the row's
    own view names are used (equal weights, temperature 1).
    """
    if key == "plain":
        return PolicyRun("plain", Policy((View(),), name="plain"), "mean")
    merge = row["merge"]
    base = key[: -len(merge) - 1] if key.endswith(f"@{merge}") else key
    try:
        policy: Policy | None = create_policy(base, data_config)
    except TTAKitError:  # a JSON file moved away, a preset of another ttakit, ...
        policy = None
    if policy is None or policy.view_names != list(row["view_names"]):
        policy = Policy(tuple(parse_view(n) for n in row["view_names"]), name=base)
    return PolicyRun(key, policy, merge)


def read_csv(path: Path) -> tuple[list[str], list[str], list[dict[str, str]]]:
    """A classification ``per_image.csv`` (``index, path, label, <key>, <key>_prob ...``; older
    folders lack ``index``) as (paths, label names, per image ``{row key: predicted name}``)."""
    if not path.exists():
        return [], [], []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        first = 1 if header[:1] == ["index"] else 0  # the path column
        keys = header[first + 2::2]
        paths, labels, preds = [], [], []
        for line in reader:
            paths.append(line[first])
            labels.append(line[first + 1])
            preds.append(dict(zip(keys, line[first + 2::2])))
    return paths, labels, preds


def resolve_class_names(
    given: Sequence[str] | None, n_classes: int, labels: Tensor, csv_labels: list[str],
    preds: list[dict[str, str]], plain: RowData,
) -> list[str]:
    """Class names: as given; else what ``per_image.csv`` reveals (each image's label and the
    plain model's prediction, paired with the stored indices; plain is never adaptive, so its
    recomputed prediction is the one written), completed with ImageNet's names for a
    1000-class model whose revealed names agree with them, else ``class_N``."""
    if given is not None and len(given) == n_classes:
        return list(given)
    known: dict[int, str] = {}
    for j, name in enumerate(csv_labels[: len(labels)]):
        known[int(labels[j])] = name
        if "plain" in preds[j]:
            known.setdefault(int(plain.idx[j, 0]), preds[j]["plain"])
    fill = [f"class_{i}" for i in range(n_classes)]
    if n_classes == 1000:
        from ..models import imagenet_class_names

        imagenet = imagenet_class_names()
        if all(imagenet[i] == n for i, n in known.items()):
            fill = imagenet
    return [known.get(i, fill[i]) for i in range(n_classes)]


def resolve_data_config(given: Mapping[str, Any] | None, fingerprint: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The model's data config: as given, else the one stored with the logits, else timm's
    default for the model name (no weights are loaded). ``(config or None, note)``."""
    cfg = given or fingerprint.get("data_config")
    if not cfg:
        try:
            import timm

            model = timm.create_model(fingerprint["model"], pretrained=False)
            cfg = timm.data.resolve_data_config({}, model=model)
        except (KeyError, RuntimeError) as e:  # no model name stored, or a name timm does not know
            return None, f"view thumbnails skipped: the model's data config is unknown ({type(e).__name__}: {e})"
    # JSON stored tuples as lists; timm's transforms want tuples.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}, ""


def find_policy(out: Path, given: str | Path | None) -> dict[str, Any] | None:
    """The search's ``policy.json`` (given, or next to / above the folder) if it holds a trace."""
    candidates = [Path(given)] if given is not None else [out / "policy.json", out.parent / "policy.json"]
    for p in candidates:
        if p.is_file():
            try:
                doc = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(doc, dict) and isinstance(doc.get("meta"), dict) and doc["meta"].get("trace"):
                return {**doc, "path": str(p)}
    return None


def score_rows(store: OutputStore, doc: Mapping[str, Any], scoring: ClassifyScoring,
               data_config: Mapping[str, Any] | None) -> tuple[list[RowData], Tensor, int]:
    """Every results row recomputed from the stored logits: ``(rows, labels (N,), classes)``.

    The chunks are streamed (memory stays flat however large the run), each row's merged
    probabilities computed through the one classification path and reduced to what is shown.
    """
    rows = [RowData(key, rebuild_run(key, res, data_config), res, colour(i))
            for i, (key, res) in enumerate(doc["results"].items())]
    columns = {n: i for i, n in enumerate(store.fingerprint["views"])}
    missing = sorted({v.name for r in rows for v in r.run.policy.views} - set(columns))
    if missing:
        raise DatasetError(f"{store.dir.parent}: views {', '.join(missing)} are not in the stored logits")
    labels_parts: list[Tensor] = []
    n_classes = 0
    for payload, _ in store.chunks():
        logits, labels = payload["logits"], payload["labels"].long()
        if len(labels) == 0:
            continue
        n_classes = logits.shape[-1]
        labels_parts.append(labels)
        plain_right = logits[:, 0].argmax(-1) == labels
        for r in rows:
            probs = classify_stored(logits, columns, r.run, scoring).probs.float()
            r.acc.update(probs, labels, plain_right)
            val, idx = probs.topk(min(3, probs.shape[-1]), dim=-1)
            r.top_idx.append(idx)
            r.top_val.append(val)
            r.p_true.append(probs.gather(1, labels[:, None]).squeeze(1))
    if not labels_parts:
        raise DatasetError(f"{store.dir.parent}: no scored images in the stored logits")
    for r in rows:
        r.done()
    return rows, torch.cat(labels_parts), n_classes
