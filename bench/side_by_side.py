"""Two commands one after another on every core, against side by side on a share of the cores each: what
``make run`` does with the two evaluations (``parallel_repro --pipeline evaluate_base evaluate``).

    python bench/side_by_side.py --command CMD --command CMD [--same PATH ...] [--repeats 1]

Each ``CMD`` is a shell command; ``{mode}`` in it becomes ``apart`` or ``side_by_side``, so that the two ways
write to different places. Apart, each command has the machine to itself; side by side, each is pinned to its
share of the cores with ``OMP_NUM_THREADS`` set to it (:func:`evolforge.core.parallel_repro.core_shares`, as
``make run`` does). Prints each way's wall seconds (the median of ``--repeats``), the ratio, and for each
``--same`` path (a file or folder, ``{mode}`` in it) whether the two ways wrote the same bytes. In a clone where
``make run`` has run, the evaluations (docs/results.md has the figures)::

    python bench/side_by_side.py \\
      --command "python stages/evaluate_models.py --label base --samples /tmp/sbs/{mode}/base --metrics /tmp/sbs/{mode}/base.json" \\
      --command "python stages/evaluate_models.py --label finetuned --model models/sft --samples /tmp/sbs/{mode}/tuned --metrics /tmp/sbs/{mode}/tuned.json" \\
      --same /tmp/sbs/{mode}/base --same /tmp/sbs/{mode}/tuned
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from evolforge.core.parallel_repro import core_shares, start_on


def _run(commands: list[str], mode: str) -> float:
    """Wall seconds of ``commands`` run ``mode``'s way; raises when one fails."""
    started = time.perf_counter()
    if mode == "apart":
        for command in commands:
            subprocess.run(command.replace("{mode}", mode), shell=True, check=True)
        return time.perf_counter() - started
    running = [start_on(cores, command.replace("{mode}", mode), shell=True)
               for command, cores in zip(commands, core_shares(len(commands)))]
    codes = [proc.wait() for proc in running]
    if any(codes):
        raise SystemExit(f"side by side: a command failed (exit statuses {codes})")
    return time.perf_counter() - started


def timed(command: str, env: dict[str, str], label: str) -> tuple[float, "os.struct_rusage"]:
    """Wall seconds and resource usage (``os.wait4``'s) of one shell command run with ``env``, its output discarded;
    exits naming ``label`` when it fails."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, shell=True, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{label}: the command failed: {command}")
    return wall, usage


def same(path: str) -> bool:
    """Whether ``path`` holds the same bytes in both ways."""
    return same_bytes(Path(path.replace("{mode}", "apart")), Path(path.replace("{mode}", "side_by_side")))


def clear(target: Path) -> None:
    """Remove a file or folder a previous run wrote, if there is one."""
    shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)


def same_bytes(first: Path, second: Path) -> bool:
    """Whether two files, or two folders compared file by file, hold the same bytes."""
    if first.is_file() or second.is_file():
        return first.is_file() and second.is_file() and filecmp.cmp(first, second, shallow=False)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    if files != sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file()):
        return False
    return all(filecmp.cmp(first / name, second / name, shallow=False) for name in files)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--command", action="append", required=True, help="a shell command; {mode} in it: the way")
    parser.add_argument("--same", action="append", default=[], help="an output path ({mode} in it) to compare")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    if core_shares(len(args.command))[0] is None:
        print(f"note: fewer cores than commands here ({os.cpu_count()}), or none to pin: side by side is not pinned")
    seconds: dict[str, list[float]] = {"apart": [], "side_by_side": []}
    for _ in range(args.repeats):
        for mode in seconds:
            for path in args.same:  # what a previous repeat wrote is not taken for this one's
                clear(Path(path.replace("{mode}", mode)))
            seconds[mode].append(_run(args.command, mode))
    apart, side = (statistics.median(seconds[mode]) for mode in ("apart", "side_by_side"))
    print(f"{len(args.command)} commands, {os.cpu_count()} cores, median of {args.repeats}")
    print(f"one after another, every core each: {apart:8.1f} s")
    print(f"side by side, a share of the cores each: {side:8.1f} s")
    print(f"ratio (apart / side by side): {apart / side:.2f}")
    for path in args.same:
        print(f"{path}: {'the same' if same(path) else 'DIFFERENT'} both ways")


if __name__ == "__main__":
    main()
