"""AutoIF: constraint parsing and dedup, JSON extraction, sandboxed cross-validation, pairing, response checks."""

from __future__ import annotations

import json

import polars as pl
import pytest

from evolforge.config.loader import load_section

from evolforge.steps.autoif.settings import AutoIFSettings
from evolforge.steps.autoif.constraints import collect_constraints, parse_constraint_lines
from evolforge.steps.autoif.shared import KEPT, constraint_key
from evolforge.steps.autoif.respond import pair_queries, response_records, verify_responses
from evolforge.steps.common import function_runs
from evolforge.steps.common.function_runs import FunctionRun, run_function
from evolforge.steps.autoif.forms import extract_json, parse_verification
from evolforge.steps.autoif.verify import verify_constraints
from evolforge.steps.common.cross_validation import cross_validate
from evolforge.io.records import EVOLVED, FAILED, LINEAGE, SEED

NO_COMMAS = "def evaluate(response):\n    return ',' not in response\n"
WRONG = "def evaluate(response):\n    return ',' in response\n"
LOOPS = "def evaluate(response):\n    while True:\n        pass\n"
RAISES = "def evaluate(response):\n    raise ValueError('cannot tell')\n"
NETWORK = ("import urllib.request\ndef evaluate(response):\n"
           "    return urllib.request.urlopen('http://example.com').status == 200\n")
SOCKET = "import socket\ndef evaluate(response):\n    socket.socket().connect(('1.1.1.1', 80))\n    return True\n"
CASES = [("one two", True), ("one, two", False), ("no commas here", True)]


def sample(func: str, cases=CASES) -> str:
    body = json.dumps({"func": func, "cases": [{"input": i, "output": o} for i, o in cases]})
    return f"Here is the function:\n```json\n{body}\n```\nHope it helps."


@pytest.mark.parametrize("text, expected", [
    ("- Use no commas.\n- End with 'Bye'.", [("Use no commas.", None), ("End with 'Bye'.", None)]),
    ("Sure! Here they are:\n1. Answer in capitals.\n2) Write 3 lines.", [("Sure! Here they are:", "not_a_list_item"),
                                                                        ("Answer in capitals.", None), ("Write 3 lines.", None)]),
    ("* Start with a title\n\n   \n\u2022 Use exactly 2 paragraphs", [("Start with a title", None), ("Use exactly 2 paragraphs", None)]),
    ("-no space is not a list item", [("-no space is not a list item", "not_a_list_item")]),
    ("", []),
])
def test_constraint_lines(text, expected):
    assert parse_constraint_lines(text) == expected


def test_collect_constraints_dedups_and_keeps_reasons():
    seeds = ["Answer in fewer than 50 words.", "Do not use any commas."]
    outputs = ["- do not use any commas\n- End every line with a period.\nThat is all!", "- End every line with a period\n- ok"]
    table = collect_constraints(seeds, outputs)
    assert table.height == 2 + 3 + 2  # nothing disappears: every seed and every line has a row
    assert table["id"].n_unique() == table.height
    rows = {(r["constraint"], r["call_index"]): r for r in table.iter_rows(named=True)}
    assert rows[("Do not use any commas.", None)]["status"] == SEED
    assert rows[("do not use any commas", 0)]["failure_reason"] == "duplicate"  # case and final period ignored
    assert rows[("End every line with a period.", 0)]["status"] == EVOLVED
    assert rows[("End every line with a period", 1)]["failure_reason"] == "duplicate"
    assert rows[("That is all!", 0)]["failure_reason"] == "not_a_list_item"
    assert rows[("ok", 1)]["failure_reason"] == "too_short"
    assert (table.filter(pl.col("status") == FAILED)["failure_reason"].is_null()).sum() == 0


@pytest.mark.parametrize("text, ok, reason", [
    (sample(NO_COMMAS), True, None),
    ('{"func": "def evaluate(response):\\n    return True", "cases": [{"input": "x", "output": "true"}]}', True, None),
    ('prefix {"func": "def evaluate(response):\n    return True", "cases": [{"input": "x", "output": false}]} suffix', True, None),
    ('```json\n{"func": "def evaluate(r): return True", "cases": [{"input": "x", "output": true}],}\n```', False, "missing_func"),
    ('{"func": "def evaluate(r):", "cases": [}', False, "invalid_json"),
    ("no json at all", False, "no_json"),
    ('{"cases": [{"input": "x", "output": true}]}', False, "missing_func"),
    ('{"func": "def check(r): return True", "cases": [{"input": "x", "output": true}]}', False, "no_evaluate_function"),
    ('{"func": "def evaluate(r): return True", "cases": [{"input": "x", "output": "maybe"}, {"output": true}]}', False, "no_valid_cases"),
    # what SmolLM2-135M-Instruct writes: a Python block, no JSON, no cases
    ("```python\ndef evaluate(response):\n    return bool(response)\n```", False, "function_without_cases"),
    ("def evaluate(response):\n    return ',' not in response\nThis checks commas.", False, "function_without_cases"),
    # a Python block and the cases as JSON beside it: both are used
    ("```python\nimport re\ndef evaluate(response):\n    return ',' not in response\n```\n"
     '```json\n{"cases": [{"input": "a, b", "output": false}]}\n```', True, None),
])
def test_parse_verification(text, ok, reason):
    parsed, why = parse_verification(text)
    assert (parsed is not None, why) == (ok, reason)
    if ok:
        assert "def evaluate" in parsed.func and all(isinstance(e, bool) for _, e in parsed.cases)
        assert "```" not in parsed.func


def test_extract_json_reads_literal_newline_escapes_and_raw_newlines():
    parsed, _ = parse_verification('{"func": "def evaluate(response):\\\\n    return True", "cases": [{"input": "a", "output": true}]}')
    assert parsed.func == "def evaluate(response):\n    return True"
    obj, reason = extract_json("```json\n[1, 2]\n``` then {\"a\": 1}")
    assert (obj, reason) == ({"a": 1}, None)  # a list is not the object we want; the later object is


def test_cross_validate_rules():
    # case 0: only f0 reproduces it; case 1: nobody does (dropped); case 2: both do
    matrix = [[True, True, False], [False, True, False], [None, None, None]]
    cv = cross_validate(matrix, [True, False, False], min_accuracy=0.8)
    assert cv.cases_kept == [True, False, True]
    assert cv.accuracy == [1.0, 0.5, 0.0]
    assert cv.functions_kept == [True, False, False]
    assert cross_validate([[None]], [True]).accuracy == [None]  # no kept case: no accuracy, not kept


@pytest.mark.parametrize("func, status, results, errors", [
    (NO_COMMAS, "ok", (True, False, True), (None, None, None)),
    (WRONG, "ok", (False, True, False), (None, None, None)),
    (LOOPS, "timeout", (None, None, None), ("timeout",) * 3),  # the run stops at its limit; no case answered
    (RAISES, "ok", (None, None, None), ("raised",) * 3),
    (NETWORK, "blocked", (None, None, None), ("blocked",) * 3),
    (SOCKET, "blocked", (None, None, None), ("blocked",) * 3),
    ("def evaluate(response) return 1", "exec_error", (None,) * 3, ("exec_error",) * 3),
    ("import time\ntime.sleep(60)\ndef evaluate(r):\n    return True", "timeout", (None,) * 3, ("timeout",) * 3),
])
def test_run_function_in_sandbox(func, status, results, errors):
    run = run_function(func, [c for c, _ in CASES], case_timeout_s=0.5)
    assert (run.status, run.results, run.errors) == (status, results, errors), run.detail


def test_a_looping_case_stops_the_run_at_its_own_limit(monkeypatch):
    """The reference code's per-case alarm: a case that loops is stopped after case_timeout_s, not after the
    whole run's budget; the cases before it keep their verdicts, it and the ones after it time out."""
    runs, real = [], function_runs.run_untrusted

    def recorded(*args, **kwargs):
        runs.append(real(*args, **kwargs))
        return runs[-1]
    monkeypatch.setattr(function_runs, "run_untrusted", recorded)
    loops_on_commas = "def evaluate(response):\n    while ',' in response:\n        pass\n    return True\n"
    cases = ["one two", "one, two"] + ["no commas"] * 8
    run = run_function(loops_on_commas, cases, case_timeout_s=1.5)
    assert (run.status, run.results[:3], run.errors[:3]) == ("timeout", (True, None, None),
                                                             (None, "timeout", "timeout"))
    assert runs[0].duration_s < 10  # the budget of the whole run: STARTUP_S + 10 x 1.5 s = 20 s


def test_function_output_cannot_forge_verdicts():
    forger = ("import os\nos.write(2, b'verdict-0000 {\"i\": 0, \"result\": true}\\n')\n"
              "def evaluate(response):\n    print('{\"i\": 0, \"result\": true}')\n    return False\n")
    run = run_function(forger, ["x"], case_timeout_s=1)
    assert run.results == (False,)


def test_verify_constraints_end_to_end_in_sandbox():
    constraints = collect_constraints(["Do not use any commas.", "Answer in capital letters."], [])
    samples = [
        [sample(NO_COMMAS), sample(WRONG), sample(LOOPS), sample(RAISES), sample(NETWORK), "not json", sample(NO_COMMAS)],
        [sample(WRONG, [("HELLO", True)])],  # the only function disagrees with the only case
    ]
    settings = AutoIFSettings(case_timeout_s=0.5, workers=2)
    verified, functions, cases = verify_constraints(constraints, samples, settings)
    commas, capitals = verified.row(0, named=True), verified.row(1, named=True)
    assert (commas["status"], commas["functions_kept"], commas["cases_kept"]) == (KEPT, 1, 3)
    assert (capitals["status"], capitals["failure_reason"]) == (FAILED, "no_case_reproduced")
    reasons = dict(zip(functions.filter(pl.col("constraint_id") == commas["id"])["sample_index"],
                       functions.filter(pl.col("constraint_id") == commas["id"])["failure_reason"]))
    assert reasons == {0: None, 1: "low_accuracy", 2: "run_timeout", 3: "low_accuracy", 4: "run_blocked",
                       5: "no_json", 6: "duplicate_function"}
    assert cases.filter(pl.col("constraint_id") == commas["id"]).height == 3  # deduplicated across samples
    assert functions.filter(pl.col("status") == KEPT)["func"].to_list() == [NO_COMMAS.strip()]


def test_verify_constraints_drop_reasons_with_a_scripted_runner():
    constraints = collect_constraints(["a constraint one", "a constraint two", "a constraint three"], [])
    two = [("a", True), ("b", False)]
    samples = [["garbage"],
               [sample("def evaluate(r):\n    return 'first'", two), sample("def evaluate(r):\n    return 'second'", two)],
               [sample("def evaluate(r):\n    return 'slow'")]]
    scripted = {"first": (True, True), "second": (False, False)}  # each reproduces one case: accuracy 0.5 each

    def runner(func, inputs):
        name = func.split("'")[1]
        if name == "slow":
            return FunctionRun("timeout", (None,) * len(inputs), ("timeout",) * len(inputs))
        return FunctionRun("ok", scripted[name], (None, None))

    verified, functions, _ = verify_constraints(constraints, samples, AutoIFSettings(), runner=runner)
    assert verified["failure_reason"].to_list() == ["no_parsable_sample", "no_accurate_function", "no_runnable_function"]
    assert functions.filter(pl.col("constraint_id") == constraints["id"][1])["accuracy"].to_list() == [0.5, 0.5]
    lenient = AutoIFSettings(min_accuracy=0.5, min_functions=3)
    assert verify_constraints(constraints[1:2], samples[1:2], lenient, runner=runner)[0]["failure_reason"].to_list() == ["too_few_functions"]
    lenient = AutoIFSettings(min_accuracy=0.5, min_cases=3)
    assert verify_constraints(constraints[1:2], samples[1:2], lenient, runner=runner)[0]["failure_reason"].to_list() == ["too_few_cases"]


def test_pairing_is_stable_and_records_fit_the_responses_schema():
    constraints = collect_constraints(["Do not use any commas.", "Answer in capital letters."], [])
    queries = pl.DataFrame({"query_id": [f"q{i}" for i in range(10)], "query": [f"query number {i}" for i in range(10)]})
    pairs = pair_queries(constraints, queries, 3, seed=0)
    assert pairs.height == 6 and pairs.group_by("constraint_id").agg(pl.col("query_id").n_unique())["query_id"].to_list() == [3, 3]
    alone = pair_queries(constraints[:1], queries, 3, seed=0)  # a constraint's queries do not depend on the others
    assert alone["query_id"].to_list() == pairs.filter(pl.col("constraint_id") == constraints["id"][0])["query_id"].to_list()
    table = response_records(pairs, [f"answer {i}" for i in range(6)], evolver_model="m", self_instruct_hash="h1", response_hash="h2")
    assert table.columns[:len(LINEAGE)] == LINEAGE
    assert table["id"].n_unique() == 6 and set(table["round"]) == {1} and set(table["method"]) == {"autoif"}
    assert table["instruction"].to_list()[0] == pairs["constraint"][0] and table["input"].to_list()[0] == pairs["query"][0]


def test_verify_responses_pass_rates():
    constraints = collect_constraints(["Do not use any commas."], [])
    pairs = pl.DataFrame({"constraint_id": [constraints["id"][0]] * 2, "constraint": ["Do not use any commas."] * 2,
                          "query_id": ["a", "b"], "query": ["qa", "qb"]})
    table = response_records(pairs, ["fine answer", "bad, answer"], evolver_model="m", self_instruct_hash="h", response_hash="h")
    functions = pl.DataFrame({"constraint_id": [constraints["id"][0]] * 2, "func": [NO_COMMAS, "def evaluate(r):\n    return True"],
                              "status": [KEPT, KEPT]})
    out = verify_responses(table, functions, AutoIFSettings(case_timeout_s=1))
    assert out["pass_rate"].to_list() == [1.0, 0.5]
    assert out["response_verified"].to_list() == [True, True]
    out = verify_responses(table, functions, AutoIFSettings(case_timeout_s=1, response_min_pass=0.75))
    assert out["response_verified"].to_list() == [True, False]
    # the verdict is the item's answer check, which the verify stage takes and select counts as vouching
    assert out["answer_check_passed"].to_list() == [True, False]
    assert out["answer_check_detail"].to_list()[1].startswith("AutoIF: 1 of 2 of the constraint's verification")


def test_settings_refuse_unknown_keys_with_their_path():
    with pytest.raises(ValueError, match=r"autoif\.queries\.sorce: unknown key"):
        load_section({"autoif": {"queries": {"sorce": "x"}}}, "autoif", AutoIFSettings)
    with pytest.raises(ValueError, match=r"autoif.calls: unknown key"):
        load_section({"autoif": {"calls": 3}}, "autoif", AutoIFSettings)
    with pytest.raises(ValueError, match=r"autoif.min_accuracy"):
        load_section({"autoif": {"min_accuracy": 1.5}}, "autoif", AutoIFSettings)


# --- the small-model form (autoif.form: lines), copy checks, the both-outcomes rule ---------------

from evolforge.core.prompts import PromptLibrary  # noqa: E402
from evolforge.steps.autoif.forms import (Copies, Demonstration, join_answers, load_demonstrations,  # noqa: E402
                                          parse_lines, verification_conversations)

LINES_OK = "```python\ndef evaluate(response):\n    return ',' not in response\n```\nFOLLOWS: One two.\nBREAKS: One, two."


@pytest.mark.parametrize("text, cases, reason", [
    (LINES_OK, (("One two.", True), ("One, two.", False)), None),
    # what SmolLM2-135M also writes: bold or listed marks, lower case, a stray fence after the cases, repeats
    ("```python\ndef evaluate(response):\n    return True\n```\n- **FOLLOWS:** yes\nbreaks: no\nBREAKS: no\n```",
     (("yes", True), ("no", False)), None),
    ("def evaluate(response):\n    return True\nFOLLOWS: plain def, no fence", (("plain def, no fence", True),), None),
    # a FOLLOWS line inside the code block is code, not a case
    ("```python\ndef evaluate(response):\n    x = 1\n    # FOLLOWS: not a case\n    return True\n```\nBREAKS: real", (("real", False),), None),
    ("FOLLOWS: a\nBREAKS: b", None, "no_evaluate_function"),
    ("```python\ndef evaluate(response):\n    return True\n```\nFOLLOWS:\nThe answer is yes.", None, "no_valid_cases"),
])
def test_parse_lines(text, cases, reason):
    parsed, why = parse_lines(text)
    assert why == reason
    if cases is None:
        assert parsed is None
    else:
        assert parsed.cases == cases and parsed.func.startswith("def evaluate")


def test_shipped_demonstrations_load_and_stay_off_the_seed_constraints(repo):
    demos = load_demonstrations(PromptLibrary(repo / "prompts"))
    assert len(demos) >= 3 and all(parse_lines(d.answer())[0].func == d.func for d in demos)
    seeds = {constraint_key(c) for c in (repo / "data/seeds/autoif_constraints.txt").read_text().splitlines()}
    assert not seeds & {constraint_key(d.constraint) for d in demos}  # the examples teach the form, not the seeds


@pytest.mark.parametrize("body, message", [
    ("- constraint: x\n  func: y\n", "needs exactly the keys"),
    ("- {constraint: c, func: 'return 1', follows: a, breaks: b}\n", "does not parse back"),
    ("[unclosed", "not valid YAML"),
    ("[]", "non-empty list"),
])
def test_bad_demonstrations_file_is_refused_clearly(tmp_path, body, message):
    (tmp_path / "autoif").mkdir()
    (tmp_path / "autoif/verification_examples.yaml").write_text(body)
    with pytest.raises(ValueError, match=message):
        load_demonstrations(PromptLibrary(tmp_path))


def test_verification_conversations_per_form(repo):
    prompts = PromptLibrary(repo / "prompts")
    demos = load_demonstrations(prompts)
    paper = verification_conversations("paper", "Use no commas.", prompts, demos)
    assert paper == [[{"role": "user", "content": prompts.render("autoif/verification.j2", constraint="Use no commas.")}]]
    function, cases = verification_conversations("lines", "Use no commas.", prompts, demos, sample_index=0)
    assert len(function) == len(cases) == 2 * len(demos) + 1 and [m["role"] for m in function[:2]] == ["user", "assistant"]
    assert function[-1]["content"].startswith("Instruction: Use no commas.\nWrite a Python function")
    assert cases[-1]["content"].startswith("Instruction: Use no commas.\nWrite one example response")
    assert function[1]["content"] == demos[0].function_answer() and cases[1]["content"] == demos[0].cases_answer()
    rotated, _ = verification_conversations("lines", "Use no commas.", prompts, demos, sample_index=1)
    assert rotated[1]["content"] == demos[1].function_answer() and rotated[-1] == function[-1]
    own, _ = verification_conversations("lines", demos[0].constraint.upper(), prompts, demos)
    assert demos[0].function_answer() not in [m["content"] for m in own] and len(own) == 2 * len(demos) - 1
    with pytest.raises(ValueError, match="autoif.form"):
        verification_conversations("json", "x", prompts, demos)


def test_join_answers_never_makes_up_a_missing_call():
    assert join_answers(["```python\ndef evaluate(r):\n    return True\n```", "FOLLOWS: a"]).endswith("```\nFOLLOWS: a")
    assert join_answers(["```python\ndef evaluate(r):\n    return True\n```", None]) is None


def test_copied_demonstrations_and_one_sided_cases_are_dropped():
    demo = Demonstration("Do not use any semicolons.", "def evaluate(response):\n    return ';' not in response",
                         "It rains, so we stay in.", "It rains; we stay in.")
    constraints = collect_constraints(["Do not use any commas.", "Answer in capital letters."], [])
    copy = f"```python\n{demo.func}\n```\nFOLLOWS: {demo.follows}\nBREAKS: One, two."
    samples = [[LINES_OK, copy, None],
               ["```python\ndef evaluate(response):\n    return False\n```\nBREAKS: hello"]]  # constant, one-sided
    settings = AutoIFSettings(case_timeout_s=1.0, workers=2)
    verified, functions, cases = verify_constraints(constraints, samples, settings, parse=parse_lines, copies=Copies.of([demo]))
    assert verified["status"].to_list() == [KEPT, FAILED]
    assert verified["failure_reason"].to_list() == [None, "one_sided_cases"]
    commas = functions.filter(pl.col("constraint_id") == constraints["id"][0])
    assert commas["failure_reason"].to_list() == ["copied_demonstration", "no_output", None]
    assert commas["raw"].to_list()[0] == copy  # the raw text stays with its reason
    copied_case = cases.filter(pl.col("input") == demo.follows)
    assert copied_case["failure_reason"].to_list() == ["copied_demonstration"]
    lenient = AutoIFSettings(case_timeout_s=1.0, both_outcomes=False)  # the reference code's rule
    assert verify_constraints(constraints[1:], samples[1:], lenient, parse=parse_lines)[0]["status"].to_list() == [KEPT]


def test_form_setting_is_typed():
    assert load_section({}, "autoif", AutoIFSettings).form == "lines"
    with pytest.raises(ValueError, match=r"autoif.form"):
        load_section({"autoif": {"form": "json"}}, "autoif", AutoIFSettings)
