"""Stage commands with glibc's heap trimmed to its last page, against the pad a stage keeps at its top
(:data:`evolforge.core.heap.MODEL_TOP_PAD`): the system CPU a model stage spends on handing its per-step
tensors back to the kernel and having fresh pages zeroed for the next step.

    python bench/heap_pad.py --command CMD [--command CMD ...] [--same PATH ...] [--repeats 3]

Each ``CMD`` is a shell command; ``{pad}`` in it becomes ``trimmed`` or ``padded``, so that the two ways write to
different places, and ``{run}`` the repeat's number (a stage that calls an LLM gets an empty call cache each run
with ``EVOLFORGE_CACHE=/tmp/pad/{pad}/cache-{run}.sqlite`` before it). Trimmed runs it with
``MALLOC_TOP_PAD_=0`` (kept by the stage as the user's setting: glibc's own default, about what every stage ran
with before the pad), padded with the stage's own setting. The two ways
alternate, ``--repeats`` times. Prints per command and way the median wall, user and system CPU seconds, and the
ratios; for each ``--same`` path (a file or folder, ``{pad}`` in it) whether both ways wrote the same bytes. In a
clone where ``make run`` has run, the stages that run a model and make no cached call (docs/results/shipped-runs.md
has the figures)::

    python bench/heap_pad.py --repeats 3 \\
      --command "python stages/evaluate_models.py --label base --samples /tmp/pad/{pad}/eval --metrics /tmp/pad/{pad}/eval.json" \\
      --command "python stages/score.py --items data/clean --out /tmp/pad/{pad}/scores --metrics /tmp/pad/{pad}/score.json --plots /tmp/pad/{pad}/plots" \\
      --command "python stages/finetune.py --train data/selected/train.jsonl --out /tmp/pad/{pad}/sft --metrics /tmp/pad/{pad}/train.json --plot /tmp/pad/{pad}/loss.json --live /tmp/pad/{pad}/live" \\
      --same /tmp/pad/{pad}/eval/base --same /tmp/pad/{pad}/scores/items.parquet
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from side_by_side import clear, same_bytes, timed  # bench/side_by_side.py

WAYS = {"trimmed": {"MALLOC_TOP_PAD_": "0"}, "padded": {}}


def _run(command: str, way: str, run: int) -> tuple[float, float, float]:
    """(wall, user CPU, system CPU) seconds of ``command`` run ``way``'s way; raises when it fails."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TOP_PAD_"} | WAYS[way]
    wall, usage = timed(command.replace("{pad}", way).replace("{run}", str(run)), env, way)
    return wall, usage.ru_utime, usage.ru_stime


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--command", action="append", required=True, help="a shell command; {pad} in it: the way")
    parser.add_argument("--same", action="append", default=[], help="an output path ({pad} in it) to compare")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the medians here too")
    args = parser.parse_args(argv)
    runs: dict[str, dict[str, list]] = {c: {w: [] for w in WAYS} for c in args.command}
    for run in range(args.repeats):
        for way in WAYS:
            for path in args.same:  # what a previous repeat wrote is not taken for this one's
                clear(Path(path.replace("{pad}", way)))
            for command in args.command:
                runs[command][way].append(_run(command, way, run))
    print(f"{os.cpu_count()} cores, median of {args.repeats}; seconds: wall, user CPU, system CPU")
    medians = {}
    for command, ways in runs.items():
        medians[command] = {w: [round(statistics.median(r[i] for r in ways[w]), 2) for i in range(3)] for w in WAYS}
        trimmed, padded = medians[command]["trimmed"], medians[command]["padded"]
        print(command[:110])
        for way in WAYS:
            print(f"  {way:8s} {medians[command][way][0]:7.1f} {medians[command][way][1]:7.1f} "
                  f"{medians[command][way][2]:7.1f}")
        print(f"  trimmed / padded: wall {trimmed[0] / max(padded[0], 1e-3):.2f}, "
              f"CPU {(trimmed[1] + trimmed[2]) / max(padded[1] + padded[2], 1e-3):.2f}")
    for path in args.same:
        both = same_bytes(*(Path(path.replace("{pad}", way)) for way in WAYS))
        print(f"{path}: {'the same' if both else 'DIFFERENT'} both ways")
    if args.json:
        Path(args.json).write_text(json.dumps({"repeats": args.repeats, "medians": medians}, indent=2) + "\n")


if __name__ == "__main__":
    main()
