"""The verify step: parsing (table-driven), the verdict rules, the flow with a fake model answering by template, real
sandbox runs of answers against tests they did not write, the stage, and the selection that uses the verdicts."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from evolforge.config.bounds import ParamsError
from evolforge.config.loader import load_section
from evolforge.config.roles import Role
from evolforge.core.prompts import PromptLibrary
from evolforge.config.runtime import LLMSettings
from evolforge.llm.backends.fake import FakeBackend, TemplateReplies
from evolforge.llm.backends.openai.http import LLMRequestError
from evolforge.llm.budget import BudgetExhaustedError
from evolforge.llm.cache import CallCache
from evolforge.llm.accounting import stage_accounting
from evolforge.llm.cached import LLM
from evolforge.llm.types import Completion, ControlsError, LLMFailureError
from evolforge.steps.common.function_runs import FunctionRun, run_function
from evolforge.steps.select.near_duplicates import walk_near_duplicates
from evolforge.steps.select.selection import select_items
from evolforge.steps.select.settings import SelectSettings
from evolforge.steps.verify.code_tests import (EVALUATE, consensus, function_name, is_code_task, judge_runs,
                                               parse_tests, program_for, stated_examples)
from evolforge.steps.verify.correctness import label_verdict, parse_reason
from evolforge.steps.verify.methods import Item, verify_judged, verify_numbers
from evolforge.steps.verify.numeric import compare_values, is_numeric_task, program_value, stated_values
from evolforge.steps.verify.settings import VerifySettings
from evolforge.steps.verify.step import VERIFY_ERROR, choose_method, verify
from stage_runs import run_stage

REPO = Path(__file__).resolve().parents[1]
REVERSE = "Write a Python function that reverses the words in a sentence."
REVERSE_RIGHT = "Here it is:\n```python\ndef reverse_words(s):\n    return ' '.join(s.split()[::-1])\n```\nDone."
REVERSE_WRONG = "```python\ndef reverse_words(s):\n    return s[::-1]\n```"
TESTS_TEXT = ("```python\nassert solution('a b c') == 'c b a'\nassert solution('hello world') == 'world hello'\n"
              "assert solution('x') == 'x'\nassert solution('one two') == 'one two'\n```")  # the last one is wrong
SUM_DIFF = "The sum of two numbers is 50 and their difference is 12. What are the numbers?"


# --- parsing and rules, table-driven -------------------------------------------------------------------------------

@pytest.mark.parametrize("task, name", [
    ("Complete the function:\ndef add(a, b):\n    '''Sum.'''\n", "add"),
    ("Write a function `count_vowels(text)` that counts vowels.", "count_vowels"),
    (REVERSE, "solution"),
])
def test_function_name(task, name):
    assert function_name(task) == name


@pytest.mark.parametrize("text, tests", [
    ("assert f(1) == 2\nassert f(1) == 2\n", ["assert f(1) == 2"]),  # deduplicated
    ("1. assert f(1) == 2\n- assert f(2) == 3\n`assert f(3) == 4`", ["assert f(1) == 2", "assert f(2) == 3",
                                                                     "assert f(3) == 4"]),
    ("assert g(1) == 2\nassert f(1 ==\nprint(f(1))", []),  # another function, does not parse, not an assert
    (None, []),
])
def test_parse_tests(text, tests):
    assert parse_tests(text, "f") == tests


def test_program_for_binds_the_asked_name_and_joins_a_signature_with_its_body():
    program = program_for(REVERSE_RIGHT, "solution")
    assert "solution = reverse_words" in program and program.endswith(EVALUATE)
    body_only = "```python\n    return a + b\n```"
    assert "def add(a, b)" in program_for(body_only, "add", "def add(a, b):\n    '''Sum.'''\n")
    assert program_for("No code here.", "solution") is None


def test_consensus_is_codets_dual_agreement():
    # two programs pass tests 0 and 1 (score 2 x 2 = 4); one passes all three (1 x 3 = 3)
    assert consensus([[True, True, False], [True, True, True], [True, True, False]]) == ([0, 2], 4)


def _run(results):
    return FunctionRun("ok", tuple(results), tuple(None for _ in results))


@pytest.mark.parametrize("rows, verdict, confidence", [
    # the answer fails only a test no program passes: that test is dropped, the answer is right
    ([[True, True, False], [True, True, False]], "right", 1.0),
    # a wrong test one peer passes: 2 of 3 kept for the answer, but it is in the top group with the other peer
    ([[True, True, False], [True, True, True], [True, True, False]], "right", 2 / 3),
    # the answer fails what two agreeing peers pass
    ([[True, False, False], [True, True, True], [True, True, True]], "wrong", 1 / 3),
    # nothing passes anything: no kept test
    ([[False, False], [False, False]], "unsure", None),
])
def test_code_verdicts(rows, verdict, confidence):
    out = judge_runs(["t0", "t1", "t2"][:len(rows[0])], [_run(r) for r in rows], min_pass=0.8)
    assert out.verdict == verdict
    assert out.confidence == (pytest.approx(confidence) if confidence is not None else None)


def test_without_consensus_a_top_group_does_not_vouch_for_an_answer_below_min_pass():
    # answer and one peer share a bug (they fail t2, which the other peer passes): CodeT's group of two wins
    rows = [[True, True, False], [True, True, False], [True, True, True]]
    assert judge_runs(["t0", "t1", "t2"], [_run(r) for r in rows], min_pass=1.0).verdict == "right"
    out = judge_runs(["t0", "t1", "t2"], [_run(r) for r in rows], min_pass=1.0, with_consensus=False)
    assert out.verdict == "wrong" and "below verify.min_pass 1" in out.evidence["why"]
    assert out.confidence == pytest.approx(2 / 3)


def test_the_tasks_own_examples_are_never_dropped_and_one_failed_sinks_the_answer():
    # example e0 fails for every program: still kept (the task states it), so the answer is wrong
    rows = [[False, True, True], [False, True, True]]
    out = judge_runs(["e0", "t1", "t2"], [_run(r) for r in rows], min_pass=0.8, examples=1)
    assert out.verdict == "wrong" and out.evidence["why"] == "fails a stated example: e0"
    assert [(r["kept"], r["example"]) for r in out.evidence["results"]] == [(True, True), (True, False),
                                                                            (True, False)]
    assert judge_runs(["e0", "t1"], [_run([True, True]), _run([True, False])], 0.8, examples=1).verdict == "right"


@pytest.mark.parametrize("task, expected", [
    ("def add(a, b):\n    >>> add(1, 2)\n    3\n    >>> add(-1, 1)\n    0\n", ["assert add(1, 2) == 3",
                                                                             "assert add(-1, 1) == 0"]),
    # HumanEval's other spellings: ==, =>, ➞, ->; a comment or a trailing period cut
    ("    add([1, 2], 5) ➞ False # unbalanced\n    add('ab', 'c') => 'abc'.\n    add(0, 0) == 0",
     ["assert add([1, 2], 5) == False", "assert add('ab', 'c') == 'abc'", "assert add(0, 0) == 0"]),
    # not literals (a name, an expression as the value), another function, a doctest without its value
    ("add(a, 1) == 2\nadd(1, 2) -> 1 + 2 = 3\nmul(2, 3) == 6\n>>> add(1, 1)\n>>> x = 2\n", []),
])
def test_the_examples_a_task_states(task, expected):
    assert stated_examples(task, "add") == expected


def test_an_answer_without_a_function_fails_every_test():
    out = judge_runs(["t0"], [None, _run([True]), _run([True])], min_pass=0.8)
    assert out.verdict == "wrong" and out.evidence["answer_run"] == "no_function"


@pytest.mark.parametrize("greedy, others, verdict", [
    ([12.0], [19.0, 19.0, 19.0], "wrong"),
    ([31.0], [31.0, 31.0, 19.0], "right"),
    ([31.0], [31.0000001, 31.0, None], "right"),  # within the tolerance; two of the three asked agree
    ([31.0], [31.0, None, None], "unsure"),  # one of three asked: not a majority
    ([15.0], [15.0, 12.0, None], "unsure"),  # one sample agrees, one does not, the program printed nothing
    ([16.67], [50 / 3, 50 / 3, 1.05], "right"),  # a rounded answer meets its exact recomputation at 0.5 %
    ([31.0], [19.0, 25.0], "unsure"),  # the others disagree among themselves
    ([], [1.0], "unsure"),
    ([5.0], [None, None], "unsure"),
    ([12.0, 38.0], [24.0, 12.0, 19.0], "unsure"),  # "38 and 12": one of three agrees
    ([19.0, 31.0], [31.0, 19.0, 19.0], "right"),  # "31 and 19": each value meets one stated
])
def test_numeric_verdicts(greedy, others, verdict):
    assert compare_values(greedy, others, 5e-3)[0] == verdict


def test_the_values_an_answer_states():
    assert stated_values("The two numbers are 38 and 12.") == [12.0, 38.0]
    assert stated_values("First 7 + 5 = 12.\nSo the answer is 12.") == [12.0]
    assert stated_values("No number here.") == []


@pytest.mark.parametrize("text, probabilities, verdict, p", [
    (json.dumps([math.log(0.9), math.log(0.1)]), True, "right", 0.9),
    (json.dumps([math.log(0.5), math.log(0.5)]), True, "unsure", 0.5),
    (json.dumps([math.log(0.2), math.log(0.8)]), True, "wrong", 0.2),
    ("not json", True, "unsure", None),
    ("Wrong.", False, "wrong", 0.0),
    ("maybe", False, "unsure", None),
    (None, True, "unsure", None),
])
def test_judge_labels(text, probabilities, verdict, p):
    got, p_right, _ = label_verdict(text, probabilities, 0.65, 0.35)
    assert got == verdict and (p_right == pytest.approx(p) if p is not None else p_right is None)


@pytest.mark.parametrize("text, said, reason", [
    ("Right: it lists four renewable sources.", "right", "it lists four renewable sources."),
    ("**Incorrect** - the idiom is misexplained.", "wrong", "the idiom is misexplained."),
    ("It depends.", None, "It depends."),
    ("", None, None),
])
def test_parse_reason(text, said, reason):
    assert parse_reason(text) == (said, reason)


@pytest.mark.parametrize("row, guard, method", [
    ({"instruction": REVERSE, "input": "", "output": REVERSE_RIGHT}, None, "code_tests"),
    ({"instruction": "Explain what a Python decorator is.", "input": "", "output": "It wraps a function."}, None,
     "judge"),
    ({"instruction": SUM_DIFF, "input": "", "output": "38 and 12."}, None, "numeric"),
    ({"instruction": SUM_DIFF, "input": "", "output": "38 and 12.", "answer_check_passed": False}, None,
     "answer_check"),
    ({"instruction": REVERSE, "input": "", "output": REVERSE_RIGHT}, "response_incomplete", "none"),
])
def test_choose_method(row, guard, method):
    assert choose_method(row, guard, VerifySettings()) == method
    assert choose_method(row, None, VerifySettings(enabled=False)) == "none"


def test_settings_refuse_crossed_judge_bounds():
    with pytest.raises(ParamsError, match="wrong_at"):
        load_section({"verify": {"right_at": 0.4, "wrong_at": 0.6}}, "verify", VerifySettings)


def test_task_kinds():
    assert is_code_task(REVERSE, REVERSE_RIGHT) and not is_code_task(REVERSE, "Reverse them by hand.")
    assert is_numeric_task(SUM_DIFF, "38 and 12.") and not is_numeric_task("Describe the water cycle.", "Rain 2 days")


# --- the sandbox, for real ------------------------------------------------------------------------------------------

def test_answers_run_against_tests_they_did_not_write_in_the_sandbox():
    tests = parse_tests(TESTS_TEXT, "solution")
    right = run_function(program_for(REVERSE_RIGHT, "solution"), tests, case_timeout_s=2)
    wrong = run_function(program_for(REVERSE_WRONG, "solution"), tests, case_timeout_s=2)
    assert right.status == "ok" and right.results == (True, True, True, False)
    assert wrong.results == (True, False, True, False)  # "a b c" reversed letter by letter is "c b a" too
    out = judge_runs(tests, [wrong, right, right], min_pass=0.8)  # two right peers outvote the wrong answer
    assert out.verdict == "wrong"
    assert [r["kept"] for r in out.evidence["results"]] == [True, True, True, False]  # the wrong test dropped


def test_program_of_thought_runs_in_the_sandbox():
    assert program_value("a, b = (50 + 12) / 2, (50 - 12) / 2\nprint(a, b)", 5, 256)[0] == 19.0
    value, why = program_value("raise ValueError('no')", 5, 256)
    assert value is None and "ValueError" in why
    assert program_value("import socket\nsocket.create_connection(('1.1.1.1', 80), 1)\nprint(1)", 5, 256)[0] is None


CALIBRATED = VerifySettings(right_at=0.65)  # a judge the bench found a threshold for (the shipped one has none)


# --- the flow, with a fake model answering by template --------------------------------------------------------------

def replies() -> TemplateReplies:
    def solution(v, request):
        return "```python\ndef solution(s):\n    return ' '.join(s.split()[::-1])\n```"

    def response(v, request):  # self-consistency samples: the right pair
        return "The numbers are 31 and 19." if "sum of two" in v["instruction"] else "Paris."

    def correctness(v, request):
        p = 0.9 if "renewable" in v["task"] else 0.2
        return json.dumps([math.log(p), math.log(1 - p)])

    return TemplateReplies({
        "verify/tests.j2": lambda v, r: TESTS_TEXT if "sentence" in v["task"] else "I cannot.",
        "verify/solution.j2": solution,
        "respond/response.j2": response,
        "verify/program.j2": lambda v, r: "```python\nprint((50 + 12) // 2, (50 - 12) // 2)\n```",
        "verify/correctness.j2": correctness,
        "verify/reason.j2": lambda v, r: ("Right: all four are renewable." if "renewable" in v["task"]
                                          else "Wrong: it does not answer."),
    })


def table() -> pl.DataFrame:
    rows = [("code-right", REVERSE, REVERSE_RIGHT, "complete", None),
            ("code-wrong", REVERSE + " Keep the order of letters.", REVERSE_WRONG, "complete", None),
            ("num-wrong", SUM_DIFF, "The two numbers are 38 and 12.", "complete", None),
            ("judged", "List four renewable sources of energy.", "Solar, wind, hydro and geothermal.", "complete", None),
            ("checked", "What is 6 times 7?", "42", "complete", True),
            ("cut", "Explain gravity.", "Gravity is", "truncated", None)]
    return pl.DataFrame({"id": [r[0] for r in rows], "round": [0, 1, 0, 0, 0, 2], "status": ["seed"] * 6,
                         "instruction": [r[1] for r in rows], "input": [""] * 6, "output": [r[2] for r in rows],
                         "response_status": [r[3] for r in rows], "answer_check_passed": [r[4] for r in rows]})


def fake_llm(name: str, routes) -> tuple[LLM, FakeBackend]:
    backend = FakeBackend(routes)
    return LLM(backend, None, role=Role.from_params(name, {"backend": "hf", "model": "fake", "max_tokens": 64})), backend


def test_verify_flow_records_a_verdict_per_item(repo):
    routes = replies()
    prompts = routes.watch(PromptLibrary(repo / "prompts"))
    (responder, sent), (judge, _) = fake_llm("responder", routes), fake_llm("judge", routes)
    out = verify(table(), responder, judge, prompts, CALIBRATED, {"temperature": None, "max_tokens": None})
    got = {r["id"]: r for r in out.to_dicts()}
    assert out.height == 6 and set(out.columns) >= {"verify_method", "verify_verdict", "verify_evidence",
                                                    "verify_confidence"}
    assert (got["code-right"]["verify_method"], got["code-right"]["verify_verdict"]) == ("code_tests", "right")
    assert got["code-wrong"]["verify_verdict"] == "wrong"
    evidence = json.loads(got["code-right"]["verify_evidence"])
    assert evidence["tests"] == 4 and evidence["kept_tests"] == 3  # 'one two' == 'one two' passed by no program
    assert [r["answer_passed"] for r in evidence["results"]] == [True, True, True, False]
    num = json.loads(got["num-wrong"]["verify_evidence"])
    assert got["num-wrong"]["verify_verdict"] == "wrong"
    assert num["answer_value"] == 12.0 and num["sample_values"] == [19.0, 19.0] and num["program_value"] == 19.0
    assert (got["judged"]["verify_verdict"], got["judged"]["verify_confidence"]) == ("right", pytest.approx(0.9))
    assert json.loads(got["judged"]["verify_evidence"])["reason"] == "all four are renewable."
    assert (got["checked"]["verify_method"], got["checked"]["verify_verdict"]) == ("answer_check", "right")
    assert (got["cut"]["verify_method"], got["cut"]["verify_verdict"]) == ("none", "unsure")
    # the tests were written without the answer: no test prompt carries it
    test_prompts = [r.messages[-1][1] for r in sent.sent if routes.template_of(r) == "verify/tests.j2"]
    assert test_prompts and not any("reverse_words" in p or "[::-1]" in p for p in test_prompts)
    # the samples differ by sample index (distinct cache keys), never the greedy answer's key
    samples = [r for r in sent.sent if routes.template_of(r) == "respond/response.j2"]
    assert sorted(r.sample_index for r in samples) == [1, 2] and {r.temperature for r in samples} == {0.7}


def _recorded(llm: LLM, routes) -> list[tuple[str | None, list[str]]]:
    """Each ``llm.complete`` call from now on, as (its desc, the templates of its requests)."""
    calls, complete = [], llm.complete

    def recorded(requests, desc=None):
        calls.append((desc, sorted({routes.template_of(r) for r in requests})))
        return complete(requests, desc=desc)

    llm.complete = recorded
    return calls


def test_the_code_tests_and_the_numbers_first_round_go_to_the_responder_in_one_call(repo):
    """Both methods' first requests in one call, so that the backend decodes them together; the numbers' other
    samples follow in a second call, for the items the first round left short of right."""
    routes = replies()
    prompts = routes.watch(PromptLibrary(repo / "prompts"))
    (responder, _), (judge, _) = fake_llm("responder", routes), fake_llm("judge", routes)
    calls = _recorded(responder, routes)
    out = verify(table(), responder, judge, prompts, CALIBRATED, {"temperature": None, "max_tokens": None})
    assert calls == [("verify code and numbers", sorted(["respond/response.j2", "verify/program.j2",
                                                         "verify/solution.j2", "verify/tests.j2"])),
                     ("verify numbers, more samples", ["respond/response.j2"])]
    assert out.filter(pl.col("id") == "num-wrong")["verify_verdict"].to_list() == ["wrong"]


def test_an_error_of_the_shared_call_leaves_both_methods_items_unsure_and_the_judge_goes_on(repo):
    routes = replies()
    prompts = routes.watch(PromptLibrary(repo / "prompts"))
    (responder, _), (judge, _) = fake_llm("responder", routes), fake_llm("judge", routes)

    def broken(requests, desc=None):
        raise OSError("call cache unreadable")

    responder.complete = broken
    out = verify(table(), responder, judge, prompts, CALIBRATED, {"temperature": None, "max_tokens": None})
    got = {r["id"]: r for r in out.to_dicts()}
    for item in ("code-right", "code-wrong", "num-wrong"):
        assert got[item]["verify_verdict"] == "unsure"
        assert json.loads(got[item]["verify_evidence"]) == {"error": "OSError: call cache unreadable"}
    assert got["judged"]["verify_verdict"] == "right"
    assert responder.account.failed == Counter({VERIFY_ERROR: 3})


def test_numbers_the_first_samples_make_right_are_not_sampled_further(repo):
    """With four samples and the program, the program and two samples that all agree make the answer right whatever
    the other two would say: those are not drawn, and count as giving no number in the confidence (a lower bound).
    An answer they do not vouch for gets every sample."""
    routes = replies()
    prompts = routes.watch(PromptLibrary(repo / "prompts"))
    responder, sent = fake_llm("responder", routes)
    items = [Item(SUM_DIFF, SUM_DIFF, "", "The numbers are 31 and 19."), Item(SUM_DIFF, SUM_DIFF, "", "12.")]
    right, wrong = verify_numbers(items, responder, prompts, VerifySettings(samples=4), {"temperature": None,
                                                                                       "max_tokens": None})
    assert (right.verdict, wrong.verdict) == ("right", "wrong")
    assert right.confidence == pytest.approx((3 + 1) / (5 + 1))
    assert json.loads(right.evidence)["samples_skipped"] == 2 and json.loads(wrong.evidence)["samples_skipped"] == 0
    assert json.loads(wrong.evidence)["sample_values"] == [19.0] * 4
    indices = sorted(r.sample_index for r in sent.sent if routes.template_of(r) == "respond/response.j2")
    assert indices == [1, 2, 3, 4]  # 1-2 for both (one call each: the cache layer sends a request once), 3-4 for one


def test_a_judge_without_a_calibrated_threshold_never_vouches(repo):
    """``right_at`` null: P(right) 0.9 is unsure, a low one still wrong; where the labels cannot be read, a reason
    saying "Right" is unsure too."""
    routes = replies()
    prompts = routes.watch(PromptLibrary(repo / "prompts"))
    items = [Item("List four renewable sources of energy.", "List four renewable sources of energy.", "",
                  "Solar, wind, hydro and geothermal."), Item("Explain gravity.", "Explain gravity.", "", "No.")]
    settings = VerifySettings(right_at=None)
    judged = verify_judged(items, fake_llm("judge", routes)[0], prompts, settings)
    assert [(r.verdict, r.confidence) for r in judged] == [("unsure", pytest.approx(0.9)), ("wrong", pytest.approx(0.2))]
    unreadable = TemplateReplies({**routes.routes, "verify/correctness.j2": lambda v, r: "not log-probabilities"})
    judged = verify_judged(items, fake_llm("judge", unreadable)[0], unreadable.watch(PromptLibrary(repo / "prompts")),
                           settings)
    assert [r.verdict for r in judged] == ["unsure", "wrong"]  # the reasons: "Right: ...", "Wrong: ..."


def test_a_failing_method_or_call_leaves_its_items_unsure_and_the_others_verified(repo):
    routes = replies()
    prompts = routes.watch(PromptLibrary(repo / "prompts"))
    (responder, _), (judge, _) = fake_llm("responder", routes), fake_llm(
        "judge", lambda r: Completion.failure("prompt_too_long", "the prompt does not fit"))

    def broken_runner(program, tests):
        raise OSError("sandbox gone")

    out = verify(table(), responder, judge, prompts, VerifySettings(), {}, runner=broken_runner)
    got = {r["id"]: r for r in out.to_dicts()}
    assert got["code-right"]["verify_verdict"] == "unsure"
    assert "sandbox gone" in json.loads(got["code-right"]["verify_evidence"])["error"]
    assert got["judged"]["verify_verdict"] == "unsure"  # the judge's calls failed
    assert got["num-wrong"]["verify_verdict"] == "wrong"  # the other methods went on


# --- what stops verify, as it stops every stage ----------------------------------------------------------------------

def _capped_judge(tmp_path: Path) -> LLM:
    """A judge under ``llm.budget.run.tokens: 1``: not even the first request fits, so none is sent."""
    settings = load_section({"llm": {"budget": {"run": {"tokens": 1}}}}, "llm", LLMSettings)
    role = Role.from_params("judge", {"backend": "hf", "model": "fake", "max_tokens": 64})
    return LLM(FakeBackend(replies()), CallCache(tmp_path / "cache.sqlite"), role=role, settings=settings)


def _judge_raising(error: Exception) -> LLM:
    def route(request):
        raise error
    return fake_llm("judge", route)[0]


def _ray_judge() -> LLM:
    """A judge whose backend cannot rank answers by their probabilities (verify.probabilities asks it to)."""
    return LLM(FakeBackend(replies()), None, role=Role.from_params("judge", {"backend": "ray", "model": "fake"}))


@pytest.mark.parametrize("judge, error, says", [
    ("budget", BudgetExhaustedError, r"llm\.budget\.run\.tokens"),
    ("request", LLMRequestError, "HTTP 401"),
    ("refusal", ControlsError, "cannot score answers by their probabilities"),
])
def test_a_spent_budget_a_request_error_or_a_refusal_stops_verify_instead_of_leaving_items_unsure(
        repo, tmp_path, judge, error, says):
    routes = replies()
    prompts = routes.watch(PromptLibrary(repo / "prompts"))
    judges = {"budget": lambda: _capped_judge(tmp_path), "refusal": _ray_judge,
              "request": lambda: _judge_raising(LLMRequestError("HTTP 401: invalid API key", status=401))}
    with pytest.raises(error, match=says):
        verify(table(), fake_llm("responder", routes)[0], judges[judge](), prompts, VerifySettings(), {})


def test_items_left_unsure_by_an_error_count_toward_max_failure_rate(repo):
    routes = replies()
    prompts = routes.watch(PromptLibrary(repo / "prompts"))
    (responder, _), (judge, _) = fake_llm("responder", routes), fake_llm("judge", routes)

    def broken_runner(program, tests):
        raise OSError("sandbox gone")

    out = verify(table(), responder, judge, prompts, VerifySettings(), {}, runner=broken_runner)
    assert out.filter(pl.col("verify_method") == "code_tests")["verify_verdict"].to_list() == ["unsure", "unsure"]
    assert responder.account.failed == Counter({VERIFY_ERROR: 2}) and responder.stats["failed_by_reason"] == {VERIFY_ERROR: 2}
    assert not judge.account.failed  # the judge's items were verified
    with pytest.raises(LLMFailureError, match=r"roles\.responder \(fake\): 2 of \d+ requests failed \(2 verify_error\)"
                                              r".*First failure: verify_error: verify code_tests: OSError: sandbox gone"):
        stage_accounting().check()


def _stage_in(tmp_path: Path, monkeypatch, repo: Path, judge: LLM, routes: TemplateReplies, roles: str = "") -> None:
    """The verify stage's inputs and params under ``tmp_path``, its roles the fakes (``judge`` as the judge)."""
    from evolforge.io.records import write_output

    def fake_role(role, cache, settings):
        return judge if role.name == "judge" else fake_llm(role.name, routes)[0]

    monkeypatch.setattr("evolforge.steps.common.llms.open_role", fake_role)
    write_output(tmp_path / "clean", table())
    (tmp_path / "params.yaml").write_text("verify: {solutions: 1, test_sets: 1}\n" + (roles or
        "roles: {responder: {backend: hf, model: fake}, judge: {backend: hf, model: fake}}\n"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("evolforge.core.prompts.PromptLibrary.render", _watched(routes))


def _run_verify_stage(repo: Path) -> None:
    run_stage("verify.py", "--items", "clean", "--prompts", str(repo / "prompts"), "--out", "verified",
              "--metrics", "m/verify.json")


def test_the_verify_stage_fails_under_a_spent_budget(tmp_path, monkeypatch, capsys, repo):
    """docs/explanation/llm.md: when not even the next request fits under a cap, the stage fails with one message."""
    _stage_in(tmp_path, monkeypatch, repo, _capped_judge(tmp_path / "c"), replies())
    with pytest.raises(SystemExit) as exit_:
        _run_verify_stage(repo)
    assert exit_.value.code == 1 and "verify: error (BudgetExhaustedError)" in capsys.readouterr().err
    assert not (tmp_path / "verified").exists() and not (tmp_path / "m" / "verify.json").exists()


def test_the_verify_stage_refuses_a_judge_that_cannot_rank_naming_verify_probabilities(tmp_path, monkeypatch,
                                                                                      capsys, repo):
    judge = _ray_judge()
    _stage_in(tmp_path, monkeypatch, repo, judge, replies(),
              "roles: {responder: {backend: hf, model: fake}, judge: {backend: ray, model: fake}}\n")
    with pytest.raises(SystemExit) as exit_:
        _run_verify_stage(repo)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert ("verify: error: params.yaml verify.probabilities: backend 'ray' (roles.judge) cannot score answers by "
            "their probabilities") in err and "judge.probabilities" not in err
    assert judge.backend.sent == []  # refused before any call


def test_verify_stage_writes_items_and_metrics(tmp_path, monkeypatch, repo):
    from evolforge.io.records import write_output

    routes = replies()

    def fake_role(role, cache, settings):
        return fake_llm(role.name, routes)[0]

    monkeypatch.setattr("evolforge.steps.common.llms.open_role", fake_role)
    write_output(tmp_path / "clean", table())
    (tmp_path / "params.yaml").write_text("verify: {solutions: 1, test_sets: 1, right_at: 0.65}\n"
                                          "roles: {responder: {backend: hf, model: fake}, judge: {backend: hf, model: fake}}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("evolforge.core.prompts.PromptLibrary.render", _watched(routes))
    run_stage("verify.py", "--items", "clean", "--prompts", str(repo / "prompts"), "--out", "verified",
              "--metrics", "m/verify.json")
    written = pl.read_parquet(tmp_path / "verified" / "items.parquet")
    assert written["id"].to_list() == table()["id"].to_list()
    metrics = json.loads((tmp_path / "m" / "verify.json").read_text())
    assert metrics["items"] == 6 and metrics["verified"] == 5
    assert metrics["per_method"]["code_tests"] == {"right": 1, "wrong": 1, "unsure": 0}
    assert metrics["per_verdict"] == {"right": 3, "wrong": 2, "unsure": 1} and metrics["calls"] > 0
    recorded = json.loads((tmp_path / "verified" / "meta.json").read_text())["settings"]  # what the card quotes
    assert recorded["solutions"] == recorded["test_sets"] == 1 and recorded["right_at"] == 0.65


def _watched(routes: TemplateReplies):
    """PromptLibrary.render, noting each rendered template for the routes (the stage builds its own library)."""
    original = PromptLibrary.render

    def render(self, template, /, **variables):
        return routes.note(template, variables, original(self, template, **variables))
    return render


# --- selection ------------------------------------------------------------------------------------------------------

def ranked_table() -> pl.DataFrame:
    return pl.DataFrame({
        "id": ["a", "b", "c", "d", "e"], "round": [0, 3, 0, 1, 2],
        "instruction": [REVERSE, REVERSE.replace("reverses the words in a sentence",
                                                 "takes a sentence as input and returns it with its words reversed"),
                        SUM_DIFF, "List four renewable sources of energy.", "Describe the water cycle."],
        "input": [""] * 5,
        "output": [REVERSE_RIGHT, REVERSE_RIGHT, "38 and 12.", "Solar, wind, hydro, geothermal.", "Rain falls."],
        "ic_ifd": [0.9, 0.8, 0.7, 0.6, 0.5],
        "verify_verdict": ["right", "right", "wrong", "right", "unsure"],
        "verify_confidence": [1.0, 1.0, 0.25, 0.9, None]})


def test_select_keeps_only_vouched_answers_by_default():
    """Only ``right`` (or a passing answer check) is selected: unsure and unverified items stay out, whatever their
    metric; an answer check that passed vouches for an item the verifier never saw."""
    table = ranked_table().with_columns(answer_check_passed=pl.Series([None, None, None, None, None], dtype=pl.Boolean))
    table = pl.concat([table, pl.DataFrame({
        "id": ["f", "g"], "round": [0, 1], "instruction": ["What is 6 x 7?", "Name a colour."], "input": ["", ""],
        "output": ["42", "Blue."], "ic_ifd": [0.95, 0.99], "verify_verdict": ["unsure", "unsure"],
        "verify_confidence": [None, 0.63], "answer_check_passed": [True, None]})], how="vertical_relaxed")
    chosen, summary, excluded = select_items(table, SelectSettings("ic_ifd", top_fraction=1.0, near_duplicates=None))
    assert chosen["id"].to_list() == ["f", "a", "b", "d"]
    reasons = dict(zip(excluded["id"].to_list(), excluded["skip_reason"].to_list()))
    assert reasons == {"c": "verified_wrong", "e": "not_vouched", "g": "not_vouched"}
    assert summary["removed_by_filter"] == {"verified_wrong": 1, "not_vouched": 2}


def test_unvouched_items_count_in_the_budget_but_do_not_fill_it():
    """The top fraction is a share of every item the filters left, vouched or not: a judge that vouches for fewer
    items does not shrink the budget, it leaves places empty."""
    table = ranked_table().with_columns(verify_verdict=pl.Series(["right", "unsure", "unsure", "right", "unsure"]))
    chosen, summary, excluded = select_items(table, SelectSettings("ic_ifd", top_fraction=0.4, near_duplicates=None))
    assert chosen["id"].to_list() == ["a", "d"]  # budget ceil(0.4 x 5) = 2, both vouched ones
    assert summary["removed_by_filter"] == {"not_vouched": 3}
    assert set(excluded["id"].to_list()) == {"b", "c", "e"}
    open_ = select_items(table, SelectSettings("ic_ifd", top_fraction=0.6, near_duplicates=None,
                                               require_vouched=False)).chosen
    assert open_["id"].to_list() == ["a", "d", "b"]  # the same budget's third place, open to an unsure item


def test_unvouched_items_let_in_rank_after_the_vouched_ones():
    table = ranked_table().with_columns(ic_ifd=pl.Series([0.1, 0.2, 0.3, 0.4, 0.99]))  # e, unsure, ranks best
    chosen = select_items(table, SelectSettings("ic_ifd", top_fraction=1.0, near_duplicates=None,
                                                require_vouched=False)).chosen
    assert chosen["id"].to_list() == ["d", "b", "a", "e"]  # c is wrong: drop_wrong
    shuffled = select_items(table, SelectSettings("random", top_fraction=1.0, near_duplicates=None,
                                                  require_vouched=False, drop_wrong=False)).chosen
    assert shuffled["id"].to_list()[-2:] in (["c", "e"], ["e", "c"])  # random within each part


def test_select_drops_wrong_answers_and_near_duplicates_and_fills_their_places():
    chosen, summary, excluded = select_items(ranked_table(), SelectSettings("ic_ifd", top_fraction=0.6,
                                                                            near_duplicates=0.7,
                                                                            require_vouched=False))
    assert chosen["id"].to_list() == ["a", "d", "e"]  # b repeats a's answer, c is wrong; d and e move up
    reasons = dict(zip(excluded["id"].to_list(), excluded["skip_reason"].to_list()))
    assert reasons == {"c": "verified_wrong", "b": "near_duplicate_of_selected"}
    assert summary["removed_by_filter"] == {"verified_wrong": 1, "near_duplicate_of_selected": 1}


def test_select_switches_and_confidence_floor():
    off = select_items(ranked_table(), SelectSettings("ic_ifd", top_fraction=1.0, drop_wrong=False,
                                                      near_duplicates=None, require_vouched=False)).chosen
    assert off["id"].to_list() == ["a", "b", "d", "c", "e"]  # the vouched first
    floor = select_items(ranked_table(), SelectSettings("ic_ifd", top_fraction=1.0, min_confidence=0.95,
                                                        near_duplicates=None, require_vouched=False)).chosen
    assert floor["id"].to_list() == ["a", "b"]  # d below the floor; e never measured: no confidence, no place
    unverified = select_items(ranked_table().drop("verify_verdict", "verify_confidence"),
                              SelectSettings("ic_ifd", top_fraction=1.0, near_duplicates=None)).chosen
    assert unverified.height == 5  # a table without the verify columns: nothing to drop


def test_a_near_duplicate_threshold_of_zero_is_refused_not_read_as_drop_everything():
    # Jaccard >= 0 holds for any pair: 0.0 would keep the best ranked item alone; null is how the walk is off
    with pytest.raises(ParamsError, match=r"select\.near_duplicates: got 0\.0 .* > 0 and <= 1, or null"):
        load_section({"select": {"metric": "ic_ifd", "top_fraction": 0.5, "near_duplicates": 0.0}}, "select",
                     SelectSettings)
    assert load_section({"select": {"metric": "ic_ifd", "top_fraction": 0.5, "near_duplicates": None}}, "select",
                        SelectSettings).near_duplicates is None


def test_the_select_stage_reads_the_walks_texts_from_the_items_file(tmp_path):
    from evolforge.steps.select.narrow import file_texts

    ranked_table().write_parquet(tmp_path / "items.parquet")
    read = file_texts(str(tmp_path / "items.parquet"))
    assert sorted(read(["c", "a"])) == [("a", REVERSE, REVERSE_RIGHT), ("c", SUM_DIFF, "38 and 12.")]
    assert walk_near_duplicates(["a", "b", "c", "d"], read, 0.7) == ["b"]


def test_near_duplicate_walk_compares_instructions_too_and_stops_at_the_budget():
    texts = {"x": ("Add two numbers and print the sum.", "1"), "y": ("Add two  numbers and PRINT the sum.", "2"),
             "z": ("Name a river.", "3"), "w": ("Name a city.", "4")}
    read = lambda ids: [(i, *texts[i]) for i in ids]  # noqa: E731
    assert walk_near_duplicates(["x", "y", "z", "w"], read, 0.7) == ["y"]
    assert walk_near_duplicates(["x", "z", "y"], read, 0.7, keep_at_most=2) == []  # y past the budget


# --- seen by people -------------------------------------------------------------------------------------------------

def test_card_and_report_show_each_selected_items_verification(tmp_path):
    from evolforge.report.sections import verification_html
    from evolforge.steps.select.card import verification_section

    selected = ranked_table().with_columns(verify_method=pl.Series(["code_tests", "code_tests", "numeric", "judge",
                                                                    "judge"]),
                                           verify_evidence=pl.Series([
                                               '{"tests": 4, "kept_tests": 3, "answer_passed": 3, "programs": 3}',
                                               "{}", '{"answer_value": 12.0, "sample_values": [19.0, 19.0]}',
                                               '{"p_right": 0.9, "reason": "all four are renewable."}', "{}"]))
    selected.write_parquet(tmp_path / "items.parquet")
    card = verification_section(tmp_path / "items.parquet")
    assert "| code_tests | right | 2 |" in card and "| numeric | wrong | 1 |" in card
    assert "passed 3 of 3 kept tests (4 written, 2 independent solutions)" in card
    assert "answer 12; samples 19, 19; program -" in card
    ranked_table().drop("verify_verdict", "verify_confidence").write_parquet(tmp_path / "plain.parquet")
    assert "no answer was checked" in verification_section(tmp_path / "plain.parquet")
    page = verification_html({"verification": {
        "metrics": {"per_method": {"judge": {"right": 1, "wrong": 0, "unsure": 0}}},
        "selected": [{"id": "d", "round": 1, "instruction": "List four.", "output": "Solar.", "method": "judge",
                      "verdict": "right", "confidence": 0.9, "evidence": "P(right) 0.90: all <four>"}]}})
    assert "all &lt;four&gt;" in page and "<td class='evolved'>right</td>" in page
    assert "no verify stage" in verification_html({})


# --- AutoIF items: the constraint's verdict and the content's ------------------------------------------------------

DONE = "Finish your answer with the word Done."
AUTOIF_CHECK = "AutoIF: 2 of 2 of the constraint's verification functions accept it (autoif.response_min_pass 0.8)"


def autoif_table() -> pl.DataFrame:
    """AutoIF items (instruction = constraint, input = query) whose constraint the functions accepted, but one
    answers its query wrong, and one whose constraint failed."""
    rows = [("if-num-wrong", DONE, SUM_DIFF, "The numbers are 32 and 18. Done", True),
            ("if-judged", "Answer in fewer than 50 words.", "List four renewable sources of energy.",
             "Solar, wind, hydro and geothermal.", True),
            ("if-unsure", DONE, "Suggest a name for a cat.", "Whiskers. Done", True),
            ("if-form-failed", DONE, "List four renewable sources of energy.", "Solar, wind, hydro, geothermal.",
             False)]
    return pl.DataFrame({"id": [r[0] for r in rows], "round": [1] * 4, "method": ["autoif"] * 4,
                         "status": ["evolved"] * 4, "instruction": [r[1] for r in rows],
                         "input": [r[2] for r in rows], "output": [r[3] for r in rows],
                         "answer_check_passed": [r[4] for r in rows],
                         "answer_check_detail": [AUTOIF_CHECK] * 4})


def autoif_replies() -> TemplateReplies:
    routes = replies()

    def correctness(v, request):  # a name for a cat: the judge cannot tell (between wrong_at and right_at)
        p = 0.9 if "renewable" in v["task"] else 0.45 if "cat" in v["task"] else 0.2
        return json.dumps([math.log(p), math.log(1 - p)])

    return TemplateReplies({**routes.routes, "verify/correctness.j2": correctness})


@pytest.mark.parametrize("row, method", [
    ({"method": "autoif", "instruction": DONE, "input": SUM_DIFF, "output": "31 and 19. Done",
      "answer_check_passed": True}, "numeric"),
    ({"method": "autoif", "instruction": DONE, "input": SUM_DIFF, "output": "31 and 19.",
      "answer_check_passed": False}, "answer_check"),  # the constraint failed: that is the verdict
    # the constraint's own number ("fewer than 50 words") does not make a quantity question of the query
    ({"method": "autoif", "instruction": "Answer in fewer than 50 words.", "input": "What is a closure in Python?",
      "output": "A function with its scope; 1 example.", "answer_check_passed": True}, "judge"),
    ({"method": "autoif", "instruction": DONE, "input": REVERSE, "output": REVERSE_RIGHT + " Done",
      "answer_check_passed": True}, "code_tests"),
])
def test_an_autoif_items_content_is_checked_by_the_method_its_query_allows(row, method):
    assert choose_method(row, None, VerifySettings()) == method


def test_an_autoif_item_is_right_only_when_its_constraint_passed_and_its_content_is_right(repo):
    routes = autoif_replies()
    prompts = routes.watch(PromptLibrary(repo / "prompts"))
    (responder, sent), (judge, judged) = fake_llm("responder", routes), fake_llm("judge", routes)
    out = verify(autoif_table(), responder, judge, prompts, CALIBRATED, {"temperature": None, "max_tokens": None})
    got = {r["id"]: r for r in out.to_dicts()}
    assert {k: (r["verify_method"], r["verify_verdict"]) for k, r in got.items()} == {
        "if-num-wrong": ("numeric", "wrong"),  # the functions accept "Done"; 32 and 18 is not the pair
        "if-judged": ("judge", "right"),
        "if-unsure": ("judge", "unsure"),  # a passed constraint does not vouch for content the judge cannot tell
        "if-form-failed": ("answer_check", "wrong")}
    num = json.loads(got["if-num-wrong"]["verify_evidence"])
    assert num["constraint"] == {"passed": True, "detail": AUTOIF_CHECK}
    assert num["sample_values"] == [19.0, 19.0] and num["program_value"] == 19.0
    assert json.loads(got["if-judged"]["verify_evidence"])["constraint"]["passed"] is True
    assert got["if-judged"]["verify_confidence"] == pytest.approx(0.9)
    # the number is recomputed from the query alone; the judge reads the constraint with the query
    samples = [r.messages[-1][1] for r in sent.sent if routes.template_of(r) == "respond/response.j2"]
    assert samples and all(SUM_DIFF in p and DONE not in p for p in samples)
    asked = [r.messages[-1][1] for r in judged.sent if routes.template_of(r) == "verify/correctness.j2"]
    assert any("fewer than 50 words" in p and "renewable" in p for p in asked)


def test_the_verify_metrics_count_autoif_items_by_their_content_verdict(repo, tmp_path):
    from evolforge.io.records import write_output
    from evolforge.steps.verify.step import counts

    routes = autoif_replies()
    prompts = routes.watch(PromptLibrary(repo / "prompts"))
    out = verify(autoif_table(), fake_llm("responder", routes)[0], fake_llm("judge", routes)[0], prompts,
                 CALIBRATED, {"temperature": None, "max_tokens": None})
    write_output(tmp_path / "verified", out)
    got = counts(tmp_path / "verified" / "items.parquet")
    assert got["constraint_passed_by_content"] == {"right": 1, "wrong": 1, "unsure": 1}
    assert got["per_method"]["answer_check"] == {"right": 0, "wrong": 1, "unsure": 0}


def test_a_passed_constraint_does_not_vouch_where_verify_checked_the_content():
    table = pl.DataFrame({
        "id": ["right", "wrong", "unsure", "unverified"], "round": [1] * 4,
        "instruction": [DONE] * 4, "input": ["q1", "q2", "q3", "q4"], "output": ["a1", "a2", "a3", "a4"],
        "ic_ifd": [0.4, 0.9, 0.8, 0.3], "answer_check_passed": [True] * 4,
        "verify_method": ["judge", "numeric", "judge", "none"],
        "verify_verdict": ["right", "wrong", "unsure", "unsure"], "verify_confidence": [0.9, 0.0, 0.45, None]})
    chosen, summary, excluded = select_items(table, SelectSettings("ic_ifd", top_fraction=1.0, near_duplicates=None))
    assert chosen["id"].to_list() == ["right", "unverified"]  # the check still vouches where verify saw no content
    assert dict(zip(excluded["id"].to_list(), excluded["skip_reason"].to_list())) == {
        "wrong": "verified_wrong", "unsure": "not_vouched"}
