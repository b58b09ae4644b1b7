"""The evaluation's generation with the harness's batches (a batch per task's generation arguments) against
evolforge's batches across tasks (:mod:`evolforge.eval.batching`, ``evaluate.cross_task_batches``).

    python bench/eval_batching.py --model models/sft [--params params.yaml] [--batch-sizes 8]
        [--threads 1] [--repeats 3] [--json out.json]

The ``evaluate`` stage's own call (params.yaml's ``evaluate`` section, the offline suite) runs once; when the
harness hands the model its generation requests, the bench generates them both ways in turn on the same loaded
model, ``--repeats`` times, for each ``--batch-sizes`` value, and the harness scores the harness's way's texts.
Prints per way the median wall and CPU seconds of the generation alone (no imports, no loading, no scoring), the
ratio, and how many texts differ from the harness's way's. ``--threads`` torch threads on as many cores (1: what
``make run`` gives each of the two evaluations side by side). In a clone where ``make run`` has run
(docs/results/shipped-runs.md has the figures)::

    python bench/eval_batching.py --model models/sft --batch-sizes 8 12
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import types
from dataclasses import replace

import torch

from evolforge.config.loader import load_section, read_params
from evolforge.config.roles import load_role
from evolforge.config.training import EvaluateSettings
from evolforge.eval import harness


def measure(lm, requests, batch_sizes: list[int], repeats: int) -> tuple[list[dict], list[str]]:
    """The figures of each batch size (both ways, alternating) and the harness's way's texts."""
    from lm_eval.models.huggingface import HFLM

    from evolforge.eval.batching import CrossTaskHFLM

    ways = {"per_task": HFLM.generate_until, "cross_task": CrossTaskHFLM.generate_until}
    rows, reference = [], None
    for batch_size in batch_sizes:
        lm.batch_size_per_gpu = batch_size  # the hf model's batch_size
        times: dict[str, list[tuple[float, float]]] = {way: [] for way in ways}
        texts: dict[str, list[str]] = {}
        for _ in range(repeats):
            for way, generate in ways.items():
                wall, cpu = time.perf_counter(), time.process_time()
                texts[way] = generate(lm, requests, True)
                times[way].append((time.perf_counter() - wall, time.process_time() - cpu))
        reference = reference or texts["per_task"]
        row = {"batch_size": batch_size, "requests": len(requests),
               "differ": sum(a != b for a, b in zip(texts["per_task"], texts["cross_task"], strict=True))}
        for way in ways:
            row[f"{way}_wall_s"] = round(statistics.median(t[0] for t in times[way]), 2)
            row[f"{way}_cpu_s"] = round(statistics.median(t[1] for t in times[way]), 2)
        row["wall_ratio"] = round(row["per_task_wall_s"] / row["cross_task_wall_s"], 2)
        rows.append(row)
    return rows, reference


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="the model evaluated (default: roles.base)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                        help="default: evaluate.batch_size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])
    params = read_params(args.params)
    base = load_role(params, "base")
    settings = replace(load_section(params, "evaluate", EvaluateSettings), cross_task_batches=True)  # both ways
    if settings.backend != "hf":
        raise SystemExit(f"evaluate.backend is {settings.backend}: the batches across tasks are the hf backend's")
    batch_sizes = args.batch_sizes or [settings.batch_size]
    rows: list[dict] = []
    made = harness._harness_model

    def measuring_model(s, model_args, device):
        lm = made(s, model_args, device)

        def generate_until(self, requests, disable_tqdm=False):
            figures, texts = measure(self, requests, batch_sizes, args.repeats)
            rows.extend(figures)
            return texts

        lm.generate_until = types.MethodType(generate_until, lm)
        return lm

    harness._harness_model = measuring_model
    with tempfile.TemporaryDirectory() as out:
        report = harness.evaluate({"model": args.model or base.model}, out, settings, revision=base.revision)
    print(f"generation of {rows[0]['requests'] if rows else 0} requests on {args.threads} thread(s), median of "
          f"{args.repeats}: seconds wall / CPU")
    print(f"{'batch':>5} {'per task':>16} {'across tasks':>16} {'ratio':>6} {'texts differ':>13}")
    for row in rows:
        print(f"{row['batch_size']:>5} {row['per_task_wall_s']:>8.2f} / {row['per_task_cpu_s']:<6.2f}"
              f" {row['cross_task_wall_s']:>8.2f} / {row['cross_task_cpu_s']:<6.2f} {row['wall_ratio']:>6.2f}"
              f" {row['differ']:>13}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"threads": args.threads, "repeats": args.repeats, "rows": rows, "scores": report["model"]},
                      f, indent=2)


if __name__ == "__main__":
    main()
