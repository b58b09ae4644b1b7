"""What importing transformers' model classes costs a stage process, with evolforge's import hook
(:mod:`evolforge.import_hooks`: transformers reports scikit-learn missing) against without it
(``EVOLFORGE_TRANSFORMERS_SKLEARN=1``), each in a fresh interpreter, alternately.

    PYTHONPATH=src python bench/import_cost.py [--repeats 5]

Each run imports evolforge, then ``AutoModelForCausalLM`` from transformers and touches its loader (what a stage
that loads a model does before reading any weight), and reports its wall seconds and whether ``sklearn`` was
imported. Prints the best and the median of each form and their difference.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROBE = """
import json, sys, time
started = time.perf_counter()
import evolforge
from transformers import AutoModelForCausalLM
AutoModelForCausalLM.from_pretrained
print(json.dumps({"s": time.perf_counter() - started, "sklearn": "sklearn" in sys.modules}))
"""


def one(hooked: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    env.pop("EVOLFORGE_TRANSFORMERS_SKLEARN", None)
    if not hooked:
        env["EVOLFORGE_TRANSFORMERS_SKLEARN"] = "1"
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each form, alternating")
    args = parser.parse_args(argv)
    runs: dict[bool, list[dict]] = {True: [], False: []}
    for _ in range(args.repeats):
        for hooked in (False, True):
            runs[hooked].append(one(hooked))
    for hooked, label in ((False, "without the hook"), (True, "with the hook")):
        seconds = [r["s"] for r in runs[hooked]]
        imported = sum(r["sklearn"] for r in runs[hooked])
        print(f"{label:17s} best {min(seconds):.2f} s, median {statistics.median(seconds):.2f} s "
              f"({len(seconds)} runs; sklearn imported in {imported})")
    saved = statistics.median(r["s"] for r in runs[False]) - statistics.median(r["s"] for r in runs[True])
    print(f"saved per process: {saved:.2f} s (medians)")


if __name__ == "__main__":
    main()
