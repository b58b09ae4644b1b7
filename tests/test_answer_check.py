"""Answer checks: a seed's ``check`` parsed (clear errors naming file, row and field), an answer's number read
in the forms answers write it, code taken from fenced blocks and run against the tests in the sandbox, the
checks carried into the seed sample, the responses and their counts, and select's ``require_check``."""

from __future__ import annotations

import json

import polars as pl
import pytest

from evolforge.config.roles import Role
from evolforge.core.prompts import PromptLibrary
from evolforge.io.columns import RESPONSES, SEED
from evolforge.io.records import write_output
from evolforge.io.validation import DataError
from evolforge.llm.backends.fake import FakeBackend
from evolforge.llm.cached import LLM
from evolforge.llm.types import Completion
from evolforge.steps.common.answer_check import check_answer, check_number, extract_code, final_number, parse_check
from evolforge.steps.common.source import build_seed
from evolforge.steps.respond.step import add_check_counts, answer, check_counts, gather
from evolforge.steps.select.selection import select_items
from evolforge.steps.select.settings import SelectSettings


# --- parsing a check ---------------------------------------------------------------------------------------

def test_parse_check_canonical_forms():
    assert parse_check({"kind": "number", "value": 42}) == {"kind": "number", "value": 42.0, "tolerance": 1e-6}
    assert parse_check({"kind": "number", "value": 0.5, "tolerance": 0.01})["tolerance"] == 0.01
    assert parse_check({"kind": "python_tests", "tests": "assert f(2) == 4"}) == {
        "kind": "python_tests", "tests": "assert f(2) == 4", "timeout_s": 10.0}
    assert parse_check('{"kind": "number", "value": 7}')["value"] == 7.0  # a table's JSON text
    assert parse_check(None) is None and parse_check("null") is None


@pytest.mark.parametrize("value, rule, detail", [
    ({"kind": "numbr", "value": 1}, "check.kind is one of number, python_tests", "'numbr'"),
    ({"kind": "number"}, "check.value is a finite number", "None"),
    ({"kind": "number", "value": "42"}, "check.value is a finite number", "'42'"),
    ({"kind": "number", "value": True}, "check.value is a finite number", "True"),
    ({"kind": "number", "value": float("nan")}, "check.value is a finite number", "nan"),
    ({"kind": "number", "value": 1, "tolerance": -1}, "check.tolerance is a number >= 0", "-1"),
    ({"kind": "number", "value": 1, "tests": "x"}, "a number check has only the fields", "unknown: tests"),
    ({"kind": "python_tests", "tests": ""}, "check.tests is non-empty Python text", "''"),
    ({"kind": "python_tests", "tests": "assert f(2 == 4"}, "check.tests is valid Python", "line 1"),
    ({"kind": "python_tests", "tests": "assert f(2) == 4", "timeout_s": 0}, "check.timeout_s is a number in", "0"),
    ([1, 2], "check: is an object", "list"),
    ("{not json", "check: is an object (or its JSON text)", "not JSON"),
])
def test_parse_check_refuses_naming_file_row_and_field(value, rule, detail):
    with pytest.raises(DataError) as err:
        parse_check(value, "seeds.jsonl", 7)
    message = str(err.value)
    assert message.startswith("seeds.jsonl: row 7:") and rule in message and detail in message


def test_a_bad_check_in_a_seed_file_names_its_line(tmp_path):
    path = tmp_path / "seeds.jsonl"
    rows = [{"instruction": "Add 2 and 3.", "check": {"kind": "number", "value": 5}},
            {"instruction": "Add 2 and 4.", "check": {"kind": "number", "value": "six"}}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"seeds.jsonl: row 2: rule 'check: check.value is a finite number'"):
        build_seed(str(path))


# --- numbers ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("answer, number", [
    ("The answer is 42.", 42.0),
    ("42.0", 42.0),
    ("$42", 42.0),
    ("She pays $8.75 in total.", 8.75),
    ("**Answer:** 42", 42.0),
    ("The answer is **42**.", 42.0),
    ("Total: $1,250.50", 1250.5),
    ("5 x 12 = 60; 60 - 17 = 43 pencils.", 43.0),
    ("The final answer is 17, since her brother is 13.", 17.0),  # announced, then other numbers
    ("\\boxed{90}", 90.0),
    ("#### 364", 364.0),
    ("It is 25% of the price", 25.0),
    ("The temperature fell to -4 degrees", -4.0),
    ("no digits", None),
])
def test_final_number(answer, number):
    assert final_number(answer) == number


def test_number_check_compares_by_value_within_the_tolerance():
    assert check_number("The answer is 20.", 20.0).passed
    assert check_number("It takes 20.0 minutes.", 20.0).passed
    assert not check_number("The answer is 21.", 20.0).passed
    assert "21 != expected 20" in check_number("The answer is 21.", 20.0).detail
    assert check_number("about 3.1416", 3.14159, tolerance=1e-3).passed
    assert not check_number("No idea.", 20.0).passed


# --- code -------------------------------------------------------------------------------------------------

def test_extract_code_from_fenced_blocks():
    answer = "Here it is:\n```python\ndef f(x):\n    return 2 * x\n```\nUse it like `f(2)`."
    assert extract_code(answer) == "def f(x):\n    return 2 * x"
    two = "```python\ndef f(x):\n    return x\n```\ntext\n```\nprint(f(1))\n```"
    assert extract_code(two) == "def f(x):\n    return x\n\nprint(f(1))"
    assert extract_code("```bash\nls -l\n```") is None  # another language: no program
    assert extract_code("```python\ndef broken(:\n```") is None  # does not parse
    assert extract_code("def f(x):\n    return x") == "def f(x):\n    return x"  # no fence: the whole answer
    assert extract_code("Just words, no code.") is None
    assert extract_code("```python\ndef f(x):\n    return x") == "def f(x):\n    return x"  # open fence at the end


def test_python_check_runs_the_answer_in_the_sandbox():
    check = {"kind": "python_tests", "tests": "assert double(2) == 4\nassert double(-1) == -2", "timeout_s": 10.0}
    good = check_answer(check, "```python\ndef double(x):\n    return 2 * x\n```")
    assert good.passed and good.detail == "tests passed"
    bad = check_answer(check, "```python\ndef double(x):\n    return x + 2\n```")
    assert not bad.passed and "failed" in bad.detail
    assert not check_answer(check, "Multiply by two.").passed
    loop = check_answer({**check, "timeout_s": 2.0}, "```python\ndef double(x):\n    while True:\n        pass\n```")
    assert not loop.passed and "timeout" in loop.detail


def test_no_check_no_result_and_no_answer_fails():
    assert check_answer(None, "anything") is None
    assert not check_answer({"kind": "number", "value": 1.0, "tolerance": 0.0}, None).passed


# --- the seed table and its sample ------------------------------------------------------------------------

def seeds_file(tmp_path, n_plain=20, n_checked=3):
    rows = [{"instruction": f"Describe topic number {k}."} for k in range(n_plain)]
    rows += [{"instruction": f"What is {k} plus {k}?", "check": {"kind": "number", "value": 2 * k}} for k in range(n_checked)]
    path = tmp_path / "seeds.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_seed_table_carries_the_check_as_canonical_json(tmp_path):
    built = build_seed(str(seeds_file(tmp_path, 2, 2)))
    assert list(built.table.columns) == list(SEED)
    checks = dict(zip(built.table["instruction"], built.table["answer_check"]))
    assert checks["Describe topic number 0."] is None
    assert json.loads(checks["What is 1 plus 1?"]) == {"kind": "number", "value": 2.0, "tolerance": 1e-6}
    assert built.metrics["with_check"] == {"read": 2, "written": 2}


def test_min_checked_puts_checkable_seeds_in_a_small_sample(tmp_path):
    path = str(seeds_file(tmp_path))
    plain = build_seed(path, limit=4, seed=0).table
    sampled = build_seed(path, limit=4, seed=0, min_checked=2).table
    assert sampled.height == 4 and sampled["answer_check"].is_not_null().sum() >= 2
    # the rest of the sample is the plain hash sample's first items, in source order
    assert set(plain["id"]) - set(sampled["id"]) <= set(plain["id"])
    assert build_seed(path, limit=4, seed=0, min_checked=2).table.equals(sampled)  # deterministic
    few = build_seed(path, limit=4, seed=0, min_checked=10).table  # more than the source has: all of them
    assert few.height == 4 and few["answer_check"].is_not_null().sum() == 3


# --- respond: the columns and the counts --------------------------------------------------------------------

ROLE = Role.from_params("responder", {"backend": "hf", "model": "fake", "max_tokens": 64})
REPLIES = {
    "What is 2 plus 2?": "2 + 2 = 4. The answer is 4.",
    "What is 3 plus 3?": "The answer is 7.",
    "Write double(x).": "```python\ndef double(x):\n    return 2 * x\n```",
    "Describe the sea.": "It is large and salty.",
}


def test_responses_record_the_check_result(tmp_path):
    seed = pl.DataFrame({
        "id": ["a", "b", "c", "d"], "root_id": ["a", "b", "c", "d"], "parent_id": [None] * 4, "round": [0] * 4,
        "method": ["seed"] * 4, "status": ["seed"] * 4, "failure_reason": [None] * 4,
        "instruction": list(REPLIES), "input": [""] * 4, "output": [""] * 4,
        "answer_check": [json.dumps({"kind": "number", "value": 4.0, "tolerance": 1e-6}),
                         json.dumps({"kind": "number", "value": 6.0, "tolerance": 1e-6}),
                         json.dumps({"kind": "python_tests", "tests": "assert double(3) == 6", "timeout_s": 10.0}),
                         None]}, schema_overrides={"round": pl.Int32, "parent_id": pl.String})
    write_output(tmp_path / "seed", seed)
    items = pl.concat(list(gather([], tmp_path / "seed").chunks()))
    fake = FakeBackend(lambda request: Completion(REPLIES[request.messages[-1][1].split("Instruction: ")[1].split("\n")[0]], "stop"))
    table = answer(items, LLM(fake, None, role=ROLE), PromptLibrary())
    assert list(table.columns) == list(RESPONSES)
    passed = dict(zip(table["instruction"], table["answer_check_passed"]))
    assert passed == {"What is 2 plus 2?": True, "What is 3 plus 3?": False, "Write double(x).": True,
                      "Describe the sea.": None}
    counts = check_counts(table)
    assert counts == {"items": 3, "passed": 2, "failed": 1,
                      "by_kind": {"number": {"items": 2, "passed": 1}, "python_tests": {"items": 1, "passed": 1}}}
    assert add_check_counts(counts, counts)["by_kind"]["number"] == {"items": 4, "passed": 2}


def test_round_items_have_no_check(tmp_path):
    """A rewrite changes the question: an evolved item never inherits its root's check."""
    round_1 = pl.DataFrame([{"id": "e", "root_id": "a", "parent_id": "a", "round": 1, "method": "deepening",
                             "status": "evolved", "failure_reason": None, "instruction": "What is 2 plus 2, twice?",
                             "input": "", "output": ""}], schema_overrides={"round": pl.Int32})
    write_output(tmp_path / "round_1", round_1)
    items = pl.concat(list(gather([tmp_path / "round_1"]).chunks()))
    assert items["answer_check"].to_list() == [None]


# --- select.require_check ---------------------------------------------------------------------------------

def test_require_check_drops_failed_checks_and_keeps_unchecked():
    """require_check alone (require_vouched off: it would drop the unchecked items too)."""
    table = pl.DataFrame({"id": ["a", "b", "c", "d"], "round": [0, 0, 1, 1], "ic_ifd": [0.9, 0.8, 0.7, 0.6],
                          "answer_check_passed": [False, True, None, None]})
    kept = select_items(table, SelectSettings("ic_ifd", top_fraction=1.0, require_vouched=False, require_check=True))
    assert kept.chosen["id"].to_list() == ["b", "c", "d"]
    assert dict(zip(kept.excluded["id"], kept.excluded["skip_reason"])) == {"a": "answer_check_failed"}
    assert {"filter": "answer_check_failed", "removed": 1, "left": 3} in kept.summary["filters"]
    off = select_items(table, SelectSettings("ic_ifd", top_fraction=1.0, require_vouched=False, require_check=False))
    assert off.chosen["id"].to_list() == ["b", "a", "c", "d"]  # the vouched item (a passing check) ranks first
    no_column = select_items(table.drop("answer_check_passed"), SelectSettings("ic_ifd", top_fraction=1.0, require_vouched=False, require_check=True))
    assert no_column.chosen.height == 4  # a pool without checks (AutoIF's): nothing to drop
