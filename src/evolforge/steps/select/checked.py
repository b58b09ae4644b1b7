"""Each item's checked result, for the same-problem walk's backstop in a lineage (``select.same_answer_lineage``,
:mod:`evolforge.steps.select.same_problem`): the number the verify stage vouched for, read from its columns.

- ``numeric`` with the verdict ``right``: of the values the answer states (``answer_values`` in
  ``verify_evidence``), the one the most recomputations agree with (its sampled answers' and its program's values,
  within :data:`AGREEMENT`, verify.tolerance's shipped value);
- ``answer_check`` with the verdict ``right`` and a number check (a seed's): the check's value;
- anything else (code, prose, ``unsure`` or ``wrong``, no verdict): none. Code is not compared: two functions of one
  name that pass their own tests may still ask different things (a constraint the tests do not reach), and select
  runs no code to try one item's answer on the other's tests.

>>> checked_value("numeric", "right", '{"answer_values": [0.0, 16.67, 500.0], "sample_values": [16.67, 16.67, '
...               '17.0], "program_value": 16.666}')
16.67
>>> checked_value("answer_check", "right", '{"check": "{\\\\"kind\\\\": \\\\"number\\\\", \\\\"value\\\\": 20}"}')
20.0
>>> checked_value("numeric", "unsure", '{"answer_values": [20.0], "sample_values": [20.0]}') is None
True
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl

from evolforge.io.stream import iter_chunks, table_schema

AGREEMENT = 0.005  # relative and absolute: a recomputed value this close to a stated one agrees with it
SAME_RESULT = 1e-6  # relative: two checked results this close are one (the rounds' same_answer rule's tolerance)
ANSWER = "_answer"  # the ranking table's helper column: the checked result (null: none)
VERIFY_COLUMNS = ("verify_method", "verify_verdict", "verify_evidence")


def _evidence(text: str | None) -> dict:
    try:
        found = json.loads(text or "{}")
    except json.JSONDecodeError:
        return {}
    return found if isinstance(found, dict) else {}


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _agreed(evidence: dict) -> float | None:
    """The stated value the most recomputed values agree with (the first stated one on a tie); None without any."""
    stated = [v for v in map(_finite, evidence.get("answer_values") or [evidence.get("answer_value")]) if v is not None]
    others = [v for v in map(_finite, [*(evidence.get("sample_values") or []), evidence.get("program_value")])
              if v is not None]
    votes = [sum(math.isclose(v, s, rel_tol=AGREEMENT, abs_tol=AGREEMENT) for v in others) for s in stated]
    if not stated or not max(votes):
        return None
    return stated[votes.index(max(votes))]


def checked_value(method: str | None, verdict: str | None, evidence: str | None) -> float | None:
    """The result an item's verification vouched for (module doc); None where it vouched for no number."""
    if verdict != "right":
        return None
    found = _evidence(evidence)
    if method == "numeric":
        return _agreed(found)
    if method == "answer_check":
        check = found.get("check")
        check = _evidence(check) if isinstance(check, str) else check if isinstance(check, dict) else {}
        return _finite(check.get("value")) if check.get("kind") == "number" else None
    return None


def checked_column(rows: pl.DataFrame) -> pl.Series:
    """:func:`checked_value` of each row of ``rows`` (with the verify stage's columns), as the ``ANSWER`` column;
    all null where ``rows`` lacks them."""
    if not set(VERIFY_COLUMNS) <= set(rows.columns):
        return pl.Series(ANSWER, [None] * rows.height, dtype=pl.Float64)
    return pl.Series(ANSWER, [checked_value(*row) for row in rows.select(VERIFY_COLUMNS).iter_rows()],
                     dtype=pl.Float64)


def checked_answers(verified: str | Path, chunk_rows: int) -> pl.DataFrame:
    """id and ``ANSWER`` of every item of the verify stage's output ``verified``, read ``chunk_rows`` at a time
    (the evidence texts never all in memory); empty where it lacks the verify columns."""
    if not set(VERIFY_COLUMNS) <= set(table_schema(verified).names()):
        return pl.DataFrame(schema={"id": pl.String, ANSWER: pl.Float64})
    parts = [chunk.select("id").with_columns(checked_column(chunk))
             for chunk in iter_chunks(verified, chunk_rows, ["id", *VERIFY_COLUMNS])]
    return pl.concat(parts) if parts else pl.DataFrame(schema={"id": pl.String, ANSWER: pl.Float64})
