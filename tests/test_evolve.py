"""Evolution rounds with a fake evolver: elimination reasons, method assignment, chaining, lineage."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import polars as pl
import pytest

from evolforge.config.loader import load_section
from evolforge.steps.evolve.settings import EvolveSection

from evolforge.steps.common import elimination
from evolforge.steps.evolve import judge_checks
from evolforge.steps.common.repetition import repetition_test
from evolforge.steps.evolve.step import EvolveSettings, evolve_round, method_text, resolve_strategy
from evolforge.steps.common.evolving import BREADTH, IN_DEPTH, METHOD_TEMPLATE, assign_methods
from evolforge.steps.common.lineage import chain, format_chain
from evolforge.config.roles import Role
from evolforge.llm.cached import LLM
from evolforge.llm.types import Completion
from evolforge.llm.backends.fake import FakeBackend, TemplateReplies
from evolforge.core.prompts import PromptLibrary
from evolforge.io.records import make_id, write_output
from evolforge.steps.common.source import build_seed

ROLE = Role.from_params("evolver", {"backend": "hf", "model": "fake"})
RESPONDER = Role.from_params("responder", {"backend": "hf", "model": "fake", "max_tokens": 48})
LONG_ANSWER = " ".join(["word"] * 90)

# raw evolver output (or response to it) -> expected failure reason
INSTRUCTION_TABLE = [
    ("Add 2 and 3, then double the result.", None),
    ("", elimination.EMPTY),
    ("   \n", elimination.EMPTY),
    ("add 2 and 3.", elimination.UNCHANGED),          # same words, case and spacing aside
    ("Add 2, and 3!", elimination.UNCHANGED),         # and punctuation
    ("#Rewritten Prompt#: Add 2 and 3 twice.", elimination.TEMPLATE_WORDS),
    ("Here is the rewritten prompt: add 2 and 30.", elimination.TEMPLATE_WORDS),
    ("The given prompt asks to add numbers.", elimination.TEMPLATE_WORDS),
    ("#Created Prompt#: Multiply 4 by 5.", elimination.TEMPLATE_WORDS),
    ("Explain what this code does in 1 sentence.\n#Rewriten Prompt#:", elimination.TEMPLATE_WORDS),  # misspelt
    ("#Rewritn  prompts #\nAdd 2 and 3 twice.", elimination.TEMPLATE_WORDS),
    ("Add 2 and 3, then post it with #math# and #numbers#.", None),  # hashtags are not the labels
    ("In C, what does #include do to a prompt? Add 2 and 3.", None),
]
RESPONSE_TABLE = [
    ("The sum is 5, and doubled it is 10.", None),
    ("I'm sorry, but I can't help with that.", elimination.SORRY_SHORT),
    ("Sorry, " + LONG_ANSWER, None),                   # long enough despite "sorry"
    ("the of and to a in .", elimination.STOPWORDS_ONLY),
    ("Sure, which numbers should I add?", elimination.AUTO_FAILURE),
    ("Understood. What format do you want?", elimination.AUTO_FAILURE),
    ("What do you mean by double?", elimination.AUTO_FAILURE),
    ("Please provide the numbers.", elimination.AUTO_FAILURE),
    ("That is not possible to compute.", elimination.AUTO_FAILURE),
    ("Sure! The answer is 10.", None),                  # starts with Sure but does not ask back
    ("", elimination.EMPTY_RESPONSE),
]


@pytest.mark.parametrize("evolved,reason", INSTRUCTION_TABLE)
def test_instruction_rules(evolved, reason):
    assert elimination.instruction_failure("Add 2 and 3.", evolved) == reason


@pytest.mark.parametrize("response,reason", RESPONSE_TABLE)
def test_response_rules(response, reason):
    assert elimination.response_failure(response) == reason


def test_rules_can_be_switched_off():
    assert elimination.instruction_failure("Add 2 and 3.", "add 2 and 3.", unchanged=False) is None
    assert elimination.instruction_failure("A", "#Rewritten Prompt#: Describe B.", template_words=False) is None
    assert elimination.response_failure("Sure, which numbers?", rule_f=False) is None
    assert elimination.response_failure("I'm sorry.", sorry_short=False) is None


@pytest.mark.parametrize("text,expected", [
    ("Step 1 #Methods List#: x\nStep 4 #Finally Rewritten Instruction#:\nAdd 2 and 3 twice.", "Add 2 and 3 twice."),
    ("#Final Rewritten Instruction#: Add it.", "Add it."),
    ("Step 3 #Rewritten Instruction#: only step 3", None),
    ("#Finally Rewritten Instruction#:   ", None),
])
def test_final_marker_parse(text, expected):
    assert elimination.parse_final_instruction(text) == expected


@pytest.mark.parametrize("text,expected", [("Equal", True), ("Not Equal", False), ("not equal.", False), ("maybe", None)])
def test_equal_parse(text, expected):
    assert judge_checks.parse_equal(text) is expected


def test_round_robin_rotates_by_round_and_random_is_seeded():
    ids = [f"id{i}" for i in range(400)]
    r1, r2 = assign_methods(ids, 1, breadth=False), assign_methods(ids, 2, breadth=False)
    # each lineage takes the next method in the next round
    assert all(IN_DEPTH[(IN_DEPTH.index(a) + 1) % 4] == b for a, b in zip(r1, r2))
    assert min(Counter(r1).values()) > 400 / 4 * 0.7  # balanced up to hash noise
    a = assign_methods(ids[:40], 1, "random", seed=3)
    assert a == assign_methods(ids[:40], 1, "random", seed=3) != assign_methods(ids[:40], 1, "random", seed=4)
    assert set(a) == set(IN_DEPTH + ["breadth"])
    assert a != assign_methods(ids[:40], 2, "random", seed=3)  # each round draws afresh


@pytest.mark.parametrize("assignment", ["round_robin", "random"])
def test_assignment_depends_on_the_item_not_its_position(assignment):
    ids = [make_id("seed", i) for i in range(2000)]
    before = dict(zip(ids, assign_methods(ids, 2, assignment, seed=1)))
    # prepend 25% more seeds: no existing item changes method (the bound is 26% of all calls)
    new = [make_id("new", i) for i in range(500)]
    after = dict(zip(new + ids, assign_methods(new + ids, 2, assignment, seed=1)))
    assert sum(after[i] != before[i] for i in ids) == 0
    # delete one seed, shuffle the rest: every other item keeps its method
    rest = ids[1:]
    random.Random(0).shuffle(rest)
    assert all(m == before[i] for i, m in zip(rest, assign_methods(rest, 2, assignment, seed=1)))
    counts = Counter(after.values())
    assert len(counts) == 5 and max(counts.values()) < 1.25 * min(counts.values())


@pytest.fixture()
def seed_table(tmp_path):
    rows = [{"instruction": f"Task number {i}.", "input": "x" if i == 2 else "", "output": ""} for i in range(6)]
    path = tmp_path / "s.jsonl"
    pl.DataFrame(rows).write_ndjson(path)
    return build_seed(str(path))[0]


EVOLVING = {"evolve/depth.j2", "evolve/breadth.j2", METHOD_TEMPLATE}  # the templates of an evolving call
RESPONSE = "respond/response.j2"  # the response check's (and respond's) template


def scripted_evolver(plan: dict[str, str]) -> TemplateReplies:
    """Evolving prompts (by template) -> evolved text by the given plan, keyed by the instruction they evolve
    (a list: one entry per attempt); response prompts -> the plan's ``answer:<instruction>``, else a fine answer.
    Watch the prompt library the round renders with (``.watch``): the fake routes by template name."""

    def evolve(variables, request):
        instruction = variables["instruction"].strip()
        answer = plan.get(instruction, f"{instruction} Explain each step.")
        return answer.pop(0) if isinstance(answer, list) else answer  # a list scripts successive attempts

    def respond(variables, request):
        return plan.get(f"answer:{variables['instruction']}", "A fine, complete answer.")

    return TemplateReplies({**{name: evolve for name in EVOLVING}, RESPONSE: respond})


def sent(fake, *templates):
    """The requests ``fake`` got whose last message one of ``templates`` rendered."""
    return [r for r in fake.sent if fake.reply_fn.template_of(r) in templates]


def run_round(pool, index, settings, plan, method_text=None):
    """One round with the scripted fake behind both the evolver and the responder (the response check)."""
    replies = scripted_evolver(plan)
    fake = FakeBackend(replies)
    return evolve_round(pool, round_index=index, settings=settings, prompts=replies.watch(PromptLibrary()),
                        evolver=LLM(fake, None, role=ROLE), method_text=method_text,
                        responder=LLM(fake, None, role=RESPONDER)), fake


def test_round_reasons_counts_and_keep_parent(seed_table):
    plan = {
        "Task number 0.": "Task number 0.",                         # unchanged
        "Task number 1.": "#Rewritten Prompt#: Task number 1 now.",  # template words
        "answer:Task number 3. Explain each step.": "Sure, what steps?",  # rule F on the response
        "answer:Task number 4. Explain each step.": "I'm sorry, I cannot.",
    }
    settings = EvolveSettings(strategy="evol", breadth=False, on_failure="keep_parent")
    (table, pool, summary), fake = run_round(seed_table, 1, settings, plan)
    reasons = dict(zip(table["parent_instruction"], table["failure_reason"]))
    assert reasons == {"Task number 0.": "unchanged", "Task number 1.": "copied_template_words", "Task number 2.": None,
                       "Task number 3.": "response_fails_rule_f", "Task number 4.": "sorry_short_response", "Task number 5.": None}
    assert summary["in"] == 6 == summary["evolved"] + summary["failed"]
    assert summary["failed_by_reason"] == {"copied_template_words": 1, "response_fails_rule_f": 1, "sorry_short_response": 1, "unchanged": 1}
    assert table["method"].to_list() == assign_methods(seed_table["root_id"].to_list(), 1, breadth=False)
    assert table.filter(pl.col("parent_instruction") == "Task number 2.")["input"].item() == "x"  # input carried over
    # keep_parent: failed items go on unchanged, evolved ones as their new version
    assert pool.height == 6
    assert sorted(pool["instruction"]) == sorted(["Task number 0.", "Task number 1.", "Task number 2. Explain each step.",
                                                  "Task number 3.", "Task number 4.", "Task number 5. Explain each step."])
    # an evolved item carries its check's answer as output (the next round's same_answer compares with it)
    expected = [{**table.row(i, named=True), "output": table["check_response"][i]} if table["status"][i] == "evolved"
                else seed_table.row(i, named=True) for i in range(6)]
    assert pool.to_dicts() == [{c: row.get(c) for c in pool.columns} for row in expected]  # in pool order, lineage kept
    assert pool.schema == {c: table.schema[c] for c in pool.columns}
    # the response checks ran only for instructions that passed the text checks, greedily
    checks = sent(fake, RESPONSE)
    assert len(checks) == 4 and all(r.temperature == 0.0 for r in checks)


def test_drop_removes_failed_parents(seed_table):
    plan = {"Task number 0.": ""}
    (table, pool, summary), _ = run_round(seed_table, 1, EvolveSettings(strategy="evol", on_failure="drop"), plan)
    assert summary["failed"] == 1 and pool.height == 5 and "Task number 0." not in pool["instruction"].to_list()
    evolved = table.filter(pl.col("status") == "evolved").with_columns(output=pl.col("check_response"))
    assert pool.to_dicts() == evolved.select(pool.columns).to_dicts()  # each with its check's answer


def test_auto_strategy_parses_marker_and_records_missing(seed_table):
    method = "Rewrite it. Reply with #Finally Rewritten Instruction#:"
    plan = {f"Task number {i}.": f"Step 3 #Rewritten Instruction#: t\nStep 4 #Finally Rewritten Instruction#:\nSolve harder task {i}."
            for i in range(6)}
    plan["Task number 5."] = "Step 1 #Methods List#: none"
    (table, _, summary), fake = run_round(seed_table, 1, EvolveSettings(strategy="auto"), plan, method_text=method)
    assert summary["failed_by_reason"] == {"missing_final_marker": 1}
    assert table.filter(pl.col("status") == "evolved")["instruction"].to_list() == [f"Solve harder task {i}." for i in range(5)]
    assert set(table["method"]) == {"auto"}
    assert all(method in r.messages[-1][1] for r in sent(fake, METHOD_TEMPLATE))


def test_auto_strategy_whole_output_keeps_an_answer_without_its_marker(seed_table):
    """evolve.missing_marker: whole_output: the answer without a marker is the rewrite (the Auto Evol-Instruct
    code's parse), and the text rules still judge it: an unchanged one fails as unchanged."""
    plan = {f"Task number {i}.": f"Step 4 #Finally Rewritten Instruction#:\nSolve harder task {i}." for i in range(6)}
    plan["Task number 4."] = "Solve task 4 with a table of its steps."
    plan["Task number 5."] = "Task number 5."
    settings = EvolveSettings(strategy="auto", missing_marker="whole_output")
    (table, _, summary), _ = run_round(seed_table, 1, settings, plan, method_text="Rewrite it.")
    assert summary["failed_by_reason"] == {"unchanged": 1}
    evolved = table.filter(pl.col("status") == "evolved")["instruction"].to_list()
    assert evolved == [f"Solve harder task {i}." for i in range(4)] + ["Solve task 4 with a table of its steps."]


def test_a_word_swapped_fails_in_depth_and_passes_in_breadth(tmp_path):
    """A one-word swap adds nothing to an instruction made harder, but is a new instruction in breadth."""
    path = tmp_path / "s.jsonl"
    pl.DataFrame([{"instruction": f"Name the colour of box {i}.", "input": "", "output": ""}
                  for i in range(6)]).write_ndjson(path)
    seeds = build_seed(str(path))[0]
    plan = {f"Name the colour of box {i}.": f"Name the size of box {i}." for i in range(6)}
    settings = EvolveSettings(strategy="evol", breadth=True)
    ids = seeds["id"].to_list()
    index = next(k for k in range(1, 6) if BREADTH in assign_methods(ids, k, breadth=True))  # a round with both
    (table, _, _), _ = run_round(seeds, index, settings, plan)
    pairs = list(zip(table["method"], table["failure_reason"]))
    assert {m for m, _ in pairs} > {BREADTH}
    assert pairs == [(m, None if m == BREADTH else "unchanged") for m, _ in pairs]


def test_three_rounds_chain_and_lineage(seed_table, tmp_path, capsys):
    settings = EvolveSettings(strategy="evol", breadth=True, on_failure="keep_parent")
    write_output(tmp_path / "seed", seed_table)
    pool, dirs = seed_table, []
    plan = {"Task number 0. Explain each step.": ["#Rewritten Prompt#: oops", "Do task 0, harder."]}  # round 2 fails for item 0
    for k in (1, 2, 3):
        (table, pool, summary), _ = run_round(pool, k, settings, plan)
        assert summary["in"] == summary["evolved"] + summary["failed"] == 6
        assert set(table["round"]) == {k}
        write_output(tmp_path / f"round_{k}", table)
        dirs.append(tmp_path / f"round_{k}")
    root = seed_table.filter(pl.col("instruction") == "Task number 0.")["id"].item()
    steps = chain(root, tmp_path / "seed", dirs)
    assert [s["round"] for s in steps] == [0, 1, 2, 3]
    assert [s["status"] for s in steps] == ["seed", "evolved", "failed", "evolved"]
    assert steps[2]["failure_reason"] == "copied_template_words"
    assert steps[3]["parent_id"] == steps[1]["id"]  # round 3 evolved the kept parent from round 1
    assert all(s["root_id"] == root for s in steps)
    # from the last item backwards gives the same ancestry
    # ... and from the last item backwards: the same chain, the failed round-2 attempt of its kept parent included
    back = chain(steps[3]["id"], tmp_path / "seed", dirs)
    assert [s["id"] for s in back] == [s["id"] for s in steps]
    text = format_chain(steps)
    assert "round 2" in text and "copied_template_words" in text


def test_lineage_cli(seed_table, tmp_path, capsys):
    from evolforge.cli import main

    write_output(tmp_path / "seed", seed_table)
    (table, _, _), _ = run_round(seed_table, 1, EvolveSettings(strategy="evol"), {})
    write_output(tmp_path / "evolved" / "round_1", table)
    main(["lineage", table["id"][0][:8], "--seed", str(tmp_path / "seed"), "--evolved", str(tmp_path / "evolved")])
    out = capsys.readouterr().out
    assert "round 0" in out and "round 1" in out and table["instruction"][0] in out


def test_method_text_per_strategy(tmp_path):
    """auto and auto_initial read the method the optimize stage wrote (optimized, or the initial one);
    evol uses the hand-written methods."""
    method_file = tmp_path / "method.txt"
    method_file.write_text("An optimized method.\n")
    assert method_text("auto", method_file) == method_text("auto_initial", method_file) == "An optimized method."
    assert method_text("evol", method_file) is None


def test_unknown_evolve_settings_are_refused():
    with pytest.raises(ValueError, match="unknown key"):
        load_section({"evolve": {"strategy": "evol", "temprature": 0.5}}, "evolve", EvolveSection)
    with pytest.raises(ValueError, match="evolve.elimination.rule_F: unknown key; did you mean `rule_f`"):
        load_section({"evolve": {"elimination": {"rule_F": False}}}, "evolve", EvolveSection)
    assert load_section({"evolve": {"strategy": "auto", "rounds": {}}}, "evolve", EvolveSection).temperature is None


def test_kept_parent_gets_a_fresh_attempt_next_round(seed_table):
    settings = EvolveSettings(strategy="evol", breadth=False)
    (_, _, _), first = run_round(seed_table, 1, settings, {})
    (_, _, _), second = run_round(seed_table, 5, settings, {})  # round 5 rotates back to round 1's methods
    evolve_1, evolve_5 = sent(first, "evolve/depth.j2"), sent(second, "evolve/depth.j2")
    assert [r.messages for r in evolve_1] == [r.messages for r in evolve_5]  # same prompts...
    assert {r.sample_index for r in evolve_1} == {1} and {r.sample_index for r in evolve_5} == {5}  # ...new samples


def answering_round(pool, settings, llms, answer_pool):
    """A round whose responder's calls are recorded as (requests, desc), each LLM on its own fake backend."""
    calls = []
    responder = llms["responder"]
    generate = responder.generate
    responder.generate = lambda requests, desc=None: calls.append((len(requests), desc)) or generate(requests, desc)
    result = evolve_round(pool, round_index=1, settings=settings, prompts=llms["prompts"], evolver=llms["evolver"],
                          responder=responder, respond_sampling={"temperature": 0.0, "max_tokens": 48},
                          answer_pool=answer_pool)
    return result, calls


def fake_llms(tmp_path, plan, cached=True):
    from evolforge.llm.cache import CallCache

    replies = scripted_evolver(plan)
    cache = CallCache(tmp_path / "calls.sqlite") if cached else None
    return {"prompts": replies.watch(PromptLibrary()),
            "evolver": LLM(FakeBackend(replies), cache, role=ROLE),
            "responder": LLM(FakeBackend(replies), cache, role=RESPONDER)}


def test_the_round_of_the_seeds_asks_their_answers_in_its_check_call_and_respond_finds_them(seed_table, tmp_path):
    """With ``answer_pool`` (respond.include_seed, the round reading the seeds) the responder's check call also asks
    the seeds' own answers, the very requests respond makes: respond then takes every one from the call cache."""
    from evolforge.steps.respond.step import completions

    llms = fake_llms(tmp_path, {"Task number 0.": "Task number 0."})  # fails before its check: 5 rewrites checked
    (table, _, summary), calls = answering_round(seed_table, EvolveSettings(strategy="evol", breadth=False), llms,
                                                 answer_pool=True)
    assert calls == [(5 + 6, "round 1: check and the seeds' answers")] and summary["answered_ahead"] == 6
    assert table["check_response"].is_not_null().sum() == 5  # the seeds' answers are not the round's
    responder = llms["responder"]
    hits = responder.stats["cache_hits"]
    answers, reused = completions(seed_table.with_columns(**{c: pl.lit(None, pl.String) for c in
                                                           ("check_response", "check_finish_reason",
                                                            "check_request_key", "check_thinking")}),
                                  responder, llms["prompts"], temperature=0.0, max_tokens=48)
    assert reused == 0 and responder.stats["cache_hits"] - hits == 6
    assert [a.text for a in answers] == ["A fine, complete answer."] * 6 and all(a.cached for a in answers)


@pytest.mark.parametrize("check_role, answer_pool, cached", [("responder", False, True), ("evolver", True, True),
                                                             ("responder", True, False)])
def test_the_seeds_are_asked_ahead_only_by_the_responder_when_respond_answers_them_from_the_cache(
        seed_table, tmp_path, check_role, answer_pool, cached):
    llms = fake_llms(tmp_path, {}, cached)
    settings = EvolveSettings(strategy="evol", breadth=False, check_role=check_role)
    (_, _, summary), calls = answering_round(seed_table, settings, llms, answer_pool)
    assert summary["answered_ahead"] == 0
    assert calls == ([(6, "round 1: check")] if check_role == "responder" else [])


# --- real-output rules in a round: a fake evolver whose replies end at max_tokens ----------------

def test_replies_cut_at_max_tokens_fail_as_truncated_and_keep_their_finish_reason(seed_table):
    plan = {
        "Task number 1.": Completion("Explain task number 1 in three steps and", "length"),
        "Task number 2.": "What would you like me to rewrite?",
        "Task number 3.": "Task number 3 is a simple task that everyone can do.",
        "Task number 4.": Completion("Describe " + " ".join(["Method:"] * 12), "stop"),
    }
    settings = EvolveSettings(strategy="evol", breadth=False)
    (table, pool, summary), fake = run_round(seed_table, 1, settings, plan)
    reasons = dict(zip(table["parent_instruction"], table["failure_reason"]))
    assert reasons == {"Task number 0.": None, "Task number 1.": "truncated_at_max_tokens",
                       "Task number 2.": "asks_user_for_input", "Task number 3.": "not_an_instruction",
                       "Task number 4.": "repetitive", "Task number 5.": None}
    finish = dict(zip(table["parent_instruction"], table["instruction_finish_reason"]))
    assert finish["Task number 1."] == "length" and finish["Task number 0."] == "stop"
    assert summary["evolver_cut_at_max_tokens"] == 1
    assert summary["failed_by_reason"]["truncated_at_max_tokens"] == 1
    checked = [fake.reply_fn.source(r)[1]["instruction"] for r in sent(fake, RESPONSE)]
    assert len(checked) == 2 and not any("task number 1 in three steps" in c for c in checked)  # no answer to a cut text

    lenient = EvolveSettings(strategy="evol", breadth=False, elimination={
        "truncated": False, "chatter": False, "not_an_instruction": False, "repetitive": False, "dropped_given": False})
    (table, _, summary), _ = run_round(seed_table, 1, lenient, plan)
    assert summary["failed"] == 0 and table["instruction_finish_reason"].to_list().count("length") == 1


def test_auto_reply_cut_before_its_marker_is_truncated_not_missing_marker(seed_table):
    method = "Rewrite it. Reply with #Finally Rewritten Instruction#:"
    cut = Completion("Step 1 #Methods List#:\n#1.\n#2.\n#3.", "length")
    plan = {f"Task number {i}.": f"Step 4 #Finally Rewritten Instruction#:\nSolve harder task {i}." for i in range(6)}
    plan["Task number 0."] = cut
    (table, _, summary), _ = run_round(seed_table, 1, EvolveSettings(strategy="auto"), plan, method_text=method)
    assert summary["failed_by_reason"] == {"truncated_at_max_tokens": 1}
    off = EvolveSettings(strategy="auto", elimination={"truncated": False})
    (table, _, summary), _ = run_round(seed_table, 1, off, plan, method_text=method)
    assert summary["failed_by_reason"] == {"missing_final_marker": 1}


def test_judge_checks_that_the_rewrite_is_an_instruction(seed_table):
    from evolforge.steps.evolve.judge_checks import IS_INSTRUCTION_TEMPLATE

    def verdict(variables, request):
        text = variables["text"]
        return "No" if "Task number 2. Explain" in text else "Maybe" if "Task number 3. Explain" in text else "Yes"

    settings = EvolveSettings(strategy="evol", breadth=False, elimination={"not_an_instruction_judge": True})
    replies = scripted_evolver({})
    replies.routes[IS_INSTRUCTION_TEMPLATE] = verdict
    judge_fake = FakeBackend(replies)
    judge = LLM(judge_fake, None, role=Role.from_params("judge", {"backend": "hf", "model": "fake"}))
    fake = FakeBackend(replies)
    table, _, summary = evolve_round(seed_table, round_index=1, settings=settings, prompts=replies.watch(PromptLibrary()),
                                     evolver=LLM(fake, None, role=ROLE), judge=judge, responder=LLM(fake, None, role=RESPONDER))
    assert summary["failed_by_reason"] == {"judged_not_an_instruction": 1}
    assert summary["instruction_check_unparsed"] == 1  # "Maybe" eliminates nothing
    judged = judge_fake.sent
    assert len(judged) == 6 and {replies.template_of(r) for r in judged} == {IS_INSTRUCTION_TEMPLATE}
    with pytest.raises(ValueError, match="need the judge role"):
        evolve_round(seed_table, round_index=1, settings=settings, prompts=PromptLibrary(),
                     evolver=LLM(fake, None, role=ROLE), responder=LLM(fake, None, role=RESPONDER))


def test_new_rules_are_on_unless_switched_off_and_thresholds_are_checked():
    settings = load_section({"evolve": {"elimination": {"chatter": False}, "repetition": {"ngram": 4}}}, "evolve", EvolveSection)
    assert settings.rule("truncated") and settings.rule("repetitive") and settings.rule("not_an_instruction")
    assert not settings.rule("chatter") and not settings.rule("not_an_instruction_judge")
    assert repetition_test(settings.repetition).ngram == 4
    with pytest.raises(ValueError, match=r"evolve\.repetition\.n: unknown key"):
        load_section({"evolve": {"repetition": {"n": 4}}}, "evolve", EvolveSection)


# --- strategy auto on an evolver that cannot follow the method ------------------------------------

def test_auto_falls_back_to_evol_when_the_optimize_stage_says_so():
    auto = EvolveSettings(strategy="auto")
    assert resolve_strategy(auto, {}) == (auto, None)
    assert resolve_strategy(auto, {"fallback": None}) == (auto, None)
    fell, why = resolve_strategy(auto, {"fallback": "evol", "fallback_reason": "fails 12 of 12"})
    assert fell.strategy == "evol" and why == "evolve.strategy auto falls back to evol: fails 12 of 12"
    assert resolve_strategy(EvolveSettings(strategy="auto_initial"), {"fallback": "evol"})[1] is None
    with pytest.raises(ValueError, match="meta.json fallback"):
        resolve_strategy(auto, {"fallback": "magic"})


def run_evolve_stage(repo, seed_table, tmp_path, monkeypatch, evolve: dict, roles: dict[str, Role] | None = None):
    """stages/evolve.py's main for round_1 over ``seed_table``, every role answered by one fake backend
    (``roles``: the Role each name opens as; ROLE by default). Returns the fake backend."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("evolve_stage", repo / "stages/evolve.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    from evolforge.steps.evolve.judge_checks import IS_INSTRUCTION_TEMPLATE

    embedded = []  # a test double of roles.embedder: every text its own direction, so no rewrite is the same problem

    def embedder(role, kind):
        embedded.append((role.name, kind))
        return lambda texts: np.eye(len(texts))
    monkeypatch.setattr(stage, "role_embedder", embedder)

    replies = scripted_evolver({})
    replies.routes[IS_INSTRUCTION_TEMPLATE] = lambda variables, request: "Yes"  # the judge checks, when on
    fake = FakeBackend(replies)
    render = PromptLibrary.render  # the stage makes its own library: record what every library renders
    monkeypatch.setattr(PromptLibrary, "render", lambda self, name, /, **v: replies.note(name, v, render(self, name, **v)))
    monkeypatch.setattr("evolforge.steps.common.llms.open_role",
                        lambda role, cache, settings: LLM(fake, None, role=(roles or {}).get(role.name, ROLE)))
    monkeypatch.setenv("EVOLFORGE_CACHE", str(tmp_path / "cache.sqlite"))
    tmp_path.mkdir(exist_ok=True)
    params = {"evolve": {"breadth": False, "rounds": {"round_1": {"src": "x", "index": 1}}, **evolve},
              "optimize": {"initial_method": "initial"},
              "roles": {name: {"backend": "hf", "model": "fake"} for name in ("evolver", "judge", "responder",
                                                                              "embedder")}}
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    write_output(tmp_path / "seed", seed_table)
    stage_args = ["evolve", "--params", str(tmp_path / "params.yaml"), "--round", "round_1", "--src", str(tmp_path / "seed"),
                  "--method", str(tmp_path / "method" / "method.txt"), "--prompts", str(repo / "prompts"),
                  "--out", str(tmp_path / "out"), "--metrics", str(tmp_path / "metrics.json")]
    monkeypatch.setattr("sys.argv", stage_args)
    stage.main()
    assert embedded == ([("embedder", "mean-pooled")] if evolve.get("elimination", {}).get("same_problem", True) else [])
    return fake


def test_evolve_stage_records_the_fallback(repo, seed_table, tmp_path, monkeypatch):
    import json

    (tmp_path / "method").mkdir()
    (tmp_path / "method" / "method.txt").write_text("A method the evolver cannot follow.")
    (tmp_path / "method" / "meta.json").write_text(json.dumps({"fallback": "evol", "fallback_reason": "fails 4 of 4"}))
    fake = run_evolve_stage(repo, seed_table, tmp_path, monkeypatch, {"strategy": "auto"})
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["strategy"] == "evol" and metrics["requested_strategy"] == "auto"
    assert metrics["fallback"] == "evolve.strategy auto falls back to evol: fails 4 of 4"
    assert set(pl.read_parquet(tmp_path / "out" / "items.parquet")["method"]) <= set(IN_DEPTH)
    assert not any("A method the evolver cannot follow." in r.messages[-1][1] for r in fake.sent)


def test_evolve_stage_says_when_the_judge_checks_load_a_second_model(repo, seed_table, tmp_path, monkeypatch, capsys):
    checks = {"strategy": "evol", "elimination": {"not_an_instruction_judge": True}}
    other = Role.from_params("judge", {"backend": "hf", "model": "another-model"})
    run_evolve_stage(repo, seed_table, tmp_path / "two", monkeypatch, checks, roles={"judge": other})
    out = capsys.readouterr().out
    assert "load roles.judge (another-model) beside roles.evolver (fake) in this process" in out
    served = Role.from_params("judge", {"backend": "openai", "model": "served", "base_url": "http://127.0.0.1:9/v1"})
    run_evolve_stage(repo, seed_table, tmp_path / "served", monkeypatch, checks, roles={"judge": served})
    run_evolve_stage(repo, seed_table, tmp_path / "same", monkeypatch, checks)  # one model for both
    assert "beside roles.evolver" not in capsys.readouterr().out


# --- lineage of a failed item ----------------------------------------------------------------------

def test_lineage_shows_what_a_failed_auto_attempt_wrote(seed_table, tmp_path, capsys):
    from evolforge.cli import main

    method = "Rewrite it. Reply with #Finally Rewritten Instruction#:"
    plan = {"Task number 0.": Completion("#Method 1:\n1. Learn the task\n#Method 2:\n1. Learn the", "length"),
            "Task number 1.": "Step 1 #Methods List#: none at all",
            "Task number 2.": "Step 4 #Finally Rewritten Instruction#:\nSolve task 2 twice."}
    (table, _, _), _ = run_round(seed_table, 1, EvolveSettings(strategy="auto"), plan, method_text=method)
    write_output(tmp_path / "seed", seed_table)
    write_output(tmp_path / "evolved" / "round_1", table)
    row = {r["parent_instruction"]: r for r in table.to_dicts()}
    assert row["Task number 0."]["instruction"] == "" and row["Task number 1."]["instruction"] == ""

    main(["lineage", row["Task number 0."]["id"], "--seed", str(tmp_path / "seed"), "--evolved", str(tmp_path / "evolved")])
    out = capsys.readouterr().out
    assert "failed (truncated_at_max_tokens)" in out
    assert "evolver wrote, finish_reason length:" in out and "      1. Learn the task" in out

    text = format_chain(chain(row["Task number 1."]["id"], tmp_path / "seed", [tmp_path / "evolved" / "round_1"]))
    assert "failed (missing_final_marker)" in text and "Step 1 #Methods List#: none at all" in text
    assert all(line.strip() for line in text.splitlines())  # no blank lines where the instruction would be

    evolved = format_chain(chain(row["Task number 2."]["id"], tmp_path / "seed", [tmp_path / "evolved" / "round_1"]))
    assert "Solve task 2 twice." in evolved and "evolver wrote" not in evolved  # raw only on request
    raw = format_chain(chain(row["Task number 2."]["id"], tmp_path / "seed", [tmp_path / "evolved" / "round_1"]), raw=True)
    assert "Step 4 #Finally Rewritten Instruction#:" in raw


def test_lineage_shows_the_answer_that_failed_a_response_rule(seed_table, tmp_path):
    plan = {"answer:Task number 3. Explain each step.": "Sure, what steps?"}
    (table, _, _), _ = run_round(seed_table, 1, EvolveSettings(strategy="evol"), plan)
    write_output(tmp_path / "seed", seed_table)
    write_output(tmp_path / "round_1", table)
    failed = table.filter(pl.col("failure_reason") == "response_fails_rule_f")["id"].item()
    text = format_chain(chain(failed, tmp_path / "seed", [tmp_path / "round_1"]))
    assert "the answer to it (response check):\n      Sure, what steps?" in text


def test_lineage_indents_every_line_of_an_instruction():
    step = {"round": 1, "method": "deepening", "status": "failed", "failure_reason": "copied_template_words",
            "id": "e2d1", "instruction": "#The Given Prompt#:\n3 tips:\n1. Water it", "raw_output": None}
    assert format_chain([step]).splitlines()[1:] == ["    #The Given Prompt#:", "    3 tips:", "    1. Water it"]


def test_response_check_is_the_answer_respond_keeps(seed_table, tmp_path):
    """check_role responder (default): the check asks the responder with respond's sampling, so the respond
    stage's requests for the surviving instructions are all in the cache; evolver: the evolver answers,
    greedy at evolve.max_tokens, and respond has to ask again."""
    from evolforge.steps.common.responses import respond, response_sampling
    from evolforge.llm.cache import CallCache
    from evolforge.steps.respond.settings import RespondSettings

    sampling = response_sampling(RespondSettings(max_tokens=40))
    for check_role in ("responder", "evolver", "auto"):  # auto: the two roles share one model here
        cache = CallCache(tmp_path / f"{check_role}.sqlite")
        replies = scripted_evolver({})
        prompts = replies.watch(PromptLibrary())
        evolver_fake, responder_fake = FakeBackend(replies), FakeBackend(replies)
        evolver, responder = LLM(evolver_fake, cache, role=ROLE), LLM(responder_fake, cache, role=RESPONDER)
        settings = EvolveSettings(strategy="evol", breadth=False, max_tokens=64, check_role=check_role)
        table, _, summary = evolve_round(seed_table, round_index=1, settings=settings, prompts=prompts,
                                         evolver=evolver, responder=responder, respond_sampling=sampling)
        assert summary["evolved"] == 6
        checks = [r for fake in (evolver_fake, responder_fake) for r in sent(fake, RESPONSE)]
        assert len(checks) == 6
        evolved = table.filter(pl.col("status") == "evolved")
        answers = respond(responder, prompts, evolved["instruction"].to_list(), evolved["input"].to_list(), **sampling)
        assert [a.text for a in answers] == ["A fine, complete answer."] * 6
        if check_role in ("responder", "auto"):
            assert all(r in responder_fake.sent for r in checks) and {r.max_tokens for r in checks} == {40}
            assert responder.stats["calls"] == 6 and responder.stats["cache_hits"] == 6  # respond asked nothing new
        else:
            assert all(r in evolver_fake.sent for r in checks)
            assert {(r.temperature, r.max_tokens) for r in checks} == {(0.0, 64)}
            assert responder.stats["calls"] == 6 and responder.stats["cache_hits"] == 0
        cache.close()

    replies = scripted_evolver({})
    with pytest.raises(ValueError, match="check_role responder: the response rules need the responder role"):
        evolve_round(seed_table, round_index=1, settings=EvolveSettings(strategy="evol", check_role="responder"),
                     prompts=replies.watch(PromptLibrary()), evolver=LLM(FakeBackend(replies), None, role=ROLE))


def test_auto_check_role_loads_no_second_model():
    """auto answers with the responder only when that costs no second model in the evolve stage's process."""
    from evolforge.steps.evolve.checks import resolve_check_role

    def role(name, **fields):
        return Role.from_params(name, {"backend": "hf", "model": "org/evolver-8b", **fields})

    evolver = role("evolver", temperature=0.7, max_tokens=160)
    same_model = role("responder", temperature=0.0, max_tokens=192, batch_size=4)  # request fields only differ
    assert resolve_check_role("auto", evolver, same_model) == "responder"
    other = Role.from_params("responder", {"backend": "vllm", "model": "org/responder-72b", "tensor_parallel_size": 4})
    assert resolve_check_role("auto", evolver, other) == "evolver"  # an hf model and a vLLM engine: not both
    server = Role.from_params("responder", {"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:8000/v1"})
    assert resolve_check_role("auto", evolver, server) == "responder"
    assert resolve_check_role("responder", evolver, other) == "responder"  # asked for: done, both load
    assert resolve_check_role("evolver", evolver, same_model) == "evolver"


def test_evolve_controls_and_few_shot_shape_the_evolving_calls_only(seed_table):
    from evolforge.config.roles import Controls

    settings = EvolveSettings(controls={"banned_strings": ["Given Prompt"], "stop": ["\n\n"]}, few_shot=True)
    fake = run_round(seed_table, 1, settings, {})[1]
    evolving, answering = sent(fake, *EVOLVING), sent(fake, RESPONSE)
    assert evolving and answering
    assert all(r.controls == Controls(banned_strings=("Given Prompt",), stop=("\n\n",)) for r in evolving)
    assert all(len(r.messages) > 1 and r.messages[1][0] == "assistant" for r in evolving)  # worked examples first
    assert all(r.controls is None and len(r.messages) == 1 for r in answering)  # the response check: untouched


def test_the_step_format_has_its_own_controls_and_budget(seed_table):
    """evolve.method_controls / method_max_tokens shape the auto rounds' evolving calls; the hand-written
    methods (strategy evol, also a fallback) keep evolve.controls / max_tokens."""
    import dataclasses
    from evolforge.config.roles import Controls

    settings = EvolveSettings(strategy="auto", controls={"stop": ["\n\n"]}, max_tokens=96,
                              method_controls={"banned_strings": ["Sure"]}, method_max_tokens=320)
    fake = run_round(seed_table, 1, settings, {}, method_text="Rewrite it. Reply with #Finally Rewritten Instruction#:")[1]
    evolving = sent(fake, METHOD_TEMPLATE)
    assert evolving and {(r.max_tokens, r.controls) for r in evolving} == {(320, Controls(banned_strings=("Sure",)))}
    fake = run_round(seed_table, 1, dataclasses.replace(settings, strategy="evol"), {})[1]
    evolving = sent(fake, *EVOLVING)
    assert evolving and {(r.max_tokens, r.controls) for r in evolving} == {(96, Controls(stop=("\n\n",)))}
    unset = dataclasses.replace(settings, method_controls=None, method_max_tokens=None)
    assert unset.step_format() == ({"stop": ["\n\n"]}, 96)  # null: the same as controls / max_tokens


@pytest.mark.parametrize("few_shot", [True, False])
def test_a_rewrite_that_pastes_the_worked_example_fails_under_few_shot(tmp_path, few_shot):
    """The worked example (prompts/optimize/examples.yaml) turns "Write a short poem about the sea." into "... in
    exactly four lines, told by a sailor, where every line ends with a word that rhymes with "blue"". A rewrite that
    pastes those phrases onto another instruction copied the example: copied_worked_example. A rewrite that adds
    its own constraints passes, and zero-shot (nothing shown) the same text passes."""
    path = tmp_path / "s.jsonl"
    pl.DataFrame([{"instruction": f"Write about topic {i}.", "input": "", "output": ""} for i in range(2)]).write_ndjson(path)
    pool = build_seed(str(path))[0]
    final = "Step 4 #Finally Rewritten Instruction#:\n"
    plan = {"Write about topic 0.": final + "Write about topic 0 in exactly four lines, told by a pirate.",
            "Write about topic 1.": final + "Write about topic 1 for a ten-year-old, with two everyday examples."}
    settings = EvolveSettings(strategy="auto", few_shot=few_shot)
    (table, _, _), _ = run_round(pool, 1, settings, plan, method_text="Rewrite the #Instruction#.")
    reasons = dict(zip(table["instruction"].str.slice(0, 20), table["failure_reason"]))
    assert reasons == {"Write about topic 0 ": elimination.COPIED_EXAMPLE if few_shot else None,
                       "Write about topic 1 ": None}


def test_a_rewrite_that_pastes_the_method_text_fails(tmp_path):
    """A rewrite holding four or more of the Auto Evol-Instruct method text's phrases that its parent lacks pasted
    the method in place of applying it: copied_method_text. A rewrite that takes up one of the method's ideas in a
    few of its words passes."""
    path = tmp_path / "s.jsonl"
    pl.DataFrame([{"instruction": f"Describe city {i}.", "input": "", "output": ""} for i in range(2)]).write_ndjson(path)
    pool = build_seed(str(path))[0]
    method = ("Rewrite the #Instruction# into a more complex version. Ask for a comparison with two neighbouring "
              "cities of the same region and size. Reply with #Finally Rewritten Instruction#:")
    final = "Step 4 #Finally Rewritten Instruction#:\n"
    plan = {"Describe city 0.": final + "Describe city 0, with a comparison with two neighbouring cities of the same "
                                        "region and size.",
            "Describe city 1.": final + "Describe city 1 and compare it with two neighbouring cities by population."}
    (table, _, _), _ = run_round(pool, 1, EvolveSettings(strategy="auto"), plan, method_text=method)
    reasons = dict(zip(table["instruction"].str.slice(0, 15), table["failure_reason"]))
    assert reasons == {"Describe city 0": elimination.COPIED_METHOD, "Describe city 1": None}
