"""What dvc.lock costs each stage `dvc repro` runs: after every stage DVC reads the whole lock back (a YAML round
trip that keeps its comments and order) and writes it again with the stage's new entry.

    python bench/dvc_lock.py [--lock dvc.lock] [--repeats 3]

Times that update of one stage's entry on a copy of the lock, three ways: DVC's own ``modify_yaml`` on the lock as
it is; the same without its ``src/`` deps (the source files each stage runs, listed one by one by
tools/stage_deps.py: most of its entries), the form one digest file per stage in their place would leave; and
``evolforge.core.dvc_cli``'s, which ``make run`` runs DVC with (the lock read by the C loader, only the changed
stage dumped; its one check of a lock it did not write is done before the timing, as in a run). Prints the lines
of each, its seconds (the median of ``--repeats``) and what they come to over the lock's stages, each of which a
full run rewrites once, and the ratio of DVC's own to evolforge's.
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


def round_trip_s(path: Path, repeats: int, modify=None) -> float:
    """Median seconds of an update of one stage's entry in ``path`` by ``modify`` (DVC's ``modify_yaml`` by
    default), the entry replaced by a changed copy as ``dvc repro`` replaces it after the stage ran."""
    from dvc.utils.serialize import modify_yaml

    modify = modify or modify_yaml
    times = []
    for k in range(repeats):
        started = time.perf_counter()
        with modify(path) as data:
            first = next(iter(data["stages"]))
            data["stages"].update({first: {**data["stages"][first], "cmd": f"echo {k}"}})
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def evolforge_s(path: Path, repeats: int) -> float:
    """:func:`round_trip_s` through ``evolforge.core.dvc_cli.modify_yaml``, after its one check of the lock."""
    from evolforge.core import dvc_cli

    round_trip_s(path, 1, dvc_cli.modify_yaml)
    return round_trip_s(path, repeats, dvc_cli.modify_yaml)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lock", type=Path, default=REPO / "dvc.lock")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    text = args.lock.read_text(encoding="utf-8")
    stages = len(re.findall(r"^  \S.*:\s*$", text, flags=re.M))
    print(f"{args.lock}: {stages} stages, each rewriting the lock once in a full run")
    print(f"{'form':<28} {'lines':>6} {'s / stage':>10} {'s / run':>8}")
    forms = (("as it is", text, round_trip_s), ("without its src/ deps", without_source_deps(text), round_trip_s),
             ("as it is, evolforge's", text, evolforge_s))
    seconds = {}
    with tempfile.TemporaryDirectory(prefix="evolforge-dvc-lock-") as scratch:
        for k, (form, body, timed) in enumerate(forms):
            copy = Path(scratch) / str(k) / "dvc.lock"
            copy.parent.mkdir()
            copy.write_text(body, encoding="utf-8")
            seconds[form] = timed(copy, args.repeats)
            print(f"{form:<28} {body.count(chr(10)):>6} {seconds[form]:>10.2f} {seconds[form] * stages:>8.1f}")
    print(f"DVC's own / evolforge's: {seconds['as it is'] / seconds[forms[2][0]]:.1f}x")

if __name__ == "__main__":
    main()
