"""``predict`` and ``evaluate`` of any registered task, from its spec alone: flags mapped onto library calls.

A task registered outside the package (say, by ``--task-module``) names these functions as
its commands; they know no task: the spec loads the model and the data, the library prepares
the run (:func:`ttakit.prepare_run <ttakit.runtime.prepare.prepare_run>`), evaluates
(:func:`ttakit.evaluate <ttakit.evaluation.api.evaluate>`) or runs a
:class:`~ttakit.tasks.plan.Plan` of the task's head, and the result is printed.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from ..data import example_image_path, load_image
from ..evaluation.api import evaluate
from ..runtime.loop import model_runner
from ..task_spec import TaskSpec, get_task
from ..tasks.plan import Plan
from .common import eval_options, prepare_run, print_written, progress_bar, verdict_lines

__all__ = ["evaluate_task", "predict_task"]


def _values(spec: TaskSpec, command: str, args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in spec.options_of(command)}


def evaluate_task(args: argparse.Namespace) -> int:
    """``ttakit evaluate --task NAME DATA``: the task's model and data, evaluated and printed."""
    spec = get_task(args.task)
    values = _values(spec, "evaluate", args)
    run = prepare_run(spec.part("load_model")(args.model, args.weights, args.labels, values), args)
    data = spec.part("load_data")(args.data, run.lm, values)
    options = eval_options(args)
    with progress_bar(len(data.head(options.limit)), "evaluate", options.quiet) as bar:
        res = evaluate(run, data, args.tta, task=spec.name, out_dir=args.out, options=options, progress=bar,
                       **args.given_options)
    if not res:  # not rank 0
        return 0
    print(res.table())
    print("\n".join(verdict_lines(res.results)))
    print_written(dict(res.doc), args.out)
    return 0


def predict_task(args: argparse.Namespace) -> int:
    """``ttakit predict --task NAME [IMAGE ...]``: plain and TTA results of each photo, as the
    task's ``describe`` summarises them (one JSON document with ``--json``)."""
    spec = get_task(args.task)
    values = _values(spec, "predict", args)
    paths = [str(p) for p in (args.images or [example_image_path()])]
    photos = [load_image(p) for p in paths]  # a bad file fails before the model loads
    run = prepare_run(spec.part("load_model")(args.model, args.weights, args.labels, values), args)
    runner = model_runner(run.lm.model if run.backend.label == "torch" else run.backend, run.run_config)
    describe = spec.part("describe")
    results = {}
    for name, policy in (("plain", "none"), ("tta", args.tta)):
        plan = Plan(policy, task=spec.name, data_config=run.lm.data_config, micro_batch=run.run_config.micro_batch,
                    device=run.device, **args.given_options)
        with torch.inference_mode():
            results[name] = describe(plan.run(runner, photos))
        policy_names = [v.name for v in plan.views]
    doc = {"task": spec.name, "model": run.lm.name, "policy": policy_names,
           "images": [{"path": p, "plain": results["plain"][i], "tta": results["tta"][i]} for i, p in enumerate(paths)]}
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    for img in doc["images"]:
        print(img["path"])
        print(f"  model {doc['model']}; task {spec.name}; policy {len(policy_names)} views")
        for name in ("plain", "tta"):
            print(f"  {name:<5} " + ", ".join(f"{k} {v}" for k, v in img[name].items()))
    return 0
