"""The scenario switch (evol | autoif) and how the AutoIF stages are wired: the default evol path keeps its data
unchanged, the AutoIF stages cost nothing unless asked for, and an AutoIF branch left empty falls back visibly."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from dvc_commands import dvc_args
from evolforge.steps.pool.step import pick_pool
from evolforge.io.records import LINEAGE, read_table, write_output
from evolforge.io.validation import DataError

STAGES_READING_THE_POOL = ("dedup",)  # the first stage after the switch; the rest read its descendants


def answered(ids: list[str], method: str) -> pl.DataFrame:
    return pl.DataFrame({"id": ids, "root_id": ids, "parent_id": [None] * len(ids), "round": [1] * len(ids),
                         "method": [method] * len(ids), "status": ["evolved"] * len(ids),
                         "failure_reason": [None] * len(ids), "instruction": [f"do {i}" for i in ids],
                         "input": [""] * len(ids), "output": [f"done {i}" for i in ids]},
                        schema_overrides={"parent_id": pl.String, "failure_reason": pl.String, "round": pl.Int32})


EVOL, AUTOIF = answered(["e1", "e2"], "deepening"), answered(["a1"], "autoif")
EMPTY = AUTOIF.clear()


def test_pick_pool_rules():
    assert pick_pool("evol", EVOL, AUTOIF).table.equals(EVOL)  # evol never looks at the AutoIF table
    chosen = pick_pool("autoif", EVOL, AUTOIF)
    assert chosen.table.equals(AUTOIF) and chosen.fallback is None and chosen.source == "data/autoif/responses"
    fallback = pick_pool("autoif", EVOL, EMPTY, "evol")
    assert fallback.table.equals(EVOL) and fallback.source == "data/responses"
    assert fallback.fallback.startswith("no_autoif_items") and fallback.scenario == "autoif"
    with pytest.raises(DataError, match=r"data/autoif/responses: rule 'autoif.on_empty: fail'"):
        pick_pool("autoif", EVOL, EMPTY, "fail")
    with pytest.raises(ValueError, match="scenario"):
        pick_pool("both", EVOL, AUTOIF)


def run_stage(work: Path, script: str, monkeypatch, capsys) -> tuple[int, str]:
    """Run a stage script in this process (each interpreter start re-imports Great Expectations, ~10 s),
    from ``work``; returns (exit code, stderr)."""
    import runpy

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "argv", [script, *dvc_args(script)])
    code = 0
    try:
        runpy.run_path(str(repo / "stages" / script), run_name="__main__")
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    return code, capsys.readouterr().err


def write_params(work: Path, **autoif) -> None:
    # a role pointing at a folder that does not exist: a stage that loaded a model would fail loudly
    roles = {name: {"backend": "hf", "model": "models/absent"} for name in ("evolver", "responder")}
    (work / "params.yaml").write_text(yaml.safe_dump({"roles": roles, "autoif": autoif}))


@pytest.fixture
def work(tmp_path, repo) -> Path:
    (tmp_path / "data/seeds").mkdir(parents=True)
    (tmp_path / "data/seeds/autoif_constraints.txt").write_text((repo / "data/seeds/autoif_constraints.txt").read_text())
    (tmp_path / "prompts").symlink_to(repo / "prompts")
    write_output(tmp_path / "data/responses", EVOL, meta={})
    return tmp_path


def test_autoif_stages_skip_without_a_model_and_the_evol_pool_is_unchanged(work, monkeypatch, capsys):
    """scenario evol: the AutoIF stages write empty outputs marked skipped (loading no model: the roles point
    nowhere), and pick_scenario hands dedup the evol table as it is."""
    write_params(work, scenario="evol")
    for script in ("autoif_constraints.py", "autoif_verify.py", "autoif_respond.py", "pick_scenario.py"):
        code, err = run_stage(work, script, monkeypatch, capsys)
        assert code == 0, f"{script}: {err[-2000:]}"
    for name in ("constraints", "verify", "respond"):
        assert json.loads((work / f"metrics/autoif/{name}.json").read_text())["skipped"] is True
    assert read_table(work / "data/autoif/responses").is_empty()
    assert read_table(work / "data/pool").equals(read_table(work / "data/responses"))
    pool = json.loads((work / "metrics/pool.json").read_text())
    assert pool["scenario"] == "evol" and pool["fallback"] is None and pool["items"] == 2


def test_pick_scenario_falls_back_visibly_or_stops(work, monkeypatch, capsys):
    write_output(work / "data/autoif/responses", EMPTY, meta={})
    write_params(work, scenario="autoif", on_empty="evol")
    code, err = run_stage(work, "pick_scenario.py", monkeypatch, capsys)
    assert code == 0 and "WARNING: scenario autoif fell back to data/responses" in err
    pool = json.loads((work / "metrics/pool.json").read_text())
    assert pool["scenario"] == "autoif" and pool["autoif_items"] == 0 and pool["fallback"].startswith("no_autoif_items")
    meta = json.loads((work / "data/pool/meta.json").read_text())
    assert meta["fallback"] == pool["fallback"]
    # the card reads the pool's meta.json: it carries the versions recorded by the branch it came from
    assert meta["versions"] == json.loads((work / "data/responses/meta.json").read_text())["versions"]
    # and its settings: the choice, with the settings the branch recorded
    branch = json.loads((work / "data/responses/meta.json").read_text()).get("settings")
    assert meta["settings"] == {"scenario": "autoif", "on_empty": "evol", "branch": branch}

    write_params(work, scenario="autoif", on_empty="fail")
    code, err = run_stage(work, "pick_scenario.py", monkeypatch, capsys)
    assert code != 0 and "autoif.on_empty: fail" in err and "Traceback" not in err

    write_output(work / "data/autoif/responses", AUTOIF, meta={})
    code, err = run_stage(work, "pick_scenario.py", monkeypatch, capsys)
    assert code == 0 and read_table(work / "data/pool").equals(AUTOIF)


def test_dvc_yaml_routes_the_pool_through_pick_scenario(repo):
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    assert "data/pool" in stages["pick_scenario"]["outs"]
    assert {"data/responses", "data/autoif/responses"} <= set(stages["pick_scenario"]["deps"])
    assert {"autoif.scenario", "autoif.on_empty"} <= set(stages["pick_scenario"]["params"])
    for name in STAGES_READING_THE_POOL:
        assert "data/pool" in stages[name]["deps"] and "--items data/pool" in stages[name]["cmd"]
    # nothing after the switch reads the evol answers directly; select's dataset card and the report name the
    # respond stage's model and prompt hash (its meta.json)
    for name, stage in stages.items():
        if name not in ("pick_scenario", "select", "report"):
            assert "data/responses" not in stage.get("deps", []), name
    chain = [("autoif_constraints", "data/autoif/constraints"), ("autoif_verify", "data/autoif/verified"),
             ("autoif_respond", "data/autoif/responses")]
    for (_, out), (name, _) in zip(chain, chain[1:] + [("pick_scenario", None)]):
        assert out in stages[name]["deps"], f"{name} must depend on {out}"
    for name, role in (("autoif_constraints", "evolver"), ("autoif_verify", "evolver"), ("autoif_respond", "responder")):
        assert f"roles.{role}" in stages[name]["params"] and {"models/identity.json": [role]} in stages[name]["params"]
    compare = stages["compare"]
    assert "models/sft" in compare["deps"] and {"models/identity.json": ["base", "judge"]} in compare["params"]
    assert any("metrics/compare.json" in m for m in compare["metrics"])


def test_shipped_params_run_the_evol_path(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["autoif"]["scenario"] == "evol"  # `make run` builds the evolved data; AutoIF is an experiment
    assert set(LINEAGE) <= set(EVOL.columns)


def test_compare_instructions_are_held_out(repo):
    """The W/T/L set must not contain a seed the fine-tuned model could have been trained on."""
    def instructions(name: str) -> set[str]:
        lines = (repo / "data/seeds" / name).read_text(encoding="utf-8").splitlines()
        return {" ".join(json.loads(line)["instruction"].lower().split()) for line in lines if line.strip()}

    held_out = instructions("compare.jsonl")
    assert len(held_out) == 20 and not held_out & instructions("demo.jsonl")


def test_compare_stage_runs_on_tiny_models(tmp_path, repo, monkeypatch, capsys):
    """The stage as dvc.yaml runs it: models/sft against roles.base, judged in both orders, counts in metrics."""
    from tiny import build_random_llama, pseudo_words

    words = pseudo_words(120)
    texts = [" ".join(words[i:i + 12]) for i in range(0, 108)]  # a small corpus keeps tokenizer training quick
    small = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}
    build_random_llama(tmp_path / "models/base", seed=0, vocab_size=300, texts=texts, **small)
    from transformers import AutoTokenizer  # the same tokenizer for the second model: one tokenizer training

    build_random_llama(tmp_path / "models/sft", seed=1, tokenizer=AutoTokenizer.from_pretrained(tmp_path / "models/base"),
                       **small)
    (tmp_path / "prompts").symlink_to(repo / "prompts")
    (tmp_path / "data/seeds").mkdir(parents=True)
    (tmp_path / "data/seeds/compare.jsonl").write_text((repo / "data/seeds/compare.jsonl").read_text())
    roles = {"base": {"backend": "hf", "model": "models/base"},
             "judge": {"backend": "hf", "model": "models/base", "temperature": 0.0, "max_tokens": 6}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "cache": {"path": str(tmp_path / "cache.sqlite")}, "roles": roles,
        "compare": {"limit": 3, "max_tokens": 6, "both_orders": True}}))
    code, err = run_stage(tmp_path, "compare_models.py", monkeypatch, capsys)
    assert code == 0, err[-2000:]
    metrics = json.loads((tmp_path / "metrics/compare.json").read_text())
    assert metrics["win"] + metrics["tie"] + metrics["lose"] == metrics["items"] == 3
    assert metrics["calls"]["judge"] == 6  # three pairs, both orders
    table = read_table(tmp_path / "data/compare")
    assert table.height == 3 and set(table["verdict"]) <= {"win", "tie", "lose"}
    assert table["answer_tuned"].to_list() != table["answer_other"].to_list()  # two different models answered


# --- the AutoIF happy path: constraints -> verification -> responses -> pool -> judge, with a scripted backend ---

NEW_CONSTRAINT = "Do not use the letter z in your answer."


def scripted_reply(request) -> str:
    """A scripted fake evolver / responder / judge, routed by what each prompt asks for (the test double of
    a model that follows the AutoIF prompts). Verification answers use the ``lines`` form."""
    prompt = request.messages[-1][1]
    if prompt.startswith("Instruction: "):
        constraint = prompt.split("\n", 1)[0].removeprefix("Instruction: ")
        wants_function = "Write a Python function `evaluate(response)`" in prompt
        if constraint == NEW_CONSTRAINT:
            return ("```python\ndef evaluate(response):\n    return 'z' not in response.lower()\n```" if wants_function
                    else "FOLLOWS: A calm answer.\nBREAKS: A lazy answer.")
        if "commas" in constraint:
            return ("```python\ndef evaluate(response):\n    return ',' not in response\n```" if wants_function
                    else "FOLLOWS: One two three.\nBREAKS: One, two, three.")
        return "I cannot write that."  # every other constraint: no function, no case
    if prompt.startswith("You write instructions"):
        return f"Here are some:\n- {NEW_CONSTRAINT}\n- do not use any commas in your answer"  # one new, one a seed's duplicate
    if prompt.startswith("Please answer the query strictly"):
        return "Here is a plain answer with no special marks"
    if "from 0 to 100" in prompt:
        return "60"
    return "hard"  # the judge's level


def load_stage(repo: Path, script: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(script.removesuffix(".py"), repo / "stages" / script)
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    return stage


def test_autoif_happy_path_reaches_the_pool_and_the_judge(work, repo, monkeypatch, capsys):
    """scenario autoif with a model that follows the prompts: constraints are verified in the sandbox, the
    answers pass their functions, the pool is the AutoIF items (no fallback) and the judge scores them."""
    from evolforge.llm.cached import LLM
    from evolforge.llm.backends.fake import FakeBackend

    (work / "data/seeds/demo.jsonl").write_text((repo / "data/seeds/demo.jsonl").read_text())
    monkeypatch.chdir(work)
    monkeypatch.setenv("EVOLFORGE_CACHE", str(work / "cache.sqlite"))
    params = {"roles": {name: {"backend": "hf", "model": "fake"} for name in ("evolver", "responder", "judge")},
              "judge": {"constrain": False},
              "autoif": {"scenario": "autoif", "on_empty": "fail", "self_instruct_calls": 1, "max_constraints": None,
                         "functions_per_constraint": 2, "queries_per_constraint": 2, "case_timeout_s": 2.0}}
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    fake = FakeBackend(scripted_reply)
    monkeypatch.setattr("evolforge.steps.common.llms.open_role", lambda role, cache, settings: LLM(fake, None, role=role))
    for script in ("autoif_constraints.py", "autoif_verify.py", "autoif_respond.py", "pick_scenario.py", "judge.py"):
        stage = load_stage(repo, script)
        # dvc.yaml's arguments; judge reads the pool itself here (no dedup / decontaminate in between)
        argv = [script] + [{"data/clean": "data/pool"}.get(a, a) for a in dvc_args(script)]
        monkeypatch.setattr(sys, "argv", argv)
        stage.main()

    verify = json.loads((work / "metrics/autoif/verify.json").read_text())
    assert verify["constraints"] == 31 and verify["constraints_verified"] == 2  # the new one and the commas seed
    assert verify["constraints_dropped"] == {"no_parsable_sample": 29}
    verified = read_table(work / "data/autoif/verified").filter(pl.col("status") == "kept")
    assert sorted(verified["constraint"]) == ["Do not use any commas in your answer.", NEW_CONSTRAINT]
    respond = json.loads((work / "metrics/autoif/respond.json").read_text())
    assert (respond["pairs"], respond["responses_kept"], respond["mean_pass_rate"]) == (4, 4, 1.0)

    pool = json.loads((work / "metrics/pool.json").read_text())
    assert (pool["scenario"], pool["fallback"], pool["items"], pool["autoif_items"]) == ("autoif", None, 4, 4)
    assert pool["per_method"] == {"autoif": 4}
    items = read_table(work / "data/pool")
    assert set(items["instruction"]) == set(verified["constraint"]) and set(items["parent_id"]) == set(verified["id"])
    judged = read_table(work / "data/judged")
    assert sorted(judged["id"]) == sorted(items["id"])
    assert judged["difficulty_score"].to_list() == [60.0] * 4 and set(judged["difficulty_level"]) == {"hard"}
    asked = [r.messages[-1][1] for r in fake.sent]
    assert sum(p.startswith("Please answer the query strictly") for p in asked) == 4
    assert sum(p.startswith("Instruction: ") for p in asked) == 31 * 2 * 2  # K=2 samples of two calls each
