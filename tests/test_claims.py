"""An answer's own examples (steps/common/claims.py): what its code says a call of its function gives is checked by
running it, in a seed's Python-tests check and in verify's code tests. The digit_sum answer below is the one a
shipped run selected: its function is right and one of its example comments is not."""

from __future__ import annotations

import json

import pytest

from evolforge.steps.common.answer_check import check_answer
from evolforge.steps.common.claims import claimed_examples
from evolforge.steps.common.function_runs import run_function
from evolforge.steps.verify.code_tests import answer_examples, judge_runs, program_for

DIGIT_SUM = '''Below is the function:

```python
def digit_sum(n):
    if n == 0:
        return 0
    return n % 10 + digit_sum(n // 10)

# Example usage:
print(digit_sum(123))  # Output: 6
print(digit_sum(4567)) # Output: 28
print(digit_sum(0))    # Output: 0
```
'''
SEED_CHECK = json.dumps({"kind": "python_tests", "tests": "assert digit_sum(0) == 0\nassert digit_sum(123) == 6"})


def test_a_false_example_in_the_answer_fails_the_seeds_check_and_is_named():
    got = check_answer(SEED_CHECK, DIGIT_SUM)
    assert not got.passed and "the answer states digit_sum(4567) == 28" in got.detail
    assert check_answer(SEED_CHECK, DIGIT_SUM.replace("# Output: 28", "# Output: 22")).passed


@pytest.mark.parametrize("line, claims", [
    ("print(f(3))  # Output: 6", ["assert f(3) == 6"]),
    ("f(3)  # -> 6", ["assert f(3) == 6"]),
    ("print(f(3))  # returns 6.", ["assert f(3) == 6"]),
    ("print(f(3))  # Expected output: [6]", ["assert f(3) == [6]"]),
    ("print(f('ab'))  # Output: 'ba'", ["assert f('ab') == 'ba'"]),
    ("print(f(1.5))  # Output: 3.00", ["assert abs(f(1.5) - 3.00) <= 0.005"]),  # a rounded float, within its digits
    ("print(f('ab'))  # Output: ba", []),            # printed text, no literal: nothing to compare
    ("print(f(x))  # Output: 6", []),                # an argument that is no literal
    ("print(g(3))  # Output: 6", []),                # not a function the code defines
    ("print(f(3), f(4))  # Output: 6 8", []),
    ("x = 3  # the result: 6", []),
])
def test_claims_are_literal_calls_of_the_codes_own_functions(line, claims):
    assert claimed_examples(f"def f(n):\n    return 2 * n\n{line}\n") == claims


def test_verify_code_tests_hold_the_answer_to_its_own_examples():
    """Bound to the name the tests call (the answer's function under another name), never dropped, and one that
    fails makes the answer wrong whatever the written tests say."""
    renamed = DIGIT_SUM.replace("digit_sum", "sum_digits")
    examples = answer_examples(renamed, "solution")
    assert examples == ["assert solution(123) == 6", "assert solution(4567) == 28", "assert solution(0) == 0"]
    tests = examples + ["assert solution(5) == 5"]
    run = run_function(program_for(renamed, "solution"), tests, 10.0, 512)
    verdict = judge_runs(tests, [run], min_pass=0.8, examples=len(examples))
    assert verdict.verdict == "wrong" and "solution(4567) == 28" in verdict.evidence["why"]
    fixed = renamed.replace("# Output: 28", "# Output: 22")
    tests = answer_examples(fixed, "solution") + ["assert solution(5) == 5"]
    run = run_function(program_for(fixed, "solution"), tests, 10.0, 512)
    assert judge_runs(tests, [run], min_pass=0.8, examples=3).verdict == "right"


def test_a_float_the_answer_rounds_is_no_false_example():
    answer = "```python\ndef third(x):\n    return x / 3\n\nprint(third(10))  # Output: 3.33\n```"
    check = json.dumps({"kind": "python_tests", "tests": "assert third(3) == 1"})
    assert check_answer(check, answer).passed
    assert not check_answer(check, answer.replace("3.33", "3.35")).passed
