"""End to end, continued: the experiments that switch the evolution strategy or the data scenario, and a
forced rerun, each on this module's own copy of the full build that tests/test_pipeline.py checks
(``pipeline_built``, tests/conftest.py: built once per pytest run), started from the committed build
(``back_to_built``). Apart from tests/test_pipeline.py so that the two can run on two pytest-xdist workers.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import polars as pl
import pytest
import yaml

from pipeline_build import back_to_built, metric, run, stages_run

pytestmark = pytest.mark.slow


def test_hand_written_methods_experiment(pipeline_built):
    """Hand-written Evol-Instruct methods on a smaller seed set: seed and every round rerun, optimize costs
    nothing (run up to respond: what follows is the full build's, covered above)."""
    work, env, _ = pipeline_built
    back_to_built(work, env)
    exp = run(["dvc", "exp", "run", "-S", "evolve.strategy=evol", "-S", "seed.limit=6", "respond"], work, env)
    ran = stages_run(exp)
    assert {"seed", "evolve@round_1", "evolve@round_2", "respond"} <= set(ran) and "fetch_model" not in ran
    assert metric(work, "seed.json")["rows_written"] == 6
    assert metric(work, "optimize.json")["skipped"] is True and metric(work, "optimize.json")["calls"] == 0
    assert metric(work, "evolve/round_1.json")["in"] == 6
    methods = set(pl.read_parquet(work / "data/evolved/round_1/items.parquet")["method"])
    assert methods <= {"add_constraints", "deepening", "concretizing", "reasoning", "breadth"} and len(methods) > 1
    shown = subprocess.run(["dvc", "exp", "show", "--json"], cwd=work, env=env, capture_output=True, text=True,
                           check=True).stdout
    assert '"top_fraction"' in shown and "finetuned" in shown  # a param and the evaluation rows


def test_autoif_scenario(pipeline_built):
    """The AutoIF scenario: its stages run; the tiny model writes no verifiable function, so the pool falls
    back to the evolved data, visibly, and nothing after the switch has to rerun."""
    work, env, _ = pipeline_built
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


def test_forced_rerun_of_an_llm_stage_makes_no_call(pipeline_built):
    """Forcing an LLM stage to run again with the same inputs makes no new call."""
    work, env, _ = pipeline_built
    back_to_built(work, env)
    run(["dvc", "repro", "-f", "-s", "respond"], work, env)
    respond = metric(work, "respond.json")
    # the evolved items' answers come from their round tables, the seeds' from the cache
    assert respond["calls"] == 0 and respond["cache_hits"] + respond["check_answers_reused"] == respond["items"] > 0
    assert respond["check_answers_reused"] > 0


def test_plan_after_editing_each_prompt_template(pipeline_built):
    """`evolforge plan` on the shipped run after a line is added to one of its prompt templates, in turn, for
    templates that together are read by every stage that reads one (each plan costs about 40 s on two cores): it
    plans every stage that template makes stale (compare included: its roles compare_tuned and compare_other are
    made by the stage, named nowhere in params.yaml), never an error."""
    work, env, _ = pipeline_built
    back_to_built(work, env)
    stages = yaml.safe_load((work / "dvc.yaml").read_text())["stages"]
    deps = {name: [d for d in stage.get("do", stage).get("deps", []) if isinstance(d, str) and d.startswith("prompts/")]
            for name, stage in stages.items()}

    def readers(template: Path) -> frozenset[str]:
        path = str(template.relative_to(work))
        return frozenset(name for name, paths in deps.items()
                         if any(path == d or path.startswith(d.rstrip("/") + "/") for d in paths))

    # the shipped run's templates: those a stage of dvc.yaml depends on (evolver_analysis, an experiment, is none);
    # each next one the template read by most stages not yet covered (a greedy set cover, ties by path)
    read = {t: readers(t) for t in sorted((work / "prompts").rglob("*.j2")) if readers(t)}
    assert len(read) >= 15
    uncovered = set().union(*read.values())
    templates = []
    while uncovered:
        template = max(read, key=lambda t: len(read[t] & uncovered))
        templates.append(template)
        uncovered -= read[template]
    planned_any = set()
    for template in templates:
        before = template.read_text()
        template.write_text(before + "\nAnswer carefully.\n")
        try:
            done = subprocess.run(["evolforge", "plan", "--json"], cwd=work, env=env, capture_output=True, text=True)
        finally:
            template.write_text(before)
        name = template.relative_to(work)
        assert done.returncode == 0, f"{name}: {done.stderr[-2000:]}"
        assert "error" not in done.stderr, f"{name}: {done.stderr[-2000:]}"
        plan = json.loads(done.stdout)
        assert plan["stale"], f"{name}: nothing stale after editing it"
        assert not plan["failed"], f"{name}: dry runs failed: {plan['notes']}"
        planned_any |= set(plan["stale"])
    assert "compare" in planned_any  # respond's template feeds what the tuned model is compared on
