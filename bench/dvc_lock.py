"""What dvc.lock costs each stage `dvc repro` runs: after every stage DVC reads the whole lock back (a YAML round
trip that keeps its comments and order) and writes it again with the stage's new entry.

    python bench/dvc_lock.py [--lock dvc.lock] [--repeats 3]

Times that round trip, DVC's own ``modify_yaml`` on a copy, for the lock as it is and for the same lock without
its ``src/`` deps (the source files each stage runs, listed one by one by tools/stage_deps.py: most of its entries):
the form one digest file per stage in their place would leave. Prints the lines of each, its seconds (the median
of ``--repeats``) and what they come to over the lock's stages, each of which a full run rewrites once.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def without_source_deps(text: str) -> str:
    """The lock with every ``- path: src/...`` dep entry (its hash, md5 and size lines) left out."""
    return re.sub(r"^    - path: src/.*\n(?:      .*\n)*", "", text, flags=re.M)


def round_trip_s(path: Path, repeats: int) -> float:
    """Median seconds of DVC's read-modify-write of ``path``, one stage's entry touched."""
    from dvc.utils.serialize import modify_yaml

    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        with modify_yaml(path) as data:
            first = next(iter(data["stages"]))
            data["stages"][first]["cmd"] = data["stages"][first]["cmd"]
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lock", type=Path, default=REPO / "dvc.lock")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    text = args.lock.read_text(encoding="utf-8")
    stages = len(re.findall(r"^  \S.*:\s*$", text, flags=re.M))
    print(f"{args.lock}: {stages} stages, each rewriting the lock once in a full run")
    print(f"{'form':<28} {'lines':>6} {'s / stage':>10} {'s / run':>8}")
    with tempfile.TemporaryDirectory(prefix="evolforge-dvc-lock-") as scratch:
        for form, body in (("as it is", text), ("without its src/ deps", without_source_deps(text))):
            copy = Path(scratch) / "dvc.lock"
            copy.write_text(body, encoding="utf-8")
            seconds = round_trip_s(copy, args.repeats)
            print(f"{form:<28} {body.count(chr(10)):>6} {seconds:>10.2f} {seconds * stages:>8.1f}")


if __name__ == "__main__":
    main()
