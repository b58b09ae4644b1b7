"""AutoIF items: the constraint's verdict and a check of the content, combined.

An AutoIF item (lineage ``method`` autoif) is a query answered under a constraint: instruction = the constraint,
input = the query. Its ``answer_check_passed`` is the verdict of the constraint's verification functions
(autoif_respond), which test the answer's form (its length, its last word, its sections), never whether it answers
the query: "$10.00 Done" keeps "finish with the word Done" and still gets 3 x $2.50 + $1.25 wrong. So the verify
step also checks the content, by the method the query allows (:func:`content_item`):

- a programming query answered with a function: ``code_tests``, tests written for the query alone;
- a query asking for a quantity: ``numeric``, the number recomputed from the query alone (the constraint shapes the
  answer's form, not the number);
- any other: ``judge``, on the constraint and the query together, as the item reads (:func:`question_text`).

The item's verdict (:func:`with_constraint`): a failed constraint is ``wrong`` by the check alone, at no call (the
``answer_check`` method); with the constraint passed, the content's verdict: ``right`` only when the content check
calls it right, ``wrong`` when it finds it wrong, ``unsure`` when it cannot tell. An answer known only to keep its
form is not vouched for (``select.require_vouched`` keeps it out), as an evolved item the checks cannot decide.
Its evidence holds both verdicts: the content method's, and ``constraint`` (passed, the functions' detail).

>>> row = {"method": "autoif", "instruction": "Finish with the word Done.", "input": "What is 3 x 2.50 + 1.25?",
...        "output": "$10.00 Done", "answer_check_passed": True, "answer_check_detail": "2 of 2 accept it"}
>>> content_item(row, "numeric").task
'What is 3 x 2.50 + 1.25?'
>>> content_item(row, "judge").task
'Finish with the word Done.\\nWhat is 3 x 2.50 + 1.25?'
>>> result = with_constraint(Result("numeric", "wrong", '{"answer_value": 10.0}', 0.0), row)
>>> result.verdict, json.loads(result.evidence)["constraint"]["passed"]
('wrong', True)
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from evolforge.core.text import question_text
from evolforge.steps.verify.methods import Item, Result

AUTOIF = "autoif"  # the lineage method autoif_respond gives its items


def is_autoif(row: dict[str, Any]) -> bool:
    return row.get("method") == AUTOIF


def form_passed(row: dict[str, Any]) -> bool:
    """An AutoIF item whose constraint check passed: its content still to check (a failed check is the verdict)."""
    return is_autoif(row) and row.get("answer_check_passed") is True


def kind_question(row: dict[str, Any]) -> str:
    """The text whose kind (code, quantity, other) picks the content method: an AutoIF item's query, else Q."""
    return (row.get("input") or "") if is_autoif(row) else question_text(row["instruction"], row.get("input"))


def content_item(row: dict[str, Any], method: str) -> Item:
    """What ``method`` checks for ``row``: Q and the answer; for an AutoIF item, the query alone to the code and
    numeric methods, the constraint with the query to the judge."""
    answer = row.get("output") or ""
    if is_autoif(row) and method in ("code_tests", "numeric"):
        query = row.get("input") or ""
        return Item(query, query, "", answer)
    return Item(question_text(row["instruction"], row.get("input")), row["instruction"], row.get("input") or "",
                answer)


def with_constraint(content: Result, row: dict[str, Any]) -> Result:
    """The item's result from its content check's, for an item whose constraint passed: the content's verdict and
    confidence, and the evidence of both (module docstring)."""
    evidence = json.loads(content.evidence)
    evidence["constraint"] = {"passed": True, "detail": row.get("answer_check_detail")}
    return replace(content, evidence=json.dumps(evidence, sort_keys=True))
