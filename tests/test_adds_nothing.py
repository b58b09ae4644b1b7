"""The rules of the "adds nothing" family (hands_over_method, same_problem, same_answer), their place in a round,
the labelled rewrites they are measured on, and the split of the elimination rules into families."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from evolforge.config.roles import Role
from evolforge.core.prompts import PromptLibrary
from evolforge.llm.backends.fake import FakeBackend, TemplateReplies
from evolforge.llm.cached import LLM
from evolforge.steps.common import elimination
from evolforge.steps.common.embedding import pair_similarities
from evolforge.steps.common.giveaway import hands_over_method
from evolforge.steps.common.sameness import same_answer, same_problem
from evolforge.steps.evolve.settings import RULES, EvolveSettings
from evolforge.steps.evolve.step import evolve_round

TANK = "A tank holds 500 litres and drains at 25 litres per minute. How long until it is empty?"
DIGIT_SUM = "Write a Python function `digit_sum(n)` that returns the sum of the decimal digits of a non-negative integer."

# (parent, rewrite, hands over the method?)
GIVEAWAYS = [
    (TANK, "Calculate how long the tank takes to empty using the formula Time = Volume / Rate and round the result "
           "to the nearest minute.", True),
    (DIGIT_SUM, DIGIT_SUM + " Use this code:\n```python\ndef digit_sum(n):\n    return sum(int(d) for d in str(n))\n```",
     True),
    (DIGIT_SUM, DIGIT_SUM + "\ndef digit_sum(n):\n    total = 0\n    while n:\n        total += n % 10\n"
                "        n //= 10\n    return total", True),
    ("The sum of two numbers is 50 and their difference is 12. What are the numbers?",
     "Define two variables, a and b, and set up the equations 50 = a + b and b = a + 12.", True),
    ("There are 45 children in a classroom. One-third of them are girls. How many boys are in the classroom?",
     "In a classroom there are 45 children. One-third of them are girls, which can be calculated by multiplying the "
     "total number of children by 1/3. How many boys are there?", True),
    ("Avery puts 4 shirts in the box and twice as many pants. How many pieces of clothes is he donating?",
     "Avery puts 4 shirts in the box and twice as many pants, which amounts to 8 pants. How many pieces in all?", True),
    ("Write a Python function `second_largest(numbers)` that returns the second largest distinct value.",
     "Write a Python function `second_largest(numbers)` that returns the second largest distinct value, optimized "
     "by using a set to store the distinct values.", True),
    ("Jim buys 100 cattle for $40,000 and sells them for $2 a pound. What is his profit?",
     "Jim buys 100 cattle for $40,000. Calculate the cost of feeding them. Calculate the selling price. Finally, "
     "subtract the costs from the selling price to find his profit.", True),
    (DIGIT_SUM, DIGIT_SUM + "\n# Erroneous code\ndef digit_sum(n):\n    return n % 10\n\n# Corrected code\n"
                "def digit_sum(n):\n    return sum(int(d) for d in str(n))", True),  # the corrected one follows
    ("Write a function that returns the median of a list.",
     "Write a function that returns the median of a list, even or odd in length.\n```python\ndef median(xs):\n"
     "    xs = sorted(xs)\n    return xs[len(xs) // 2]\n```", True),  # no name asked: the only function
    # more asked, nothing given away
    ("Write a function that reverses a list.", "Write a recursive function that reverses a list in place.", False),
    # Evol-Instruct's code methods: an erroneous reference, an example, a stub (WizardCoder), code the task works on
    (DIGIT_SUM, DIGIT_SUM + " Provide a piece of erroneous code as a reference to increase misdirection:\n"
                "```python\ndef digit_sum(n):\n    result = 0\n    for d in str(n):\n        result = int(d)\n"
                "    return result\n```", False),
    ("Write a function that returns the median of a list.", "Write a function that returns the median of a list. Here "
     "is code that attempts it but contains a logical error:\ndef median(xs):\n    return xs[len(xs) / 2]", False),
    ("Write a JavaScript function that sums two numbers.", "Write a JavaScript function that sums an array of numbers "
     "without reduce().\n```javascript\nsumArray([1, 2, 3]); // should return 6\n```", False),
    ("Compress a string by its runs of repeated characters.", "Compress a string by its runs of repeated characters "
     "without any additional data structure. Implement:\n```python\ndef compress(s: str) -> str:\n    pass\n```\n"
     "Example: `compress('AAB')` returns 'A2B1'.", False),
    ("Modify the function below so it also checks its input.\ndef area(w, h):\n    return w * h",
     "Modify the function below so it also checks its input and rounds the result.\ndef area(w, h):\n"
     "    return round(w * h, 2)", False),  # the task works on code it gives
    ("Write a function `merge(a, b)` that merges two lists without duplicates.",
     "Write a function `merge(a, b)` that merges two lists without duplicates, keeping their order.\n"
     "Erroneous code:\ndef merge(a, b):\n    result = a + b\n    return list(set(result))", False),
    # (the formula pattern reads prose only: "result = a + b" above is code)
    (TANK, "A 700-litre tank holds 500 litres and drains at 30 litres per minute. When is it empty?", False),
    ("Explain the idiom 'break the ice'.", "Explain the idiom 'break the ice' by adding a humorous twist.", False),
    ("A shirt costs $40. What is the price after 25% off?",
     "A shirt costs $40. What is the price after 25% off and a further 10% off that?", False),
    ("Solve 2x + 3 = 7 for x.", "Solve 2x + 3 = 7 for x, then check the answer by substituting it.", False),
    ("Using the formula A = pi r^2, find the area of a circle of radius 3.",
     "Using the formula A = pi r^2, find the area of a circle of radius 3, in square centimetres.", False),
]


@pytest.mark.parametrize("parent,rewrite,gives", GIVEAWAYS)
def test_a_rewrite_that_hands_over_its_method_fails(parent, rewrite, gives):
    assert hands_over_method(parent, rewrite) is gives
    expected = elimination.HANDS_OVER_METHOD if gives else None
    assert elimination.instruction_failure(parent, rewrite, not_an_instruction=False, stated_answer=False,
                                           dropped_given=False) == expected
    assert elimination.instruction_failure(parent, rewrite, hands_over_method=False, not_an_instruction=False,
                                           stated_answer=False, dropped_given=False) is None


PARAPHRASE = ("Calculate the total time required to drain a tank that holds 500 litres and drains at a rate of 25 "
              "litres per minute.")


@pytest.mark.parametrize("rewrite,similarity,same", [
    (PARAPHRASE, 0.93, True),
    (PARAPHRASE, 0.86, False),  # below the threshold
    ("A 700-litre tank holds 500 litres and drains at 30 litres per minute. When is it empty?", 0.95, False),
    ("How long until a tank of 500 litres that drains 25 litres a minute is empty, in seconds?", 0.91, True),
    (TANK + " Do not use a calculator.", 0.97, False),  # a restriction of its own: a constraint added
])
def test_same_problem_needs_close_meaning_and_no_number_or_restriction_of_its_own(rewrite, similarity, same):
    assert same_problem(TANK, rewrite, similarity, threshold=0.9) is same


@pytest.mark.parametrize("parent_answer,answer,same", [
    ("#### 35", "Grade 6 has 35 students.", True),
    ("It is empty after 20 minutes.", "The answer is 20.0 minutes.", True),
    ("$1,200", "He owes 1200 dollars.", True),
    ("20 minutes", "16.67 minutes", False),
    ("def f(): return 1", "Here is the function.", False),  # no number on one side: not compared
    (None, "20", False),
    ("", "20", False),
])
def test_same_answer_compares_the_final_numbers(parent_answer, answer, same):
    assert same_answer(parent_answer, answer) is same
    reason = elimination.response_failure(answer or "x", parent_answer=parent_answer)
    assert (reason == elimination.SAME_ANSWER) is (same and bool(answer))


def test_same_answer_switched_off_or_without_a_parent_answer_passes():
    assert elimination.response_failure("It takes 20 minutes.", parent_answer="20", same_answer=False) is None
    assert elimination.response_failure("It takes 20 minutes.") is None


def test_pair_similarities_are_the_rows_cosines():
    vectors = {"a": [1.0, 0.0], "b": [0.6, 0.8], "c": [0.0, 1.0]}
    embed = lambda texts: np.array([vectors[t] for t in texts])  # noqa: E731 - a test double of the embedder
    assert pair_similarities(embed, ["a", "a", "b"], ["b", "c", "b"]) == pytest.approx([0.6, 0.0, 1.0])
    assert pair_similarities(embed, [], []) == []


ROLE = Role.from_params("evolver", {"backend": "hf", "model": "fake"})


def _round(pool: pl.DataFrame, rewrites: dict[str, str], answers: dict[str, str], embed, **settings):
    """One round: the fake evolver rewrites each instruction as ``rewrites`` says and answers as ``answers``."""
    def respond(variables: dict, request) -> str:
        return answers.get(variables["instruction"], "It is done in many careful steps, explained one by one.")

    def evolve(variables: dict, request) -> str:
        return rewrites[variables["instruction"]]

    replies = TemplateReplies({"evolve/depth.j2": evolve, "evolve/breadth.j2": evolve, "respond/response.j2": respond})
    fake = LLM(FakeBackend(replies), None, role=ROLE)
    return evolve_round(pool, round_index=1, settings=EvolveSettings(strategy="evol", breadth=False, **settings),
                        prompts=replies.watch(PromptLibrary()), evolver=fake, responder=fake, embed=embed)


def _pool(rows: list[tuple[str, str]]) -> pl.DataFrame:
    return pl.DataFrame({"id": [f"s{k}" for k in range(len(rows))], "root_id": [f"s{k}" for k in range(len(rows))],
                         "parent_id": [None] * len(rows), "round": [0] * len(rows), "method": ["seed"] * len(rows),
                         "instruction": [r[0] for r in rows], "input": [""] * len(rows), "output": [r[1] for r in rows]})


def test_a_round_fails_the_same_problem_and_the_same_answer_and_passes_the_next_round_its_answers():
    pool = _pool([(TANK, "The volume over the rate: 20 minutes."), ("Add 2 and 3.", "5"),
                  ("Multiply 4 by 5.", "20")])
    harder = "Add 2 and 3, then multiply the sum by 7 and subtract 1."
    rewrites = {TANK: PARAPHRASE, "Add 2 and 3.": harder, "Multiply 4 by 5.": "What do you get when 4 is multiplied "
                "by 5, written as a word?"}
    answers = {harder: "(2 + 3) * 7 - 1 = 34", rewrites["Multiply 4 by 5."]: "Twenty, which is 20."}
    similar = {TANK: 0.95, "Add 2 and 3.": 0.95, "Multiply 4 by 5.": 0.5}  # the harder sum has numbers of its own

    def embed(texts):  # a test double: parent i and rewrite i get vectors whose cosine is similar[parent i]
        n = len(texts) // 2
        angles = [np.arccos(similar[t]) for t in texts[:n]]
        return np.array([[1.0, 0.0]] * n + [[np.cos(a), np.sin(a)] for a in angles])

    table, next_pool, summary = _round(pool, rewrites, answers, embed)
    reasons = dict(zip(table["parent_instruction"], table["failure_reason"]))
    assert reasons == {TANK: elimination.SAME_PROBLEM, "Add 2 and 3.": None,
                       "Multiply 4 by 5.": elimination.SAME_ANSWER}
    assert summary["failed_by_reason"] == {"same_answer": 1, "same_problem": 1}
    carried = dict(zip(next_pool["instruction"], next_pool["output"]))
    assert carried[harder] == "(2 + 3) * 7 - 1 = 34"  # the next round compares with this answer
    assert carried[TANK] == "The volume over the rate: 20 minutes."  # a failed item's parent keeps its own

    table, _, _ = _round(pool, rewrites, answers, embed, elimination={"same_problem": False, "same_answer": False})
    assert table["failure_reason"].null_count() == 3
    assert RULES["same_problem"] and RULES["same_answer"] and RULES["hands_over_method"]


def _rewrites() -> list[dict]:
    path = Path(__file__).parents[1] / "bench/data/rewrites.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_the_labelled_rewrites_are_many_varied_and_split():
    rows = _rewrites()
    assert len(rows) >= 60
    assert {r["label"] for r in rows} == {"adds_something", "same_problem", "easier", "broken"}
    assert len({r["source"].split(" ")[0] for r in rows}) >= 4  # several runs and sources
    assert {r["kind"] for r in rows} == {"math", "code", "prose"}
    held = [r for r in rows if r["split"] == "held_out"]
    assert 0.12 <= len(held) / len(rows) <= 0.3
    by_parent: dict[str, set] = {}
    for r in rows:  # one parent's rewrites on one side: nothing tuned on leaks into the held-out figures
        by_parent.setdefault(r["parent"], set()).add(r["split"])
    assert all(len(splits) == 1 for splits in by_parent.values())
    assert len({r["id"] for r in rows}) == len(rows)


def test_the_text_rule_is_precise_on_the_labelled_rewrites():
    """hands_over_method is held to precision 0.8 on the pairs it fails (bench/rewrite_rules.py prints the rest), on
    the whole set and on its code evolutions, whose erroneous references, examples and stubs add code that is no
    solution: most of those must pass."""
    rows = _rewrites()
    failed = [r for r in rows if hands_over_method(r["parent"], r["rewrite"])]
    assert len(failed) >= 10
    assert sum(r["label"] != "adds_something" for r in failed) / len(failed) >= 0.8
    code = [r for r in rows if r["kind"] == "code"]
    assert len(code) >= 40 and len({r["source"].split(" ")[0] for r in code}) >= 2
    code_failed = [r for r in failed if r["kind"] == "code"]
    assert sum(r["label"] != "adds_something" for r in code_failed) / len(code_failed) >= 0.8
    with_code = [r for r in code if r["label"] == "adds_something" and ("```" in r["rewrite"] or "def " in r["rewrite"])
                 and "```" not in r["parent"]]
    assert len(with_code) >= 8 and not any(r in failed for r in with_code)


COMMON = Path(__file__).parents[1] / "src/evolforge/steps/common"
FAMILIES = ("wording", "repetition", "copying", "asking", "giveaway", "sameness")


def test_the_rule_families_are_their_own_modules_under_the_line_limit():
    for name in FAMILIES + ("elimination",):
        assert len((COMMON / f"{name}.py").read_text(encoding="utf-8").splitlines()) <= 360, name
    for name in FAMILIES:  # the families never import the module that runs them
        tree = ast.parse((COMMON / f"{name}.py").read_text(encoding="utf-8"))
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                    for alias in node.names} | {node.module for node in ast.walk(tree)
                                                if isinstance(node, ast.ImportFrom)}
        assert "elimination" not in imported and "evolforge.steps.common.elimination" not in imported, name
