"""End to end: the real stages under `dvc repro` on a temporary copy of the repository, tiny model included.

The copy runs scaled-down params (fewer tiny-model and training steps, an 8-seed sample, one problem per
benchmark) so the suite stays quick; everything else is the shipped pipeline. One test walks the whole story, since each step needs the last.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

pytestmark = pytest.mark.slow

FAST = {
    ("tiny_model", "steps"): 200,
    ("seed", "limit"): 8,
    ("optimize", "dev_size"): 4,
    ("optimize", "batch_size"): 3,
    ("optimize", "steps"): 1,
    ("optimize", "candidates"): 2,
    ("finetune", "max_steps"): 2,
    ("evaluate", "limit"): 1,
    ("evaluate", "tasks"): ["gsm8k", "humaneval"],  # one answer-matching and one code task; all five in test_evaluate
}


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def stages_run(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, repo) -> tuple[Path, dict]:
    work = tmp_path_factory.mktemp("pipeline") / "repo"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=repo,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (repo / name).is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / name, work / name)
    (work / "dvc.lock").unlink(missing_ok=True)  # start from nothing: every stage must run here
    params = yaml.safe_load((work / "params.yaml").read_text())
    for (section, key), value in FAST.items():
        params[section][key] = value
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # experiments are git commits: give them an identity even where git has none configured (CI)
    identity = {f"GIT_{who}_{what}": value for who in ("AUTHOR", "COMMITTER")
                for what, value in (("NAME", "evolforge tests"), ("EMAIL", "tests@evolforge.invalid"))}
    env = dict(os.environ, **identity, EVOLFORGE_CACHE=str(work / ".evolforge/cache.sqlite"), DVC_NO_ANALYTICS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "commit", "-qm", "start"]):
        subprocess.run(cmd, cwd=work, check=True, env=env)
    return work, env


def metric(work: Path, name: str) -> dict:
    return json.loads((work / "metrics" / name).read_text())


def test_repro_noop_and_experiments(workdir):
    work, env = workdir
    out = run(["dvc", "repro"], work, env)
    ran = stages_run(out)
    for stage in ("tiny_model", "seed", "optimize", "evolve@round_1", "evolve@round_3", "respond", "judge", "score", "select",
                  "finetune", "evaluate"):
        assert stage in ran

    assert metric(work, "seed.json")["rows_written"] == 8
    evolve = metric(work, "evolve.json")
    for name in ("round_1", "round_2", "round_3"):
        r = evolve[name]
        assert r["in"] == r["evolved"] + r["failed"] == 8  # keep_parent: the pool stays whole
        assert r["calls"] + r["cache_hits"] > 0
    assert metric(work, "optimize.json")["skipped"] is False
    assert (work / "data/method/method.txt").read_text().strip()
    responses = metric(work, "respond.json")
    assert responses["items"] == sum(evolve[n]["evolved"] for n in ("round_1", "round_2", "round_3"))
    score = metric(work, "score.json")
    assert score["items"] == responses["items"] and score["scorer_path"].endswith("models/tiny")
    selected = [json.loads(line) for line in (work / "data/selected/train.jsonl").read_text().splitlines()]
    assert selected and selected[0]["prompt"][0]["role"] == "user" and selected[0]["completion"][0]["role"] == "assistant"
    judge = metric(work, "judge.json")
    assert judge["items"] == responses["items"]

    # nothing changed: nothing runs, no LLM call is made
    again = run(["dvc", "repro"], work, env)
    assert stages_run(again) == [] and "up to date" in again

    # a selection experiment reruns select and what trains on its output, nothing upstream
    exp = run(["dvc", "exp", "run", "-S", "select.metric=ifd"], work, env)
    assert stages_run(exp) == ["select", "finetune", "evaluate"]
    assert metric(work, "select.json")["metric"] == "ifd"
    evaluation = metric(work, "eval.json")
    assert set(evaluation["base"]) == set(evaluation["finetuned"]) and "gsm8k/exact_match_flexible" in evaluation["base"]
    assert "humaneval/pass@1" in evaluation["finetuned"]  # model-written code ran in the sandbox

    # hand-written Evol-Instruct methods on a smaller seed set: seed and every round rerun, optimize costs nothing
    exp = run(["dvc", "exp", "run", "-S", "evolve.strategy=evol", "-S", "seed.limit=6"], work, env)
    ran = stages_run(exp)
    assert "seed" in ran and "evolve@round_1" in ran and "tiny_model" not in ran
    assert metric(work, "seed.json")["rows_written"] == 6
    assert metric(work, "optimize.json")["skipped"] is True and metric(work, "optimize.json")["calls"] == 0
    assert metric(work, "evolve.json")["round_1"]["in"] == 6
    methods = set(pl.read_parquet(work / "data/evolved/round_1/items.parquet")["method"])
    assert methods <= {"add_constraints", "deepening", "concretizing", "reasoning", "breadth"} and len(methods) > 1
    shown = subprocess.run(["dvc", "exp", "show", "--json"], cwd=work, env=env, capture_output=True, text=True,
                           check=True).stdout
    assert '"ifd"' in shown and "finetuned" in shown  # an experiment's param and both evaluation rows

    # forcing an LLM stage to run again with the same inputs makes no new call
    run(["dvc", "repro", "-f", "-s", "respond"], work, env)
    respond = metric(work, "respond.json")
    assert respond["calls"] == 0 and respond["cache_hits"] == respond["items"] > 0
