"""What importing transformers' model classes costs a stage process under evolforge's import hook
(:mod:`evolforge.import_hooks`), each in a fresh interpreter, the forms alternating: without the hook (both of its
changes off), with the scikit-learn change alone (``EVOLFORGE_TRANSFORMERS_IMPORT_CACHE=0``: transformers scans
its models folder as it does), and with both (the models folder's import structure read back from disk).

    PYTHONPATH=src python bench/import_cost.py [--repeats 5]

Each run imports evolforge, then ``AutoModelForCausalLM`` from transformers and touches its loader (what a stage
that loads a model does before reading any weight), and reports its wall seconds and whether ``sklearn`` was
imported. The structure is kept in a scratch cache folder, written by one run before the measured ones. Prints the
best and the median of each form and what each change saves.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
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


FORMS = {  # name -> the hook's variables
    "without the hook": {"EVOLFORGE_TRANSFORMERS_SKLEARN": "1", "EVOLFORGE_TRANSFORMERS_IMPORT_CACHE": "0"},
    "sklearn change only": {"EVOLFORGE_TRANSFORMERS_IMPORT_CACHE": "0"},
    "with the hook": {},
}


def one(variables: dict[str, str], cache: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVOLFORGE_TRANSFORMERS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", PROBE], env={**env, "XDG_CACHE_HOME": cache, **variables},
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each form, alternating")
    args = parser.parse_args(argv)
    runs: dict[str, list[dict]] = {name: [] for name in FORMS}
    with tempfile.TemporaryDirectory(prefix="evolforge-import-cost-") as cache:
        one(FORMS["with the hook"], cache)  # writes the kept structure
        for _ in range(args.repeats):
            for name, variables in FORMS.items():
                runs[name].append(one(variables, cache))
    median = {name: statistics.median(r["s"] for r in found) for name, found in runs.items()}
    for name, found in runs.items():
        seconds = [r["s"] for r in found]
        imported = sum(r["sklearn"] for r in found)
        print(f"{name:20s} best {min(seconds):.2f} s, median {median[name]:.2f} s "
              f"({len(seconds)} runs; sklearn imported in {imported})")
    print(f"saved per process (medians): the sklearn change "
          f"{median['without the hook'] - median['sklearn change only']:.2f} s, the kept import structure "
          f"{median['sklearn change only'] - median['with the hook']:.2f} s")


if __name__ == "__main__":
    main()
