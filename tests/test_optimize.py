"""Auto Evol-Instruct optimization loop on scripted fakes: one evolver, one optimizer, no model.

The fake evolver turns ``task 03`` into ``task 03 [<method text>]``, so a response prompt names the
method that produced it. A method text like ``"m2 fails=1"`` makes the evolver's answers to the first
1 development instruction ask back ("Sure, ...?", caught by F): a method's failure rate is exactly
fails / dev size. ``nomarker`` in a method drops the final-instruction marker, ``long`` / ``xlong``
lengthen the responses (a higher reference-code score). The fake optimizer answers the analysis with
``feedback <sample_index>`` and the optimization with whatever the test's plan says for the current method.
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
import re
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest

from evolforge.config.bounds import Refusal
from evolforge.config.loader import load_section
from evolforge.config.runtime import load_llm_params

from evolforge.llm.cache import CallCache
from evolforge.steps.common import elimination
from evolforge.steps.common.elimination import auto_evol_failure
from evolforge.steps.common.llms import RoleLLMs
from evolforge.config.roles import Role
from evolforge.llm.cached import LLM
from evolforge.llm.backends.fake import FakeBackend
from evolforge.steps.optimize import step as optimize_step
from evolforge.steps.evolve.settings import EvolveSettings
from evolforge.steps.common.evolving import Evolution, EvolvingCall, initial_method_text
from evolforge.steps.optimize.candidates import amended, parse_optimized_method, with_reply_format
from evolforge.steps.optimize.scoring import FailureRules, score_method, score_methods
from evolforge.steps.optimize.settings import OptimizeSettings
from evolforge.steps.optimize.dev import split_dev_pool
from evolforge.steps.optimize.step import optimize_method, select_candidate
from evolforge.steps.optimize.trajectory import build_trajectory
from evolforge.steps.optimize.result import Candidate, MethodScore, summary, usability
from evolforge.core.prompts import DEFAULT_PROMPTS_DIR, PromptLibrary
from evolforge.io.records import SEED_POOL, write_output

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = PromptLibrary(DEFAULT_PROMPTS_DIR)
EVOLVE_SPLIT = "\n\n#Instruction#:\n"  # how optimize/evolve_with_method.j2 joins method and instruction
RESPONSE = re.compile(r"Instruction: (.*) \[(.*)\]\nResponse:", re.S)
CURRENT_METHOD = re.compile(r"```Method\n([\s\S]*?)\n```")
EVOLVER_ROLE = Role(name="evolver", backend="hf", model="fake", temperature=0.7, top_p=0.95)
OPTIMIZER_ROLE = Role(name="optimizer", backend="hf", model="fake", temperature=0.6, top_p=0.95, max_tokens=400)
UNPARSEABLE = "I have improved the method."
ZERO = EvolvingCall(temperature=0.0)  # the development runs' greedy evolving call


def items(n: int) -> list[dict]:
    return [{"id": f"id{i:02d}", "instruction": f"task {i:02d}", "input": ""} for i in range(n)]


def fenced(method: str) -> str:
    return f"Here it is.\n```Optimized Method\n{method}\n```"


def fails(method: str) -> int:
    """Failing dev items of a test method; a method without ``fails=`` (the shipped initial one) fails 4."""
    found = re.search(r"fails=(\d+)", method)
    return int(found.group(1)) if found else 4


def evolver_reply(failing):
    """``failing(method, instruction) -> bool``: whether the response to that evolved instruction asks back."""
    def reply(request) -> str:
        prompt = request.messages[-1][1]
        if EVOLVE_SPLIT in prompt:
            method, instruction = prompt.rsplit(EVOLVE_SPLIT, 1)
            # a multi-line method (the shipped one) is tagged by name: its text holds the final marker itself
            evolved = f"{instruction} [{method if chr(10) not in method else 'initial'}]"
            if "nomarker" in method:
                return f"Step 3 #Rewritten Instruction#:\n{evolved}"
            return f"Step 1 #Methods List#:\n- add a constraint\nStep 4 #Finally Rewritten Instruction#:\n{evolved}"
        instruction, method = RESPONSE.search(prompt).groups()
        if failing(method, instruction):
            return "Sure, which one do you mean?"
        return "Done: " + "x" * (4000 if "xlong" in method else 400 if "long" in method else 40)
    return reply


def optimizer_reply(plan):
    """``plan``: {current method: [reply per sample_index]} or a function (current method, j) -> reply."""
    def reply(request) -> str:
        if len(request.messages) == 1:
            return f"feedback {request.sample_index}: case 0 failed"
        current = CURRENT_METHOD.search(request.messages[-1][1]).group(1)
        if callable(plan):
            return plan(current, request.sample_index)
        return plan.get(current, [UNPARSEABLE] * 99)[request.sample_index]
    return reply


def run(plan, *, initial="m0 fails=1", n=14, cache=None, evolver_role=EVOLVER_ROLE, **overrides):
    settings = OptimizeSettings(**{"steps": 1, "candidates": 2, "batch_size": 2, "dev_size": 4, "patience": None,
                                   "racing": False, **overrides})  # every candidate on every item: the paper's loop
    rng = random.Random(settings.seed)
    dev, pool = split_dev_pool(items(n), dev_size=settings.dev_size, batch_size=settings.batch_size, rng=rng)
    dev_order = [d["instruction"] for d in dev]
    evolver_fake = FakeBackend(evolver_reply(lambda m, q: q in dev_order[:fails(m)]))
    optimizer_fake = FakeBackend(optimizer_reply(plan), model="fake-optimizer")
    evolver, optimizer = LLM(evolver_fake, cache, role=evolver_role), LLM(optimizer_fake, cache, role=OPTIMIZER_ROLE)
    result = optimize_method(pool, dev, initial_method=initial, evolver=evolver, optimizer=optimizer, prompts=PROMPTS,
                             settings=settings, rng=rng, call=ZERO)
    return SimpleNamespace(result=result, dev=dev, pool=pool, evolver=evolver, optimizer=optimizer,
                           evolver_fake=evolver_fake, optimizer_fake=optimizer_fake)


def responses_by_method(fake: FakeBackend) -> dict[str, set[str]]:
    """{method: instructions answered after evolving with it}: answers exist only for dev scoring."""
    seen: dict[str, set[str]] = {}
    for request in fake.sent:
        found = RESPONSE.search(request.messages[-1][1])
        if found and EVOLVE_SPLIT not in request.messages[-1][1]:
            seen.setdefault(found.group(2), set()).add(found.group(1))
    return seen


# --- parsers and rules ---------------------------------------------------------------------------

@pytest.mark.parametrize("response, expected", [
    ("Sure, which city do you mean?", True),                  # insufficient qualification
    ("Understood. What should the poem be about?", True),     # stagnant complexity
    ("Thank you! Could you share the data?", True),
    ("What do you mean by 'complex'?", True),
    ("I'm sorry, could you clarify?", True),
    ("  Great, which language?  ", True),                     # surrounding whitespace is ignored
    ("To answer, please provide the list of numbers.", True),  # loss of key information
    ("PLEASE PROVIDE more details.", True),                   # case-insensitive
    ("It is not possible to answer without the table.", True),
    ("Sure, here is the sorted list: 1, 2, 3.", False),       # starts with Sure but answers
    ("Why is the sky blue? Because of Rayleigh scattering.", False),
    ("The capital of France is Paris.", False),
    ("Is the sum even? Yes, 2 + 4 = 6.", False),
    ("", False),
])
def test_failure_function_f(response, expected):
    assert auto_evol_failure(response) is expected


@pytest.mark.parametrize("answer, method, error", [
    ("```Optimized Method\nStep 1: list methods.\n```", "Step 1: list methods.", None),
    ("Analysis done.\n```Optimized Method\n  Step 1: a\nStep 2: b  \n```\nThanks.", "Step 1: a\nStep 2: b", None),
    ("```Optimized Method Step 1: same line```", "Step 1: same line", None),
    ("```Optimized Method\n```", None, "empty ```Optimized Method``` block"),
    ("```Optimized Method\n<Optimized Method Here>\n```", None, "empty ```Optimized Method``` block"),
    ("```Optimized Method\n\n```\n```Optimized Method\nsecond\n```", "second", None),
    ("```Method\nthe old one\n```", None, "no ```Optimized Method``` block"),
    (UNPARSEABLE, None, "no ```Optimized Method``` block"),
    ("```optimized method\nStep 1: lower case.\n```", "Step 1: lower case.", None),  # the fence's words in any case
    ("``` Optimized_Method:\nStep 1: a\n```", "Step 1: a", None),
])
def test_parse_optimized_method(answer, method, error):
    assert parse_optimized_method(answer) == (method, error)


@pytest.mark.parametrize("answer, finish, method, error", [
    # an open block ended by the turn or a stop string at its closing fence (optimize.controls.stop) is the method
    ("```Optimized Method\nStep 1: a.\nStep 2: b.", "stop", "Step 1: a.\nStep 2: b.", None),
    ("```Optimized Method\nno closing fence", None, "no closing fence", None),
    # cut at max_tokens inside the block: refused, never completed
    ("```Optimized Method\nStep 1: a.\nStep 2:", "length", None, "the ```Optimized Method``` block was cut at max_tokens"),
    # a closed block before the cut is whole
    ("```Optimized Method\nStep 1: a.\n```\nMore talk that ran", "length", "Step 1: a.", None),
    ("```Optimized Method\n", "stop", None, "empty ```Optimized Method``` block"),
])
def test_parse_optimized_method_open_block(answer, finish, method, error):
    assert parse_optimized_method(answer, finish) == (method, error)


def score(rate: float, value: float) -> MethodScore:
    return MethodScore(failure_rate=rate, failures=int(rate * 4), missing_marker=0, success=1 - rate, score=value)


@pytest.mark.parametrize("selection, candidates, expected", [
    ("lowest_failure", [score(0.5, 9.0), score(0.25, 1.0), score(0.25, 2.0)], 1),  # lowest rate, tie -> lower index
    ("lowest_failure", [score(0.75, 9.0), None], 0),                              # worse than current: still taken
    ("lowest_failure", [None, None], None),                                       # nothing parsed: keep
    ("no_regression", [score(0.5, 9.0), score(0.25, 2.0), score(0.0, 3.0)], 2),  # by score; first that regresses nothing
    ("no_regression", [score(0.5, 9.0), score(0.25, 0.5)], None),                 # more failures / lower score: keep
    ("no_regression", [score(0.25, 1.0)], 0),                                     # equal on both counts: accepted
])
def test_select_candidate(selection, candidates, expected):
    current = score(0.25, 1.0)
    cands = [Candidate(index=j, feedback="", answer="", method=None if s is None else f"m{j}",
                       parse_error=None if s else "x", dev=s) for j, s in enumerate(candidates)]
    assert select_candidate(cands, current, selection) == expected


def test_settings_reject_unknown_values():
    with pytest.raises(ValueError, match="optimize.selection"):
        load_section({"optimize": {"selection": "best"}}, "optimize", OptimizeSettings)
    with pytest.raises(ValueError, match="unknown key"):
        load_section({"optimize": {"step": 3}}, "optimize", OptimizeSettings)
    with pytest.raises(ValueError, match="optimize.initial_method"):
        load_section({"optimize": {"initial_method": "strong"}}, "optimize", OptimizeSettings)


# --- development set -----------------------------------------------------------------------------

def test_split_is_seeded_disjoint_and_leaves_the_global_rng_alone():
    state = random.getstate()
    dev, pool = split_dev_pool(items(10), dev_size=4, batch_size=3, rng=random.Random(7))
    assert random.getstate() == state
    assert len(dev) == 4 and len(pool) == 6
    assert {d["id"] for d in dev}.isdisjoint(p["id"] for p in pool)
    assert {d["id"] for d in dev} | {p["id"] for p in pool} == {i["id"] for i in items(10)}
    assert split_dev_pool(items(10), dev_size=4, batch_size=3, rng=random.Random(7)) == (dev, pool)
    assert split_dev_pool(items(10), dev_size=4, batch_size=3, rng=random.Random(8))[0] != dev


def test_split_too_small_names_the_params():
    with pytest.raises(ValueError, match=r"optimize\.dev_size.*optimize\.batch_size"):
        split_dev_pool(items(6), dev_size=4, batch_size=3, rng=random.Random(0))


def test_same_dev_set_every_step_and_disjoint_from_minibatches():
    plan = lambda current, j: fenced(f"{current} +{j}")  # a new method per step and sample  # noqa: E731
    r = run(plan, steps=3, candidates=2)
    dev = {d["instruction"] for d in r.dev}
    answered = responses_by_method(r.evolver_fake)
    scored = {"m0 fails=1"} | {c["method"] for row in r.result.log for c in row["candidates"]}
    assert set(answered) == scored and len(scored) == 1 + 3 * 2
    assert all(seen == dev for seen in answered.values())  # every method, every step: the same dev set
    pool_ids = {p["id"] for p in r.pool}
    for row in r.result.log:
        assert len(row["minibatch_ids"]) == 2 and set(row["minibatch_ids"]) <= pool_ids
        assert dev.isdisjoint(case["stage0"] for case in row["trajectory"])
    # the trajectory was evolved with the method current at that step
    first = r.result.log[0]
    traj_prompts = [q.messages[-1][1] for q in r.evolver_fake.sent if q.messages[-1][1].startswith("m0 fails=1" + EVOLVE_SPLIT)]
    assert {p.rsplit(EVOLVE_SPLIT, 1)[1] for p in traj_prompts} == dev | {c["stage0"] for c in first["trajectory"]}


# --- the loop ------------------------------------------------------------------------------------

def test_lowest_failure_picks_the_lowest_candidate():
    plan = {"m0 fails=3": [fenced("m1 fails=4"), fenced("m2 fails=1"), fenced("m3 fails=2")]}
    r = run(plan, initial="m0 fails=3", candidates=3)
    row = r.result.log[0]
    assert [c["dev"]["failure_rate"] for c in row["candidates"]] == [1.0, 0.25, 0.5]
    assert row["chosen"] == 1
    assert r.result.method == "m2 fails=1"
    assert (r.result.initial.failure_rate, r.result.best.failure_rate) == (0.75, 0.25)
    assert [c["feedback"] for c in row["candidates"]] == [f"feedback {j}: case 0 failed" for j in range(3)]


def test_lowest_failure_moves_on_but_keeps_the_best_method_overall():
    plan = {"m0 fails=1": [fenced("a fails=3"), fenced("b fails=2")],
            "b fails=2": [fenced("c fails=0"), fenced("d fails=4")]}
    r = run(plan, steps=2)
    first, second = r.result.log
    # step 1: both candidates are worse than m0; the paper still moves to the lower one, best stays m0
    assert (first["chosen"], first["current_failure_rate"], first["best_failure_rate"]) == (1, 0.5, 0.25)
    assert second["method_before"] == "b fails=2"
    assert (second["chosen"], second["best_failure_rate"]) == (0, 0.0)
    assert r.result.method == "c fails=0"


def test_patience_stops_after_steps_without_improvement():
    worse = lambda current, j: fenced(f"w{j} fails=3")  # noqa: E731
    r = run(worse, steps=5, patience=2)
    assert r.result.steps_run == 2 and r.result.stop_reason == "patience"
    assert r.result.method == "m0 fails=1" and r.result.best.failure_rate == 0.25
    assert len(r.optimizer_fake.sent) == 2 * 2 * 2  # 2 steps x 2 candidates x (analysis + optimization)


def test_steps_bound_an_improving_run():
    better = lambda current, j: fenced(f"v{j} fails={max(0, fails(current) - 1 - j)}")  # noqa: E731
    r = run(better, initial="m0 fails=4", steps=2, patience=1)
    assert r.result.steps_run == 2 and r.result.stop_reason == "steps"
    assert [row["best_failure_rate"] for row in r.result.log] == [0.5, 0.0]
    assert r.result.method == "v1 fails=0"


def test_unparseable_optimizer_answers_keep_the_method():
    plan = {"m0 fails=1": [UNPARSEABLE, "```Optimized Method\n\n```"]}
    r = run(plan)
    row = r.result.log[0]
    assert row["chosen"] is None and row["parse_errors"] == 2
    assert [c["parse_error"] for c in row["candidates"]] == ["no ```Optimized Method``` block",
                                                              "empty ```Optimized Method``` block"]
    assert [c["answer"] for c in row["candidates"]] == plan["m0 fails=1"]  # raw text kept
    assert r.result.method == "m0 fails=1" and row["current_failure_rate"] == 0.25
    assert set(responses_by_method(r.evolver_fake)) == {"m0 fails=1"}  # nothing unparsed was scored


def test_an_unparseable_candidate_is_dropped_and_the_rest_compete():
    r = run({"m0 fails=1": [UNPARSEABLE, fenced("m1 fails=0")]})
    row = r.result.log[0]
    assert row["chosen"] == 1 and row["candidates"][0]["dev"] is None and row["parse_errors"] == 1
    assert r.result.method == "m1 fails=0"


def test_no_regression_rejects_a_worse_candidate_with_a_higher_score():
    r = run({"m0 fails=1": [fenced("w fails=2 long"), UNPARSEABLE]}, selection="no_regression")
    row = r.result.log[0]
    worse = row["candidates"][0]["dev"]
    assert worse["score"] > r.result.initial.score  # longer answers: the higher reference score ...
    assert worse["success"] < r.result.initial.success  # ... but more failures
    assert row["chosen"] is None and r.result.method == "m0 fails=1"


def test_no_regression_takes_the_first_candidate_by_score_that_regresses_nothing():
    plan = {"m0 fails=2": [fenced("a fails=1"), fenced("b fails=3 xlong"), fenced("c fails=1 long")]}
    r = run(plan, initial="m0 fails=2", candidates=3, selection="no_regression")
    assert r.result.log[0]["chosen"] == 2  # b has the top score but more failures; c is next and better
    assert r.result.method == "c fails=1 long"


def test_optimizer_samples_differ_by_sample_index_and_rerun_from_the_cache(tmp_path):
    plan = lambda current, j: fenced(f"{current} +{j}")  # noqa: E731
    first = run(plan, steps=2, cache=CallCache(tmp_path / "calls.sqlite"))
    analyses = [q for q in first.optimizer_fake.sent if len(q.messages) == 1]
    assert [q.sample_index for q in analyses] == [0, 1, 0, 1]
    assert {(q.temperature, q.top_p) for q in first.optimizer_fake.sent} == {(0.6, 0.95)}  # the optimizer role's own
    conversation = [q for q in first.optimizer_fake.sent if len(q.messages) == 3][1]
    assert [role for role, _ in conversation.messages] == ["user", "assistant", "user"]
    assert conversation.messages[1][1] == "feedback 1: case 0 failed"  # its own sample's feedback
    assert {q.temperature for q in first.evolver_fake.sent} == {0.0}  # evolver_temperature, and greedy answers

    again = run(plan, steps=2, cache=CallCache(tmp_path / "calls.sqlite"))
    assert again.evolver_fake.sent == [] and again.optimizer_fake.sent == []
    assert again.evolver.stats["calls"] == 0 and again.optimizer.stats["cache_hits"] == first.optimizer.stats["calls"]
    assert again.result == first.result


def test_trajectory_rounds_and_a_missing_marker_keeps_the_raw_answer():
    evolver_fake = FakeBackend(evolver_reply(lambda m, q: False))
    cases, unparsed = build_trajectory(LLM(evolver_fake, None, role=EVOLVER_ROLE), PROMPTS, ["task 01", "task 02"], "m fails=0",
                                       rounds=2, call=ZERO)
    assert cases[0] == {"id": 0, "stage0": "task 01", "stage1": "task 01 [m fails=0]",
                        "stage2": "task 01 [m fails=0] [m fails=0]"}
    assert unparsed == []
    cases, unparsed = build_trajectory(LLM(evolver_fake, None, role=EVOLVER_ROLE), PROMPTS, ["task 01"], "nomarker",
                                       rounds=1, call=ZERO)
    assert cases[0]["stage1"] == "Step 3 #Rewritten Instruction#:\ntask 01 [nomarker]"
    assert unparsed == [{"id": 0, "round": 1}]


def test_step_ones_trajectory_is_evolved_in_the_call_that_scores_the_initial_method():
    """The initial method's development set and step 1's mini-batch go to the evolver as one call; later steps evolve
    their trajectory on their own (the current method is known only after the step before)."""
    calls: list[list[str]] = []

    class Recording(FakeBackend):
        def generate(self, requests):
            calls.append([q.messages[-1][1].rsplit(EVOLVE_SPLIT, 1)[-1] for q in requests
                          if EVOLVE_SPLIT in q.messages[-1][1]])
            return super().generate(requests)

    plan = {"m0 fails=1": [fenced("m1 fails=0"), UNPARSEABLE], "m1 fails=0": [UNPARSEABLE] * 2}
    rng = random.Random(0)
    dev, pool = split_dev_pool(items(14), dev_size=4, batch_size=2, rng=rng)
    evolver = LLM(Recording(evolver_reply(lambda m, q: False)), None, role=EVOLVER_ROLE)
    optimizer = LLM(FakeBackend(optimizer_reply(plan)), None, role=OPTIMIZER_ROLE)
    result = optimize_method(pool, dev, initial_method="m0 fails=1", evolver=evolver, optimizer=optimizer,
                             prompts=PROMPTS, rng=rng, call=ZERO, settings=OptimizeSettings(
                                 steps=2, candidates=2, batch_size=2, dev_size=4, patience=None))
    first, second = ([c["stage0"] for c in r["trajectory"]] for r in result.log)
    evolving = [c for c in calls if c]
    assert evolving[0] == [d["instruction"] for d in dev] + first  # one call: dev set, then step 1's mini-batch
    assert [c["stage1"] for c in result.log[0]["trajectory"]] == [f"{i} [m0 fails=1]" for i in first]
    assert second in evolving  # step 2's trajectory: a call of its own, with the method step 1 chose
    assert result.log[1]["method_before"] == "m1 fails=0"


def test_trajectory_verdicts_give_each_stage_the_failure_rules_verdict_in_words():
    """optimize.trajectory_verdicts: each stage carries the text rules' verdict on it (a trajectory has no answers),
    the reasons in words; without it the cases are the paper's, stages alone."""
    llm = LLM(FakeBackend(evolver_reply(lambda m, q: False)), None, role=EVOLVER_ROLE)
    rules = FailureRules("elimination")
    cases, _ = build_trajectory(llm, PROMPTS, ["Write a haiku about rain.", "task 02"], "nomarker", rounds=1,
                                call=ZERO, verdicts=rules)
    assert [c["stage1_verdict"] for c in cases] == [
        "failed: the answer lacks the reply format's #Finally Rewritten Instruction# line"] * 2
    parent = "Write a haiku about rain."
    assert rules.verdict(parent, Evolution(parent + " Use exactly three lines and end on the word storm.", "..",
                                           "stop")) == "passed"
    assert rules.verdict(parent, Evolution(parent, "..", "stop")) == (
        "failed: the rewrite is the instruction again, adding nothing (at most one word swapped)")
    assert rules.verdict(parent, Evolution("Here is a haiku: rain on the roof, soft and slow, the night listens.",
                                           "..", "stop")).startswith("failed: the rewrite answers")
    assert "stage1_verdict" not in build_trajectory(llm, PROMPTS, ["task 02"], "m", rounds=1, call=ZERO)[0][0]


@pytest.mark.parametrize("on", [True, False])
def test_the_analysis_turn_reads_the_verdicts_only_when_asked(on):
    r = run({}, trajectory_verdicts=on)
    analysis = [q for q in r.optimizer_fake.sent if len(q.messages) == 1][0].messages[0][1]
    assert ("stage1_verdict" in analysis) is on
    assert ("verdict of automatic checks" in analysis) is on
    assert all(("stage1_verdict" in c) is on for c in r.result.log[0]["trajectory"])


FORMAT = "Reply strictly in this format:\n#Finally Rewritten Instruction#:"


@pytest.mark.parametrize("keep", [True, False])
def test_keep_reply_format_ends_every_candidate_in_the_current_methods_format(keep):
    """optimize.keep_reply_format: a candidate's damaged or dropped reply format is replaced by the current method's
    (recorded per candidate); one that differs from the current method only there is the current method, unscored."""
    initial = f"Rewrite the instruction.\n\n{FORMAT}"
    plan = {initial: [fenced("Rewrite the instruction. Add one new constraint.\nFinally Rewritten Instruction#:"),
                      fenced("Rewrite the instruction.\n#Finally Rewritten Instruction#:")]}
    r = run(plan, initial=initial, trajectory_verdicts=False, keep_reply_format=keep)
    first, second = r.result.log[0]["candidates"]
    if keep:
        assert first["method"] == f"Rewrite the instruction. Add one new constraint.\n\n{FORMAT}"
        assert (first["reply_format_kept"], first["unchanged"]) == (True, False)
        assert (second["method"], second["reply_format_kept"], second["unchanged"]) == (initial, True, True)
    else:
        assert first["method"].endswith("Finally Rewritten Instruction#:") and not first["reply_format_kept"]
        assert not second["unchanged"] and not second["reply_format_kept"]
    evolving = sum(EVOLVE_SPLIT in q.messages[-1][1] for q in r.evolver_fake.sent)
    assert evolving == 4 + 2 + 4 * (1 if keep else 2)  # the initial method on dev, the trajectory, scored candidates
    from evolforge.report.sections import optimize_html
    page = optimize_html({"optimize_metrics": summary(r.result, {})})
    assert ("<td>yes; written back unchanged; reply format kept</td>" in page) is keep
    assert ("<td>yes; reply format kept</td>" in page) is keep


@pytest.mark.parametrize("candidate, kept", [
    ("Rewrite it.\n1. Add a constraint.\n\n#Finally Rewritten Instruction#", "Rewrite it.\n1. Add a constraint."),
    ("Rewrite it.\nStep 1 #Methods List#:\nStep 4 #Finally Rewritten Instruction#:", "Rewrite it."),
    ("Rewrite it.\nReply in this format:\n#Final Instruction#: <the rewrite>", "Rewrite it."),
    ("Rewrite it.\nBe concise", "Rewrite it.\nBe concise"),  # a last line of the method, not a label
])
def test_with_reply_format_replaces_the_format_lines_a_candidate_ends_in(candidate, kept):
    assert with_reply_format(candidate, f"Rewrite.\n\n{FORMAT}") == f"{kept}\n\n{FORMAT}"
    assert with_reply_format(candidate, "Rewrite, no format.") == candidate  # nothing to keep


def test_a_missing_marker_fails_without_a_response():
    evolver_fake = FakeBackend(evolver_reply(lambda m, q: False))
    dev = items(4)
    result = score_method(LLM(evolver_fake, None, role=EVOLVER_ROLE), PROMPTS, dev, "nomarker fails=0", call=ZERO)
    assert (result.failure_rate, result.missing_marker, result.score) == (1.0, 4, 0.0)
    assert len(evolver_fake.sent) == 4  # the evolving calls only


def test_whole_output_scores_an_answer_without_its_marker_as_its_rewrite():
    """evolve.missing_marker: whole_output (the Auto Evol-Instruct code's parse): the whole answer is the rewrite,
    answered and judged by the rules like any other; the metrics still count the answers without the marker."""
    evolver_fake = FakeBackend(evolver_reply(lambda m, q: False))
    llm = LLM(evolver_fake, None, role=EVOLVER_ROLE)
    result = score_method(llm, PROMPTS, items(4), "nomarker fails=0", call=EvolvingCall(temperature=0.0, missing_marker="whole_output"))
    assert (result.failure_rate, result.missing_marker) == (0.0, 4)
    assert len(evolver_fake.sent) == 8  # the evolving calls, then an answer to each rewrite
    answered = [r.messages[-1][1] for r in evolver_fake.sent[4:]]
    assert all("Step 3 #Rewritten Instruction#:" in text for text in answered)  # the whole answer was asked

# --- the stage script ----------------------------------------------------------------------------

def load_stage():
    spec = importlib.util.spec_from_file_location("optimize_stage", ROOT / "stages" / "optimize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stage_setup(tmp_path: Path, strategy: str, n_seed: int = 14, evolve: dict | None = None) -> tuple[list[str], Path]:
    params = {
        "cache": {"path": str(tmp_path / "cache.sqlite")},
        # a model that does not exist: loading it would fail the test
        "roles": {name: {"backend": "hf", "model": str(tmp_path / "no-such-model")} for name in ("evolver", "optimizer")},
        "optimize": {"initial_method": "initial", "steps": 2, "candidates": 2, "batch_size": 2, "dev_size": 4,
                     "trajectory_rounds": 1, "patience": 1, "selection": "lowest_failure",
                     "evolver_temperature": 0.0, "seed": 0, "judge_difficulty": False,
                     "racing": False},  # every candidate on every item (tests/test_optimize_racing.py races them)
        "evolve": {"strategy": strategy, **(evolve or {})},
    }
    (tmp_path / "params.yaml").write_text(json.dumps(params), encoding="utf-8")  # JSON is YAML
    pool = pl.DataFrame([{**it, "output": "answer"} for it in items(n_seed)])
    write_output(tmp_path / "seed", pool.head(3), tables={SEED_POOL: pool})  # 3 seeds evolved, all in the pool
    argv = ["--params", str(tmp_path / "params.yaml"), "--seed", str(tmp_path / "seed"), "--out", str(tmp_path / "method"),
            "--metrics", str(tmp_path / "metrics.json"), "--plot", str(tmp_path / "plots" / "optimize.json"),
            "--prompts", str(DEFAULT_PROMPTS_DIR)]
    return argv, tmp_path


def test_stage_costs_nothing_unless_the_strategy_is_auto(tmp_path, monkeypatch):
    monkeypatch.delenv("EVOLFORGE_CACHE", raising=False)
    stage = load_stage()
    monkeypatch.setattr(optimize_step, "open_models", lambda llms: pytest.fail("models opened for a skipped stage"))
    argv, out = stage_setup(tmp_path, "evol")
    stage.main(argv)
    assert (out / "method" / "method.txt").read_text(encoding="utf-8") == initial_method_text(PROMPTS, "initial")
    assert (out / "method" / "log.jsonl").read_text(encoding="utf-8") == ""
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped"] is True and metrics["calls"] == 0 and metrics["steps_run"] == 0
    assert json.loads((out / "plots" / "optimize.json").read_text()) == []
    assert not (out / "cache.sqlite").exists()  # not even the call cache was opened


def test_stage_writes_method_log_metrics_and_plot(tmp_path, monkeypatch):
    stage = load_stage()
    evolver = LLM(FakeBackend(evolver_reply(lambda m, q: fails(m) > int(q.split()[-1]) % 4)), None, role=EVOLVER_ROLE)
    optimizer = LLM(FakeBackend(optimizer_reply(lambda current, j: fenced(f"m{j} fails={j}")), model="fake-opt"), None)
    monkeypatch.setattr(optimize_step, "open_models", lambda llms, **kw: dict(evolver=evolver, optimizer=optimizer))
    argv, out = stage_setup(tmp_path, "auto")
    stage.main(argv)
    method = (out / "method" / "method.txt").read_text(encoding="utf-8")
    log = [json.loads(line) for line in (out / "method" / "log.jsonl").read_text().splitlines()]
    metrics = json.loads((out / "metrics.json").read_text())
    plot = json.loads((out / "plots" / "optimize.json").read_text())
    meta = json.loads((out / "method" / "meta.json").read_text())
    assert method == "m0 fails=0"
    assert len(log) == metrics["steps_run"] == len(plot) - 1
    assert metrics["best_failure_rate"] == 0.0 and metrics["initial_failure_rate"] > 0
    assert metrics["calls"] == evolver.stats["calls"] + optimizer.stats["calls"] > 0
    assert plot[0] == {"step": 0, "failure_rate": metrics["initial_failure_rate"],
                       "best_failure_rate": metrics["initial_failure_rate"]}
    assert len(meta["dev_ids"]) == 4 and "optimize/analysis.j2" in meta["templates"]
    assert meta["models"]["evolver"].startswith("fake@") and meta["models"]["optimizer"].startswith("fake-opt@")


@pytest.mark.parametrize("method, expected", [
    ({"method_controls": {"banned_strings": ["Sure"]}, "method_max_tokens": 320}, (320, ("Sure",), ())),
    ({}, (96, (), ("\n\n",))),  # null: evolve.controls / max_tokens, as the rounds use them
])
def test_step_format_calls_use_the_method_controls_and_budget(tmp_path, monkeypatch, method, expected):
    """Every evolving call of the loop (development runs and trajectories) gets the step format's controls and
    budget; the answers to the evolved instructions keep the role's own."""
    stage = load_stage()
    evolver_fake = FakeBackend(evolver_reply(lambda m, q: False))
    evolver = LLM(evolver_fake, None, role=EVOLVER_ROLE)
    optimizer = LLM(FakeBackend(optimizer_reply(lambda current, j: fenced(f"m{j} fails=0")), model="fake-opt"), None)
    monkeypatch.setattr(optimize_step, "open_models", lambda llms, **kw: dict(evolver=evolver, optimizer=optimizer))
    argv, _ = stage_setup(tmp_path, "auto", evolve={"controls": {"stop": ["\n\n"]}, "max_tokens": 96, **method})
    stage.main(argv)
    evolving = [r for r in evolver_fake.sent if EVOLVE_SPLIT in r.messages[-1][1]]
    answering = [r for r in evolver_fake.sent if EVOLVE_SPLIT not in r.messages[-1][1]]
    assert len({r.messages[-1][1].split(EVOLVE_SPLIT)[0] for r in evolving}) > 1  # the initial method and candidates
    assert {(r.max_tokens, r.controls.banned_strings, r.controls.stop) for r in evolving} == {expected}
    assert answering and all(r.controls is None for r in answering)


def test_stage_with_too_small_a_seed_names_the_params(tmp_path, monkeypatch):
    stage = load_stage()
    monkeypatch.setattr(optimize_step, "open_models", lambda llms: pytest.fail("models opened before the dev split was checked"))
    argv, _ = stage_setup(tmp_path, "auto", n_seed=5)
    with pytest.raises(ValueError, match="optimize.dev_size"):
        stage.main(argv)


def test_on_one_backend_the_analyses_are_decoded_beside_the_development_sets_answers():
    """Step 1's analyses of its one-round trajectory need only the call that scores the initial method: on one
    backend they go to it in the same batch as the evolver's answers to the development set, and the candidates read
    the same feedback as when each role has its own backend."""
    plan = {"m0 fails=1": [fenced("m1 fails=0"), UNPARSEABLE]}
    batches: list[list[str]] = []

    def kind(request) -> str:
        prompt = request.messages[-1][1]
        return ("optimization" if len(request.messages) > 1 else "analysis" if '"stage0"' in prompt
                else "evolve" if EVOLVE_SPLIT in prompt else "answer")

    class Recording(FakeBackend):
        def generate(self, requests):
            batches.append(sorted({kind(q) for q in requests}))
            return super().generate(requests)

    def results(shared: bool):
        rng = random.Random(0)
        dev, pool = split_dev_pool(items(14), dev_size=4, batch_size=2, rng=rng)
        evolving, optimizing = evolver_reply(lambda m, q: False), optimizer_reply(plan)
        one = Recording(lambda r: optimizing(r) if kind(r) in ("analysis", "optimization") else evolving(r))
        evolver = LLM(one if shared else FakeBackend(evolving), None, role=EVOLVER_ROLE)
        optimizer = LLM(one if shared else FakeBackend(optimizing), None, role=OPTIMIZER_ROLE)
        settings = OptimizeSettings(steps=1, candidates=2, batch_size=2, dev_size=4, patience=None)
        result = optimize_method(pool, dev, initial_method="m0 fails=1", evolver=evolver, optimizer=optimizer,
                                 prompts=PROMPTS, rng=rng, call=ZERO, settings=settings)
        return result, optimizer.stats["calls"]

    shared, calls = results(shared=True)
    assert ["analysis", "answer"] in batches and ["analysis"] not in batches
    apart, calls_apart = results(shared=False)
    assert [c["feedback"] for c in shared.log[0]["candidates"]] == ["feedback 0: case 0 failed",
                                                                     "feedback 1: case 0 failed"]
    assert shared.log == apart.log and calls == calls_apart == 4  # two analyses, two optimizations


def test_roles_on_one_model_share_its_backend(tmp_path, monkeypatch):
    import evolforge.llm.cached as cached
    import evolforge.llm.registry as registry

    monkeypatch.setenv("EVOLFORGE_CACHE", str(tmp_path / "cache.sqlite"))
    monkeypatch.chdir(tmp_path)  # no models/identity.json here: identities are resolved
    loaded = []
    monkeypatch.setitem(registry.BACKENDS, "hf", lambda role: loaded.append(role.model) or FakeBackend(model=role.model))
    monkeypatch.setattr(registry, "_LOADED", {})
    monkeypatch.setattr(cached, "resolve_identity", lambda role, memo=None: {"name": role.model})
    roles = {"evolver": {"backend": "hf", "model": "m", "temperature": 0.0},
             "optimizer": {"backend": "hf", "model": "m", "temperature": 0.6, "top_p": 0.95, "batch_size": 2}}
    models = optimize_step.open_models(RoleLLMs(load_llm_params({"roles": roles}, ("evolver", "optimizer"))))
    assert models["optimizer"].backend is models["evolver"].backend and loaded == ["m"]
    assert models["optimizer"].stats is not models["evolver"].stats  # calls still counted per role
    roles["optimizer"]["model"] = "another"
    models = optimize_step.open_models(RoleLLMs(load_llm_params({"roles": roles}, ("evolver", "optimizer"))))
    assert models["optimizer"].backend is not models["evolver"].backend and loaded == ["m", "another"]


# --- an optimizer that never writes a parseable method; an evolver that cannot follow the format ------

def test_an_optimizer_that_never_writes_a_method_says_so():
    r = run(lambda current, j: UNPARSEABLE, initial="nomarker", steps=5, patience=2)
    assert r.result.steps_run == 2 and r.result.stopped_early
    assert r.result.stop_reason == "no_parseable_candidate"  # not "patience": nothing could be optimized
    assert [row["no_parseable_candidate"] for row in r.result.log] == [True, True]
    assert [row["parseable_candidates"] for row in r.result.log] == [0, 0]
    metrics = summary(r.result, {"evolver": r.evolver.stats})
    assert metrics["parseable_candidates"] == 0 and metrics["candidates_proposed"] == 4
    assert metrics["optimized"] is False and metrics["stop_reason"] == "no_parseable_candidate"

    r = run(lambda current, j: UNPARSEABLE, steps=2)  # no patience: both steps run, still nothing optimized
    assert r.result.steps_run == 2 and not r.result.stopped_early and r.result.stop_reason == "no_parseable_candidate"


def test_patience_over_unparseable_steps_after_an_improvement():
    plan = lambda current, j: fenced("m1 fails=0") if current == "m0 fails=1" else UNPARSEABLE  # noqa: E731
    r = run(plan, steps=5, patience=2)
    assert r.result.steps_run == 3 and r.result.method == "m1 fails=0"
    assert r.result.stop_reason == "no_parseable_candidate"  # the last two steps had nothing to try
    assert [row["no_parseable_candidate"] for row in r.result.log] == [False, True, True]


def test_a_method_the_evolver_cannot_follow_is_unusable():
    r = run(lambda current, j: UNPARSEABLE, initial="nomarker", steps=1)
    assert r.result.initial.failure_rate == 1.0 and r.result.initial.missing_marker == 4
    settings = OptimizeSettings(unusable_failure_rate=0.9)
    found = usability(r.result, settings)
    assert found["initial_method_usable"] is False and found["method_usable"] is False
    assert found["fallback"] == "evol"
    assert "cannot follow the evolving method's format" in found["message"]
    assert "fails 4 of 4 development items (4 without the final-instruction marker, 0 answers cut" in found["message"]
    assert usability(r.result, OptimizeSettings(on_unusable="keep"))["fallback"] is None
    # a usable method: no message, no fallback
    fine = run(lambda current, j: UNPARSEABLE, initial="m0 fails=1", steps=1)
    assert usability(fine.result, settings) == {"unusable_failure_rate": 0.9, "initial_method_usable": True,
                                                "method_usable": True, "fallback": None, "message": None}
    # an optimizer that rescues an unusable initial method
    rescued = run(lambda current, j: fenced("m1 fails=1"), initial="nomarker", steps=1)
    found = usability(rescued.result, settings)
    assert found["initial_method_usable"] is False and found["method_usable"] is True and found["fallback"] is None


def test_unusable_settings_are_checked():
    with pytest.raises(ValueError, match="optimize.on_unusable"):
        load_section({"optimize": {"on_unusable": "crash"}}, "optimize", OptimizeSettings)
    with pytest.raises(ValueError, match="optimize.unusable_failure_rate"):
        load_section({"optimize": {"unusable_failure_rate": 1.5}}, "optimize", OptimizeSettings)


def unusable_stage(tmp_path, monkeypatch, on_unusable):
    stage = load_stage()
    evolver = LLM(FakeBackend(evolver_reply(lambda m, q: True)), None, role=EVOLVER_ROLE)  # every answer asks back
    optimizer = LLM(FakeBackend(optimizer_reply(lambda current, j: UNPARSEABLE), model="fake-opt"), None)
    monkeypatch.setattr(optimize_step, "open_models", lambda llms, **kw: dict(evolver=evolver, optimizer=optimizer))
    argv, out = stage_setup(tmp_path, "auto")
    params = json.loads((out / "params.yaml").read_text())
    params["optimize"].update(on_unusable=on_unusable, unusable_failure_rate=0.9)
    (out / "params.yaml").write_text(json.dumps(params))
    return stage, argv, out


def test_stage_records_the_fallback_for_an_unusable_method(tmp_path, monkeypatch, capsys):
    stage, argv, out = unusable_stage(tmp_path, monkeypatch, "evol")
    stage.main(argv)
    metrics = json.loads((out / "metrics.json").read_text())
    meta = json.loads((out / "method" / "meta.json").read_text())
    log = [json.loads(line) for line in (out / "method" / "log.jsonl").read_text().splitlines()]
    assert metrics["initial_method_usable"] is False and metrics["method_usable"] is False
    assert metrics["stop_reason"] == "no_parseable_candidate" and metrics["parseable_candidates"] == 0
    assert metrics["fallback"] == meta["fallback"] == "evol"
    assert "cannot follow" in meta["fallback_reason"] and log[0]["no_parseable_candidate"] is True
    printed = capsys.readouterr().out
    assert "cannot follow the evolving method's format" in printed and "0 of 2 candidates parsed" in printed


def test_stage_stops_on_an_unusable_method_when_asked(tmp_path, monkeypatch):
    stage, argv, out = unusable_stage(tmp_path, monkeypatch, "stop")
    with pytest.raises(Refusal, match="on_unusable: stop.*cannot follow"):
        stage.main(argv)
    assert not (out / "method").exists()  # nothing that looks like a finished output


def test_dev_answers_cut_at_max_tokens_are_counted():
    from evolforge.llm.types import Completion

    cut = FakeBackend(lambda request: Completion("Step 1 #Methods List#:\n#1.\n#2.\n#3.", "length"))
    result = score_method(LLM(cut, None, role=EVOLVER_ROLE), PROMPTS, items(4), "initial", call=ZERO)
    assert (result.failure_rate, result.missing_marker, result.cut_at_max_tokens) == (1.0, 4, 4)


# --- a step with no parseable candidate warns; on_unparseable decides; settings that empty every candidate ------

def test_a_step_with_no_parseable_candidate_warns_and_on_unparseable_decides(tmp_path, monkeypatch, capsys):
    r = run(lambda current, j: UNPARSEABLE, steps=2)
    assert len(r.result.warnings) == 2 and r.result.warnings[0].startswith(
        "step 1: none of the 2 candidates parsed (2 x no ```Optimized Method``` block)")
    assert "optimize: warning: step 2: none of the 2 candidates parsed" in capsys.readouterr().out
    assert summary(r.result, {})["warnings"] == r.result.warnings
    with pytest.raises(Refusal, match=r"on_unparseable: stop\): step 1: none of the 2 candidates parsed"):
        run(lambda current, j: UNPARSEABLE, steps=2, on_unparseable="stop")
    # a step where one parses: no warning
    assert run({"m0 fails=1": [UNPARSEABLE, fenced("m1 fails=0")]}).result.warnings == []
    with pytest.raises(ValueError, match="optimize.on_unparseable"):
        load_section({"optimize": {"on_unparseable": "crash"}}, "optimize", OptimizeSettings)


def test_the_stage_warning_reaches_the_metrics_and_the_report(tmp_path, monkeypatch, capsys):
    from evolforge.report.sections import optimize_html

    stage, argv, out = unusable_stage(tmp_path, monkeypatch, "evol")
    stage.main(argv)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["warnings"] and metrics["warnings"][0].startswith("step 1: none of the 2 candidates parsed")
    assert "optimize: warning: step 1: none of the 2 candidates parsed" in capsys.readouterr().out
    assert "<p class='warning'>step 1: none of the 2 candidates parsed" in optimize_html({"optimize_metrics": metrics})


@pytest.mark.parametrize("controls, roles_optimizer, refused", [
    ({"assistant_prefix": "```Optimized Method\n", "stop": ["```"]}, {}, None),  # shipped: the stop is after the prefix
    ({"stop": ["```"]}, {}, "optimize.controls.stop: '```' is in the block's opening"),
    ({"assistant_prefix": "```", "stop": ["Method"]}, {}, "optimize.controls.stop: 'Method' is in the block's"),
    ({"assistant_prefix": "```", "stop": ["```"]}, {}, None),  # the prefix writes the fence: "```" is after it
    ({}, {"banned_strings": ["Optimized"]}, "roles.optimizer.banned_strings: 'Optimized' is in the block's opening"),
    ({"assistant_prefix": "Sure.\n", "stop": ["\n\n"]}, {}, None),
])
def test_settings_that_would_empty_every_candidate_are_refused_before_any_request(controls, roles_optimizer, refused):
    from evolforge.config.bounds import ParamsError
    from evolforge.schema import check_params, load_params

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    params["optimize"]["controls"] = controls
    params["roles"]["optimizer"].update(roles_optimizer)
    if refused is None:
        check_params(params)
        return
    with pytest.raises(ParamsError, match=re.escape(refused)):
        check_params(params)  # what `evolforge check` and the models stage run
    params["evolve"]["strategy"] = "evol"  # the optimize stage makes no call then
    check_params(params)


def test_the_optimize_stage_refuses_them_too(tmp_path, monkeypatch):
    from evolforge.config.bounds import ParamsError

    stage, argv, out = unusable_stage(tmp_path, monkeypatch, "evol")
    params = json.loads((out / "params.yaml").read_text())
    params["optimize"]["controls"] = {"stop": ["```"]}
    (out / "params.yaml").write_text(json.dumps(params))
    with pytest.raises((ParamsError, SystemExit), match="block's opening"):
        stage.main(argv)


# --- the development set, batching, the answer budget, what the log says -------------------------

def test_the_development_set_comes_from_outside_the_evolved_seeds():
    pool = items(20)
    evolved = frozenset(f"id{i:02d}" for i in range(10))
    dev, rest = split_dev_pool(pool, dev_size=8, batch_size=3, rng=random.Random(0), held_out=evolved)
    assert not {d["id"] for d in dev} & evolved
    assert sorted(d["id"] for d in dev + rest) == [p["id"] for p in pool]
    # a pool too small to keep them apart lends the dev set evolved seeds, and says nothing wrong
    dev, _ = split_dev_pool(pool, dev_size=14, batch_size=3, rng=random.Random(0), held_out=evolved)
    assert len({d["id"] for d in dev} & evolved) == 4


def test_candidates_are_scored_together_as_each_alone():
    """One call evolves the dev set for every candidate and one answers them all; the scores are each method's own."""
    dev = items(5)
    methods = ["m1 fails=0", "m2 fails=2", "nomarker fails=0", "m3 fails=5 long"]
    fake = FakeBackend(evolver_reply(lambda m, q: q in [d["instruction"] for d in dev][:fails(m)]))
    together = score_methods(LLM(fake, None, role=EVOLVER_ROLE), PROMPTS, dev, methods, call=ZERO)
    # the role's batches of 8 filled across methods: 20 evolutions, then 15 answers (nomarker's evolutions get none)
    assert fake.batches == [8, 8, 4, 8, 7]
    alone = [score_method(LLM(FakeBackend(evolver_reply(lambda m, q: q in [d["instruction"] for d in dev][:fails(m)])),
                              None, role=EVOLVER_ROLE), PROMPTS, dev, m, call=ZERO) for m in methods]
    assert together == alone
    assert [s.failures for s in together] == [0, 2, 5, 5]


def test_the_optimization_turn_fits_the_method_it_rewrites():
    long_method = "Step 1: list methods. " * 100  # 2,200 characters: over 900 tokens at 1.5x
    ran = run({long_method: [fenced("m1 fails=0"), fenced("m2 fails=1")]}, initial=long_method)
    turns = [r for r in ran.optimizer_fake.sent if len(r.messages) == 3]
    assert turns and {r.max_tokens for r in turns} == {math.ceil(1.5 * len(long_method) / 3.5)}
    short = run({"m0 fails=1": [fenced("m1 fails=0"), fenced("m2 fails=1")]})
    assert {r.max_tokens for r in short.optimizer_fake.sent if len(r.messages) == 3} == {OPTIMIZER_ROLE.max_tokens}


def test_the_guided_optimization_prompt_says_what_a_method_is_and_keeps_the_paper_turn_otherwise():
    plan = {"m0 fails=1": [fenced("m1 fails=0"), fenced("m2 fails=1")]}
    paper, guided = run(plan), run(plan, optimization_prompt="guided")
    turn = {name: [r.messages[-1][1] for r in ran.optimizer_fake.sent if len(r.messages) == 3]
            for name, ran in (("paper", paper), ("guided", guided))}
    assert turn["paper"] and len(turn["paper"]) == len(turn["guided"])
    assert all("a prompt for an AI that rewrites" in t and "ends with the same reply format" in t
               for t in turn["guided"])
    assert not any("a prompt for an AI that rewrites" in t for t in turn["paper"])
    assert all(t == PROMPTS.render("optimize/optimization.j2", method="m0 fails=1") for t in turn["paper"])
    assert guided.result.method == paper.result.method == "m1 fails=0"  # parsed and scored alike


def test_the_amend_prompt_asks_for_rules_and_adds_them_to_the_method_before_its_reply_format():
    """optimize.optimization_prompt amend: the block holds rules; the candidate is the current method with them, its
    reply format last; rules the method holds already (or format lines alone) give it back unchanged, unscored."""
    initial = f"Rewrite the instruction.\n\n{FORMAT}"
    plan = {initial: [fenced("1. Do not answer the instruction.\n2. Keep every number it gives."),
                      fenced("- Rewrite the instruction.\n#Finally Rewritten Instruction#:")]}
    r = run(plan, initial=initial, optimization_prompt="amend")
    turns = [q.messages[-1][1] for q in r.optimizer_fake.sent if len(q.messages) == 3]
    assert turns and all("write one to three\nnew rules" in t and initial in t for t in turns)
    assert all("<the new rules, one per line>" in t for t in turns)  # the placeholder amended() leaves out
    first, second = r.result.log[0]["candidates"]
    assert first["method"] == ("Rewrite the instruction.\nDo not answer the instruction.\nKeep every number it gives."
                               f"\n\n{FORMAT}")
    assert first["answer"].startswith("Here it is.") and not first["unchanged"] and first["dev"] is not None
    assert (second["method"], second["unchanged"]) == (initial, True)


@pytest.mark.parametrize("method, rules, expected", [
    ("Rewrite it.", "* Add one constraint.", "Rewrite it.\nAdd one constraint."),  # no reply format: at the end
    (f"Rewrite it.\n\n{FORMAT}", "Rule 1: Add one constraint.\nRule 2: Add one constraint.",
     f"Rewrite it.\nAdd one constraint.\n\n{FORMAT}"),  # a rule written twice is added once
    (f"Rewrite it.\n\n{FORMAT}", "Reply strictly in this format:\nRewrite it.", f"Rewrite it.\n\n{FORMAT}"),
    ("Rewrite it.", "<the new rules, one per line>", "Rewrite it."),  # the prompt's placeholder echoed back
])
def test_amended_adds_each_new_rule_once_and_never_a_format_line(method, rules, expected):
    assert amended(method, rules) == expected


def test_the_log_says_why_the_initial_method_was_kept(capsys):
    clean = run({"m0 fails=0": [fenced("m1 fails=0"), fenced("m2 fails=1")]}, initial="m0 fails=0")
    assert clean.result.notes and "fails none of the 4 development items" in clean.result.notes[0]
    assert "no candidate can measure as better" in capsys.readouterr().out
    assert clean.result.outcome.startswith("kept the initial method: it fails none of the 4")
    worse = run({"m0 fails=2": [fenced("m1 fails=3"), fenced("m2 fails=2")]}, initial="m0 fails=2")
    assert worse.result.outcome == ("kept the initial method: it fails 2 of 4 development items and no candidate "
                                    "failed fewer (the best of 2 failed 2)")
    better = run({"m0 fails=2": [fenced("m1 fails=1"), fenced("m2 fails=3")]}, initial="m0 fails=2")
    assert better.result.outcome == "improved: the optimized method fails 1 of 4 development items, the initial 2 of 4"
    assert not better.result.notes
    assert summary(better.result, {})["outcome"] == better.result.outcome


def test_stage_draws_the_dev_set_from_the_pool_outside_the_evolved_seeds(tmp_path, monkeypatch):
    stage = load_stage()
    evolver = LLM(FakeBackend(evolver_reply(lambda m, q: False)), None, role=EVOLVER_ROLE)
    optimizer = LLM(FakeBackend(optimizer_reply(lambda current, j: fenced(f"m{j} fails=0")), model="fake-opt"), None)
    monkeypatch.setattr(optimize_step, "open_models", lambda llms, **kw: dict(evolver=evolver, optimizer=optimizer))
    argv, out = stage_setup(tmp_path, "auto")
    stage.main(argv)
    meta = json.loads((out / "method" / "meta.json").read_text())
    assert len(meta["dev_ids"]) == 4 and not set(meta["dev_ids"]) & {"id00", "id01", "id02"}
    (out / "seed" / SEED_POOL).unlink()
    with pytest.raises(ValueError, match="all_seeds.parquet: missing; the seed stage writes it"):
        stage.main(argv)


def test_a_method_written_back_unchanged_is_not_scored_again():
    ran = run({"m0 fails=1": [fenced("m0 fails=1"), fenced("m2 fails=0")]}, initial="m0 fails=1")
    candidates = ran.result.log[0]["candidates"]
    assert [c["unchanged"] for c in candidates] == [True, False]
    assert candidates[0]["dev"]["failures"] == 1
    evolved_with = [r.messages[-1][1].split(EVOLVE_SPLIT)[0] for r in ran.evolver_fake.sent
                    if EVOLVE_SPLIT in r.messages[-1][1]]
    assert evolved_with.count("m0 fails=1") == 4 + 2  # the dev set at step 0 and the trajectory, never again
    assert evolved_with.count("m2 fails=0") == 4
    echo = run({"m0 fails=1": [fenced("m0 fails=1"), fenced("m0 fails=1")]}, initial="m0 fails=1")
    assert echo.result.outcome == "kept the initial method: every method the optimizer wrote was the current one, unchanged"


def test_stage_judges_the_dev_set_under_both_methods(tmp_path, monkeypatch):
    """``judge_difficulty``: the dev seeds, their evolutions with the initial method and with the result, each judged
    once; the evolutions are the scoring runs' own (read back, not asked again)."""
    stage = load_stage()
    evolver_fake = FakeBackend(evolver_reply(lambda m, q: m == "initial"))  # the initial method fails every item
    evolver = LLM(evolver_fake, CallCache(tmp_path / "calls.sqlite"), role=EVOLVER_ROLE)
    optimizer = LLM(FakeBackend(optimizer_reply(lambda current, j: fenced(f"m{j} fails=0")), model="fake-opt"), None)
    # the fake judge scores an evolved instruction by its method tag: 70 for the result (m0), 40 for the initial
    judged = []

    def score(request):
        query = request.messages[-1][1]
        judged.append(query)
        return "70" if "[m0 fails=0]" in query else "40" if "[initial]" in query else "10"
    judge = LLM(FakeBackend(score, model="fake-judge"), None, role=Role(name="judge", backend="hf", model="fake"))
    monkeypatch.setattr(optimize_step, "open_models",
                        lambda params, judge_role=False, **kw: dict(evolver=evolver, optimizer=optimizer, judge=judge))
    argv, out = stage_setup(tmp_path, "auto")
    params = json.loads((tmp_path / "params.yaml").read_text())
    params["optimize"].update(judge_difficulty=True, steps=1)
    params["judge"] = {"probabilities": False, "constrain": True}
    params["roles"]["judge"] = {"backend": "hf", "model": str(tmp_path / "no-such-model")}  # parsed, never opened
    (tmp_path / "params.yaml").write_text(json.dumps(params), encoding="utf-8")
    stage.main(argv)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dev_difficulty"] == {"measure": "difficulty_score", "seeds": {"items": 4, "mean": 10.0},
                                         "initial": {"items": 4, "mean": 40.0}, "method": {"items": 4, "mean": 70.0}}
    assert len(judged) == 12 and metrics["llm"]["judge"]["calls"] == 12
    assert sum(EVOLVE_SPLIT in r.messages[-1][1] for r in evolver_fake.sent) == 4 + 2 + 2 * 4  # nothing asked again


def test_elimination_failures_are_the_rounds_rules():
    """``failure: elimination``: an evolution the rounds would drop (unchanged, chatter) fails the dev set too, with
    the rule that dropped it; under rule_f only F and a missing marker count."""
    dev = [{"id": f"id{i}", "instruction": f"Write a short poem about the number {i}.", "input": ""} for i in range(4)]

    def reply(request):
        prompt = request.messages[-1][1]
        if EVOLVE_SPLIT in prompt:
            method, instruction = prompt.rsplit(EVOLVE_SPLIT, 1)
            final = {"same": instruction, "chatty": "What would you like me to rewrite?"}.get(
                method, f"Write {instruction} as a limerick.")
            return f"Step 4 #Finally Rewritten Instruction#:\n{final}"
        return "Done: an answer."
    evolve = EvolveSettings()
    for kind, expected in (("rule_f", [0, 0, 0]), ("elimination", [4, 4, 0])):
        rules = FailureRules.of(kind, evolve, PROMPTS)
        scores = score_methods(LLM(FakeBackend(reply), None, role=EVOLVER_ROLE), PROMPTS, dev,
                               ["same", "chatty", "fine"], call=ZERO, rules=rules)
        assert [s.failures for s in scores] == expected
    assert scores[0].failures_by_reason == {"unchanged": 4} and scores[1].failures_by_reason == {"asks_user_for_input": 4}
    off = FailureRules.of("elimination", EvolveSettings(elimination={"unchanged": False}), PROMPTS)
    assert score_method(LLM(FakeBackend(reply), None, role=EVOLVER_ROLE), PROMPTS, dev, "same", call=ZERO,
                        rules=off).failures == 0


def test_elimination_fails_a_method_whose_rewrites_copy_the_worked_example():
    """Under evolve.few_shot the evolver sees one worked example (prompts/optimize/examples.yaml); a small optimizer's
    method can make it paste that example's additions onto every instruction ("... in exactly four lines, told by a
    ..."), which no other rule catches. The copied phrases fail it (copied_worked_example); zero-shot, nothing was
    shown and the rule has nothing to compare."""
    dev = [{"id": f"d{k}", "instruction": f"Explain topic {k}.", "input": ""} for k in range(3)]

    def reply(request):
        prompt = request.messages[-1][1]
        if EVOLVE_SPLIT in prompt:
            method, instruction = prompt.rsplit(EVOLVE_SPLIT, 1)
            added = (" in exactly four lines, told by a teacher, where every line ends with a word that rhymes"
                     if method == "copy" else " for a ten-year-old, with two everyday examples")
            return f"Step 4 #Finally Rewritten Instruction#:\n{instruction.strip().rstrip('.')}{added}."
        return "Done: an answer."
    for few_shot, expected in ((True, [3, 0]), (False, [0, 0])):
        evolve = EvolveSettings(few_shot=few_shot)
        scores = score_methods(LLM(FakeBackend(reply), None, role=EVOLVER_ROLE), PROMPTS, dev, ["copy", "fine"],
                               call=EvolvingCall(temperature=0.0, few_shot=few_shot), rules=FailureRules.of("elimination", evolve, PROMPTS))
        assert [s.failures for s in scores] == expected
    assert scores[0].failures_by_reason == {} and FailureRules.of("elimination", evolve, PROMPTS).example_additions == frozenset()


def test_elimination_fails_a_method_whose_rewrites_paste_its_own_words():
    """A small optimizer can append an instruction of its own to the method ("... Write a JavaScript function that
    sums an array, minding negative numbers and floating-point precision issues."), and the evolver then pastes it
    into every rewrite: the method's failures fall, and no method got better. Four or more of the method text's
    phrases in a rewrite, absent from its parent, fail it (copied_method_text); a method whose rewrites add their
    own words keeps its score, and the rule switched off measures the copy as a success, as before."""
    dev = [{"id": f"d{k}", "instruction": f"Find the sale price of item {k}.", "input": ""} for k in range(3)]
    pasted = "taking into account the possibility of negative numbers and floating-point precision issues"
    copying = f"Rewrite the #Instruction# into a more complex version. Write a JavaScript function, {pasted}."

    def reply(request):
        prompt = request.messages[-1][1]
        if EVOLVE_SPLIT in prompt:
            method, instruction = prompt.rsplit(EVOLVE_SPLIT, 1)
            added = f", {pasted}" if method == copying else " after a 15% discount and 8% sales tax, to the cent"
            return f"Step 4 #Finally Rewritten Instruction#:\n{instruction.strip().rstrip('.')}{added}."
        return "Done: an answer."
    for elimination_switches, expected in (({}, [3, 0]), ({"copied_method": False}, [0, 0])):
        rules = FailureRules.of("elimination", EvolveSettings(elimination=elimination_switches), PROMPTS)
        scores = score_methods(LLM(FakeBackend(reply), None, role=EVOLVER_ROLE), PROMPTS, dev, [copying, "fine"],
                               call=ZERO, rules=rules)
        assert [s.failures for s in scores] == expected
        if expected[0]:
            assert scores[0].failures_by_reason == {elimination.COPIED_METHOD: 3}
