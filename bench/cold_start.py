"""Stage commands started with torch's shared libraries out of the page cache, with and without evolforge's
read-ahead of them (:mod:`evolforge.import_hooks`, ``EVOLFORGE_READ_AHEAD``): what a torch stage pays where the
host has dropped the libraries since the last one used them.

    python bench/cold_start.py --command CMD [--command CMD ...] [--evict PATH ...] [--repeats 3]

Before each run the bench drops from the page cache (``posix_fadvise(DONTNEED)``, which needs no privilege and
touches no file's contents) every file in torch's ``lib`` folder, found without importing torch, and every
``--evict`` file or folder (a model's weights, say). ``{way}`` in a command becomes ``plain`` or ``read_ahead``, so
that the two ways write to different places. Plain runs it with ``EVOLFORGE_READ_AHEAD=0``, read_ahead with the
default. The two ways alternate, ``--repeats`` times. Prints per command and way the median wall and CPU seconds,
major page faults and MiB read from the disk (the children's ``getrusage``), and the ratio of wall times. In a clone
where ``make run`` has run (docs/results/shipped-runs.md has the figures)::

    python bench/cold_start.py --repeats 3 --evict models/SmolLM2-135M-Instruct \\
      --command "python stages/score.py --items data/clean --out /tmp/cold/{way}/scores --metrics /tmp/cold/{way}/score.json --plots /tmp/cold/{way}/plots"
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
from pathlib import Path

from side_by_side import timed  # bench/side_by_side.py

WAYS = {"plain": {"EVOLFORGE_READ_AHEAD": "0"}, "read_ahead": {}}
FIGURES = ("wall_s", "cpu_s", "major_faults", "read_mib")


def torch_libraries() -> Path | None:
    """torch's ``lib`` folder, found without importing torch (None where torch is not installed)."""
    spec = importlib.util.find_spec("torch")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]) / "lib" if locations else None


def evict(paths: list[Path]) -> int:
    """Drop every file under ``paths`` (files or folders) from the page cache; the number of files advised."""
    count = 0
    for path in paths:
        for file in ([path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]):
            handle = os.open(file, os.O_RDONLY)
            try:
                os.posix_fadvise(handle, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(handle)
            count += 1
    return count


def _run(command: str, way: str) -> dict[str, float]:
    """``command``'s figures (:data:`FIGURES`) run ``way``'s way; raises when it fails."""
    env = {k: v for k, v in os.environ.items() if k != "EVOLFORGE_READ_AHEAD"} | WAYS[way]
    wall, usage = timed(command.replace("{way}", way), env, way)
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "major_faults": usage.ru_majflt,
            "read_mib": usage.ru_inblock * 512 / 2**20}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--command", action="append", required=True, help="a shell command; {way} in it: the way")
    parser.add_argument("--evict", action="append", default=[], help="a file or folder to drop before each run too")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the medians here too")
    args = parser.parse_args(argv)
    if not hasattr(os, "posix_fadvise"):
        raise SystemExit("cold_start: needs os.posix_fadvise (Linux)")
    dropped = [p for p in [torch_libraries(), *map(Path, args.evict)] if p is not None and p.exists()]
    runs: dict[str, dict[str, list]] = {c: {w: [] for w in WAYS} for c in args.command}
    for _ in range(args.repeats):
        for way in WAYS:
            for command in args.command:
                evict(dropped)
                runs[command][way].append(_run(command, way))
    print(f"{os.cpu_count()} cores, median of {args.repeats}, dropped before each run: "
          f"{', '.join(map(str, dropped)) or 'nothing'}")
    print(f"  {'':10s} {'wall s':>7s} {'CPU s':>7s} {'faults':>7s} {'MiB read':>9s}")
    medians = {}
    for command, ways in runs.items():
        medians[command] = {w: {f: round(statistics.median(r[f] for r in ways[w]), 2) for f in FIGURES} for w in WAYS}
        print(command[:110])
        for way, m in medians[command].items():
            print(f"  {way:10s} {m['wall_s']:7.1f} {m['cpu_s']:7.1f} {m['major_faults']:7.0f} {m['read_mib']:9.1f}")
        plain, ahead = medians[command]["plain"], medians[command]["read_ahead"]
        print(f"  plain / read_ahead: wall {plain['wall_s'] / max(ahead['wall_s'], 1e-3):.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"repeats": args.repeats, "dropped": [str(p) for p in dropped],
                                               "medians": medians}, indent=2) + "\n")


if __name__ == "__main__":
    main()
