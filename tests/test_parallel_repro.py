"""Independent stages reproduced at once (:mod:`evolforge.core.parallel_repro`): ``make run``'s model fetches."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from evolforge.core import parallel_repro

REPO = Path(__file__).resolve().parents[1]
# each stage marks that it started, then waits for the other's mark: both finish only when they run at the same time
MEET = """import pathlib, sys, time
me, other = sys.argv[1], sys.argv[2]
pathlib.Path(me + ".started").write_text("x")
for _ in range(1200):
    if pathlib.Path(other + ".started").exists():
        pathlib.Path(me + ".out").write_text(me + "\\n")
        print(me, "met", other)
        sys.exit(0)
    time.sleep(0.05)
sys.exit(f"{me}: {other} never started")
"""


def _repo(tmp_path: Path, stages: dict) -> tuple[Path, dict]:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "meet.py").write_text(MEET)
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(command, cwd=repo, check=True, env=env, capture_output=True, timeout=240)
    return repo, env


def _run(repo: Path, env: dict, *stages: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evolforge.core.parallel_repro", *stages], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=240)


def test_the_stages_run_at_the_same_time_and_both_land_in_the_lock(tmp_path):
    repo, env = _repo(tmp_path, {
        "a": {"cmd": "python meet.py a b", "deps": ["meet.py"], "outs": ["a.out"]},
        "b": {"cmd": "python meet.py b a", "deps": ["meet.py"], "outs": ["b.out"]}})
    done = _run(repo, env, "a", "b")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[a] a met b\n" in done.stdout and "[b] b met a\n" in done.stdout  # each line after its stage's name
    assert (repo / "a.out").read_text() == "a\n" and (repo / "b.out").read_text() == "b\n"
    assert set(yaml.safe_load((repo / "dvc.lock").read_text())["stages"]) == {"a", "b"}
    again = _run(repo, env, "a", "b")  # up to date: nothing runs, nothing fails
    assert again.returncode == 0 and "met" not in again.stdout


def test_a_failed_stage_is_named_and_the_other_still_finishes(tmp_path):
    repo, env = _repo(tmp_path, {
        "ok": {"cmd": "python -c \"open('ok.out', 'w').write('ok')\"", "outs": ["ok.out"]},
        "bad": {"cmd": "python -c \"import sys; sys.exit('bad input')\"", "outs": ["bad.out"]}})
    done = _run(repo, env, "ok", "bad")
    assert done.returncode == 1
    assert "[bad] bad input" in done.stdout
    last = done.stderr.splitlines()[-1]  # dvc's own exit status (255 for a failed command)
    assert last.startswith("parallel_repro: stage bad failed (dvc repro's exit status ")
    assert last.endswith("); its lines above start with [bad]")
    assert (repo / "ok.out").read_text() == "ok"


def test_make_run_fetches_the_models_at_once_then_reproduces_the_rest(tmp_path):
    lines = subprocess.run(["make", "--no-print-directory", "-n", "run", f"VENV={tmp_path / 'venv'}"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    at_once = next(k for k, line in enumerate(lines) if "evolforge.core.parallel_repro" in line)
    fetches = lines[at_once].split("evolforge.core.parallel_repro", 1)[1].split()
    [pipeline] = [line for line in lines if "evolforge.core.parallel_repro --pipeline" in line]
    assert lines.index(pipeline) > at_once  # after the fetches (and the install's check: tests/test_warm_imports.py)
    rest = pipeline.split("evolforge.core.parallel_repro --pipeline", 1)[1].split()
    assert rest == ["evaluate_base", "evaluate"]  # the whole pipeline, the two evaluations side by side
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for one, other in (rest, rest[::-1]):  # neither reads what the other writes
        assert not set(stages[one]["outs"]) & set(stages[other]["deps"])
    assert sorted(fetches) == sorted(s for s in stages if s.startswith("fetch_"))
    # independent: no fetch depends on another's output
    outs = {out for s in fetches for out in stages[s]["outs"]}
    assert not any(dep in outs for s in fetches for dep in stages[s]["deps"])


def test_main_returns_1_when_a_stage_failed(monkeypatch, capsys):
    monkeypatch.setattr(parallel_repro, "repro_at_once", lambda stages: [("x", 2)])
    assert parallel_repro.main(["x", "y"]) == 1
    assert "stage x failed (dvc repro's exit status 2)" in capsys.readouterr().err


def test_an_interrupt_waits_for_every_started_stage_then_exits_130(monkeypatch, capsys):
    """Ctrl-C reaches DVC's processes too; the command waits for them (terminating one that outlives the grace
    period) and ends with one line, not a traceback."""
    started = []

    class FakeDvc:  # a test double of subprocess.Popen
        def __init__(self, args, **kwargs):
            self.stdout, self.calls, self.terminated = io.StringIO(""), [], False
            started.append(self)

        def wait(self, timeout=None):
            self.calls.append(timeout)
            if self is started[0] and len(self.calls) == 1:
                raise KeyboardInterrupt
            if self is started[1] and timeout is not None and not self.terminated:
                raise subprocess.TimeoutExpired("dvc", timeout)
            return 0

        def terminate(self):
            self.terminated = True

    monkeypatch.setattr(parallel_repro.subprocess, "Popen", FakeDvc)
    assert parallel_repro.main(["a", "b"]) == 130
    assert capsys.readouterr().err == "parallel_repro: interrupted; every stage it started has ended\n"
    assert started[0].calls == [None, 60.0] and not started[0].terminated  # it ended within the grace period
    assert started[1].calls == [60.0, None] and started[1].terminated  # it did not: terminated, then waited for


def test_an_interrupt_of_the_pipeline_lets_dvc_put_the_outputs_back_then_exits_130(monkeypatch, capsys):
    """The foreground ``dvc repro`` of ``--pipeline`` is waited for after Ctrl-C (DVC restores the stage's
    outputs), not killed as ``subprocess.run`` would."""
    started = []

    class FakeDvc:  # a test double of subprocess.Popen
        def __init__(self, args, **kwargs):
            self.args, self.calls, self.killed = args, [], False
            started.append(self)

        def wait(self, timeout=None):
            self.calls.append(timeout)
            if len(self.calls) == 1:
                raise KeyboardInterrupt
            return 0

        def kill(self):
            self.killed = True

    monkeypatch.setattr(parallel_repro.subprocess, "Popen", FakeDvc)
    monkeypatch.setattr(parallel_repro, "stage_graph", lambda: ([("report", "e1")], ["a", "e1", "report"]))
    assert parallel_repro.main(["--pipeline", "e1"]) == 130
    assert capsys.readouterr().err == "parallel_repro: interrupted; every stage it started has ended\n"
    assert len(started) == 1 and started[0].args[-2:] == ["repro", "a"]  # the stages before e1, in the foreground
    assert started[0].calls == [None, 60.0] and not started[0].killed


# each evaluation stage says how many cores it may run on and the threads it was given, then meets the other
MEET_SAYING_CORES = MEET.replace('print(me, "met", other)',
                                 'import os; print(me, "met", other, "on", len(os.sched_getaffinity(0)), "cores,", '
                                 'os.environ.get("OMP_NUM_THREADS"), "threads")')


def test_plan_around_the_stages_puts_what_follows_them_after_in_order():
    names = ["a", "e1", "e2", "last", "other", "report", "z"]
    edges = [("e1", "a"), ("e2", "a"), ("last", "e1"), ("report", "last"), ("report", "e2"), ("report", "other"),
             ("z", "a")]
    assert parallel_repro.plan_around(edges, names, ["e1", "e2"]) == (["a", "other", "z"], ["last", "report"])
    assert parallel_repro.plan_around(edges, names, ["z"]) == (["a", "e1", "e2", "last", "other", "report"], [])


def test_the_stages_before_are_reproduced_through_the_last_of_them():
    names = ["a", "e1", "e2", "last", "other", "report", "z"]
    edges = [("e1", "a"), ("e2", "a"), ("last", "e1"), ("report", "last"), ("report", "e2"), ("report", "other"),
             ("z", "a")]
    before, _ = parallel_repro.plan_around(edges, names, ["e1", "e2"])
    assert parallel_repro.last_of(edges, before) == ["other", "z"]  # a comes with z
    assert parallel_repro.last_of(edges, ["a", "e1", "e2", "last", "other", "report"]) == ["report"]
    assert parallel_repro.last_of([], ["a", "b"]) == ["a", "b"]


def test_plan_around_a_stage_dvc_yaml_lacks_or_one_that_follows_another_is_refused():
    with pytest.raises(ValueError, match="no stage nope in dvc.yaml"):
        parallel_repro.plan_around([], ["a"], ["a", "nope"])
    with pytest.raises(ValueError, match="c depends on another of a, c: they cannot run at once"):
        parallel_repro.plan_around([("b", "a"), ("c", "b")], ["a", "b", "c"], ["a", "c"])


def test_core_shares_split_the_cores_evenly(monkeypatch):
    monkeypatch.setattr(parallel_repro.os, "sched_getaffinity", lambda pid: {4, 5, 6}, raising=False)
    assert parallel_repro.core_shares(2) == [{4, 5}, {6}]
    assert parallel_repro.core_shares(4) == [None] * 4  # fewer cores than stages: not pinned
    assert parallel_repro.core_shares(1) == [None]


def test_with_the_users_omp_num_threads_nothing_is_pinned(monkeypatch):
    seen = []

    class FakeDvc:  # a test double of subprocess.Popen
        def __init__(self, args, env=None, **kwargs):
            self.stdout, self.pid = io.StringIO(""), 4242
            seen.append(env)

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(parallel_repro.subprocess, "Popen", FakeDvc)
    monkeypatch.setattr(parallel_repro.os, "sched_setaffinity", lambda pid, cores: seen.append(cores), raising=False)
    monkeypatch.setattr(parallel_repro.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert parallel_repro.repro_at_once(["a", "b"], share_cores=True) == []
    assert seen == [None, None]  # the environment as it is, no core set
    monkeypatch.delenv("OMP_NUM_THREADS")
    seen.clear()
    assert parallel_repro.repro_at_once(["a", "b"], share_cores=True) == []
    assert [env["OMP_NUM_THREADS"] for env in seen[0::2]] == ["1", "1"] and seen[1::2] == [{0}, {1}]


def test_the_pipeline_runs_the_evaluations_at_once_on_a_core_each_and_the_rest_around_them(tmp_path):
    once = "python -c \"open('runs.txt', 'a').write('x')\" && python -c \"open('always.out', 'w').write('1')\""
    repo, env = _repo(tmp_path, {
        "always": {"cmd": once, "outs": ["always.out"], "always_changed": True},
        "a": {"cmd": "python -c \"open('a.out', 'w').write(open('always.out').read())\"",
              "deps": ["always.out"], "outs": ["a.out"]},
        "e1": {"cmd": "python meet.py e1 e2", "deps": ["meet.py", "a.out"], "outs": ["e1.out"]},
        "e2": {"cmd": "python meet.py e2 e1", "deps": ["meet.py", "a.out"], "outs": ["e2.out"]},
        "last": {"cmd": "python -c \"open('last.out', 'w').write(open('e1.out').read() + open('e2.out').read())\"",
                 "deps": ["e1.out", "e2.out"], "outs": ["last.out"]}})
    (repo / "meet.py").write_text(MEET_SAYING_CORES)
    env.pop("OMP_NUM_THREADS", None)
    done = subprocess.run([sys.executable, "-m", "evolforge.core.parallel_repro", "--pipeline", "e1", "e2"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    met = [line for line in done.stdout.splitlines() if " met " in line]
    assert sorted(line.split("]")[0] for line in met) == ["[e1", "[e2"]  # at the same time, after their stage names
    if len(os.sched_getaffinity(0)) >= 2:
        cores = len(os.sched_getaffinity(0))
        assert {line.split(" on ", 1)[1] for line in met} == {f"{cores // 2} cores, {cores // 2} threads",
                                                               f"{cores - cores // 2} cores, {cores - cores // 2} threads"}
    assert (repo / "last.out").read_text() == "e1\ne2\n"
    assert (repo / "runs.txt").read_text() == "x"  # the always-changed stage ran once
    assert set(yaml.safe_load((repo / "dvc.lock").read_text())["stages"]) == {"always", "a", "e1", "e2", "last"}
