"""End to end: the real stages under `dvc repro` on a temporary copy of the repository (tests/pipeline_build.py
says how it is set up), and the experiments whose reruns the pipeline promises to keep small.

The full build runs once per pytest run (``pipeline_built``, tests/conftest.py); here, one test per step of
the story: the prepared copy, the build's outputs, a no-op rebuild, then a selection experiment, a new
embedder and its weights replaced in place, and a prompt edit, each started from the committed build
(``back_to_built``), so no test pays for another's leftovers and each has its own timeout (the copy's tiny
model counts in the first test's, the build in the second's; a single test of the whole story ran past
900 s on a busy machine). tests/test_pipeline_scenarios.py runs the other experiments on its own copy of the
same build, on another pytest-xdist worker where there is one.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import polars as pl
import pytest
import yaml

from pipeline_build import FAST, OTHER, TINY, TINY_GGUF, back_to_built, metric, prepared_copy, run, stages_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, repo) -> Path:
    return prepared_copy(tmp_path_factory, repo)


def test_copy_prepared(prepared):
    """The copy before any stage runs: no lock, every role on the tiny model, the fast settings. First, so that
    building the tiny model counts in this test's timeout, not in the full build's."""
    work = prepared
    params = yaml.safe_load((work / "params.yaml").read_text())
    assert not (work / "dvc.lock").exists() and (work / TINY / "config.json").is_file()
    assert {(role["backend"], role["model"]) for role in params["roles"].values()} == {("hf", TINY), ("llamacpp", TINY_GGUF)}
    assert all(params[section][key] == value for (section, key), value in FAST.items())


def test_full_build(pipeline_built):
    work, env, out = pipeline_built
    ran = stages_run(out)
    for stage in ("fetch_model", "models", "seed", "optimize", "evolve@round_1", "evolve@round_2", "respond", "dedup",
                  "decontaminate", "judge", "score", "diversity", "verify", "select", "finetune", "evaluate_base", "evaluate", "report",
                  "autoif_constraints", "autoif_verify", "autoif_respond", "pick_scenario", "compare"):
        assert stage in ran
    assert (work / "models/SmolLM2-135M-Instruct/model.safetensors").is_file()  # the shipped model, converted
    identity = json.loads((work / "models/identity.json").read_text())
    assert set(identity) == {"evolver", "optimizer", "responder", "judge", "scorer", "embedder", "base"}
    # every role on the tiny model: as safetensors (hf) or written as GGUF (the shipped llamacpp roles)
    assert len({json.dumps(e["identity"]) for e in identity.values()}) == 2

    assert metric(work, "seed.json")["rows_written"] == 8
    evolve = metric(work, "evolve.json")
    for name in ("round_1", "round_2"):  # the shipped evolve.rounds
        r = evolve[name]
        assert r["in"] == r["evolved"] + r["failed"] == 8  # keep_parent: the pool stays whole
        assert r["calls"] + r["cache_hits"] > 0
        assert r["check_role"] == "responder"  # auto: every role on one model, so the responder costs no load
    assert metric(work, "optimize.json")["skipped"] is False
    assert (work / "data/method/method.txt").read_text().strip()
    responses = metric(work, "respond.json")
    evolved = sum(evolve[n]["evolved"] for n in ("round_1", "round_2"))
    assert responses["items"] == 8 + evolved  # + the seeds
    # evolve's response check asked the responder what respond asks: every evolved item's answer is taken
    # from its round table, and the seeds' were asked in round 1's check call (respond.include_seed), so respond
    # finds them in the call cache
    assert responses["check_answers_reused"] == evolved and responses["calls"] + responses["cache_hits"] == 8
    assert metric(work, "evolve/round_1.json")["answered_ahead"] == 8 and responses["calls"] == 0
    clean = metric(work, "decontaminate.json")["kept"]
    assert clean == responses["items"] - metric(work, "dedup.json")["removed"] - metric(work, "decontaminate.json")["flagged"]
    assert metric(work, "score.json")["items"] == metric(work, "diversity.json")["items"] == clean
    selected = [json.loads(line) for line in (work / "data/selected/train.jsonl").read_text().splitlines()]
    assert selected and selected[0]["prompt"][0]["role"] == "user" and selected[0]["completion"][0]["role"] == "assistant"
    judge = metric(work, "judge.json")
    assert judge["items"] == clean == sum(r["items"] for r in judge["per_round"].values())
    for r in judge["per_round"].values():  # each round's spread beside its mean (null under two items)
        assert (r["sd_difficulty_score"] is None) == (r["items"] < 2) and "mean_difficulty_expected" in r
    assert (work / "reports/index.html").stat().st_size > 10_000  # the offline report page
    assert "gsm8k/exact_match_flexible" in metric(work, "eval_base.json")["base"]
    assert "humaneval/pass@1" in metric(work, "eval.json")["finetuned"]  # model-written code ran in the sandbox
    # scenario evol: the AutoIF stages cost nothing and the pool is the evolved data as it is
    assert all(metric(work, f"autoif/{n}.json")["skipped"] for n in ("constraints", "verify", "respond"))
    assert metric(work, "pool.json")["scenario"] == "evol" and metric(work, "pool.json")["items"] == responses["items"]
    compare = metric(work, "compare.json")
    shipped_limit = yaml.safe_load((work / "params.yaml").read_text())["compare"]["limit"]
    assert compare["win"] + compare["tie"] + compare["lose"] + compare["unjudged"] == shipped_limit
    # a pair of identical answers is a tie the judge is not asked about (compare.judge_identical false)
    asked = (compare["items"] - compare["unjudged"] - compare["identical"]) * (2 if compare["both_orders"] else 1)
    assert compare["llm"]["judge"]["calls"] + compare["llm"]["judge"]["cache_hits"] == asked
    # tokens per stage and role in the metrics (counted by the hf backend here); with judge.probabilities
    # the judge ranks its allowed answers instead of generating one: prompt tokens only
    ranked = yaml.safe_load((work / "params.yaml").read_text())["judge"].get("probabilities", False)
    for name, role in (("judge.json", "judge"), ("evolve/round_1.json", "responder"), ("compare.json", "tuned")):
        stats = metric(work, name)["llm"][role]
        generated = stats["completion_tokens"] == 0 if (name, ranked) == ("judge.json", True) else stats["completion_tokens"] > 0
        assert stats["calls"] > 0 and stats["prompt_tokens"] > 0 and generated, (name, role, stats)


def test_artifacts_hold_their_declared_columns(pipeline_built):
    """Every item table of the build has the columns (names, order, types) evolforge.io.columns declares."""
    from evolforge.io import columns

    work, _, _ = pipeline_built
    responses = columns.RESPONSES  # scenario evol: the pool and the filtered tables keep respond's columns
    expected = {"data/seed/items.parquet": columns.SEED, "data/responses/items.parquet": responses,
                "data/pool/items.parquet": responses, "data/dedup/items.parquet": responses,
                "data/dedup/removed.parquet": {**responses, **columns.DUPLICATE_FLAGS},
                "data/clean/items.parquet": responses, "data/clean/removed.parquet": {**responses, **columns.CONTAMINATION_FLAGS},
                "data/judged/items.parquet": columns.JUDGED, "data/scores/items.parquet": columns.SCORES,
                "data/diversity/items.parquet": columns.DIVERSITY, "data/verified/items.parquet": columns.VERIFIED,
                **{f"data/evolved/round_{k}/items.parquet": columns.ROUND for k in (1, 2)}}
    for rel, declared in expected.items():
        assert dict(pl.read_parquet_schema(work / rel)) == declared, rel
        assert list(pl.read_parquet_schema(work / rel)) == list(declared), rel


def test_noop_rebuild(pipeline_built):
    """Nothing changed: only the models and seed stages look (they always do) and rewrite their outputs unchanged."""
    work, env, _ = pipeline_built
    back_to_built(work, env)
    before = (work / "models/identity.json").read_bytes()
    again = run(["dvc", "repro"], work, env)
    assert sorted(stages_run(again)) == ["models", "seed"] and (work / "models/identity.json").read_bytes() == before



def test_selection_experiment(pipeline_built):
    """A selection experiment reruns select and what trains on its output; the base is not benchmarked again."""
    work, env, _ = pipeline_built
    back_to_built(work, env)
    exp = run(["dvc", "exp", "run", "-S", "select.top_fraction=0.25"], work, env)
    assert set(stages_run(exp)) == {"models", "seed", "select", "finetune", "evaluate", "compare", "report"}
    assert json.loads((work / "data/selected/meta.json").read_text())["settings"]["top_fraction"] == 0.25



def test_a_role_select_does_not_use_leaves_select_up_to_date(pipeline_built):
    """The dataset card quotes what select's inputs recorded, not params.yaml: a change to a role (or a section)
    that changes none of its inputs leaves select up to date (`dvc status`, without running anything)."""
    work, env, _ = pipeline_built
    back_to_built(work, env)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["roles"]["base"]["batch_size"] = 3
    params["roles"]["embedder"]["batch_size"] = 3
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = subprocess.run(["dvc", "status", "--json"], cwd=work, env=env, capture_output=True, text=True, check=True)
    stale = set(json.loads(status.stdout))
    assert {"finetune", "diversity"} <= stale and "select" not in stale and "report" not in stale


def test_new_embedder_and_weights_replaced_in_place(pipeline_built):
    """A new embedder reruns diversity (and select where the distances moved), never IFD scoring or an LLM
    stage; then its weights replaced in place make exactly that role's stages stale."""
    work, env, _ = pipeline_built
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



def test_prompt_edit_reruns_only_its_stage(pipeline_built):
    """Editing one prompt reruns only the stage that renders it; nothing upstream makes a call."""
    work, env, _ = pipeline_built
    back_to_built(work, env)
    template = work / "prompts/judge/difficulty_level.j2"
    template.write_text(template.read_text() + "\nAnswer with the label only.\n")
    out = run(["dvc", "repro"], work, env)
    ran = stages_run(out)
    assert "judge" in ran
    assert not {"optimize", "respond", "score", "diversity", "evaluate_base"} & set(ran)
    assert not any(s.startswith("evolve@") for s in ran)
    assert metric(work, "judge.json")["calls"] > 0
