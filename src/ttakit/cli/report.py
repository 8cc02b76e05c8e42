"""``ttakit report``: re-render an evaluation folder's ``report.html`` from its saved files.

No model is loaded: the page is built from ``results.json``, ``per_view.json``,
``per_image.csv`` and the stored outputs (see :func:`ttakit.evaluation.report.write_report`).
"""

from __future__ import annotations

import argparse

from ..evaluation.report import write_report
from ..models import load_class_names
from ..tasks.classify import CONFIDENCE
from .common import classify_scoring, positive_int

__all__ = ["register"]


def _cmd_report(args: argparse.Namespace) -> int:
    names = load_class_names(args.labels) if args.labels else None
    # results.json does not keep evaluate's --adaptive: given again, adaptive rows are recomputed as scored.
    page = write_report(args.dir, search_policy_path=args.policy, class_names=names, max_gallery=args.max_gallery,
                        scoring=classify_scoring(args))  # the folder's task is looked up from its results.json
    print(f"wrote {page}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``report`` to the command parser."""
    p = sub.add_parser("report", help="re-render report.html of an evaluation folder (no model runs)")
    p.add_argument("dir", metavar="DIR", help="the --out folder of 'ttakit evaluate' (or the data/ folder of a search)")
    p.add_argument("--policy", default=None, metavar="policy.json",
                   help="a search's policy.json whose trace to show (default: DIR/policy.json or DIR/../policy.json)")
    p.add_argument("--labels", default=None,
                   help="class names (one per line, or a JSON list); default: those per_image.csv shows")
    p.add_argument("--max-gallery", type=positive_int, default=12,
                   help="photos shown per policy among those it fixed, and among those it broke (default: 12)")
    p.add_argument("--adaptive", type=float, default=None, metavar="THRESHOLD",
                   help="the --adaptive threshold the folder was evaluated with, if any")
    p.add_argument("--confidence", choices=sorted(CONFIDENCE), default="max_prob",
                   help="the --confidence it was evaluated with (default: max_prob)")
    p.set_defaults(func=_cmd_report)
