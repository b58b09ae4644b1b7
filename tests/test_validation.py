"""Stage-boundary validation: a table that passes is settled without Great Expectations, and every verdict
(pass, or the rule and rows of the error) is the one Great Expectations gives on the same table and rules."""

import math

import polars as pl
import pytest

from evolforge.io import validation
from evolforge.io.validation import DataError

TEXT = pl.DataFrame({"id": ["a", "b", "c"], "instruction": ["Add 2 and 3.", "Name a colour.", "Sort the list."],
                     "input": [None, "", "3, 1, 2"], "score": [0.0, 55.5, 100.0]})

RULES = (validation.required_columns(["id", "instruction"]) + validation.unique("id")
         + validation.non_empty_text(["instruction"]) + validation.visible_text(["instruction"])
         + validation.no_control_characters(["instruction", "input"]) + validation.no_bidi_controls(["instruction", "input"])
         + validation.between("score", 0, 100))

# (case, table): each breaks at most one rule, at the third row
CASES = [
    ("clean", TEXT),
    ("duplicate id", TEXT.with_columns(id=pl.Series(["a", "b", "a"]))),
    ("null instruction", TEXT.with_columns(instruction=pl.Series(["Add 2 and 3.", "Name a colour.", None]))),
    ("blank instruction", TEXT.with_columns(instruction=pl.Series(["Add 2 and 3.", "Name a colour.", " \n"]))),
    ("zero-width only", TEXT.with_columns(instruction=pl.Series(["Add 2 and 3.", "Name a colour.", "\u200b\u200d"]))),
    ("ANSI escape in input", TEXT.with_columns(input=pl.Series([None, "", "\x1b[31mred"]))),
    ("bidi override", TEXT.with_columns(instruction=pl.Series(["Add 2 and 3.", "Name a colour.", "Sort \u202e the list."]))),
    ("score above range", TEXT.with_columns(score=pl.Series([0.0, 55.5, 100.5]))),
    ("score NaN", TEXT.with_columns(score=pl.Series([0.0, 55.5, math.nan]))),
    ("score null", TEXT.with_columns(score=pl.Series([0.0, 55.5, None]))),
]


def verdict(check, table):
    try:
        check(table, RULES, "items.parquet")
    except DataError as err:
        return err.rule, err.rows
    return None


@pytest.mark.parametrize("case,table", CASES, ids=[c for c, _ in CASES])
def test_same_verdict_as_great_expectations(case, table):
    expected = verdict(validation.gx_check, table)
    assert verdict(validation.check, table) == expected
    if case in ("clean", "score null", "score NaN"):  # value rules skip nulls (and NaN, which pandas counts as null)
        assert expected is None
    else:
        assert expected is not None and expected[1] in ([3], [1, 3]), (case, expected)


def test_passing_table_never_reaches_great_expectations(monkeypatch):
    def fail(*_):
        raise AssertionError("Great Expectations was run on a table whose rules hold")

    monkeypatch.setattr(validation, "gx_check", fail)
    validation.check(pl.concat([TEXT] * 1000).with_row_index("n").with_columns(id=pl.col("n").cast(pl.String)),
                     RULES, "items.parquet")
    with pytest.raises(AssertionError, match="Great Expectations"):  # a broken rule still goes there
        validation.check(CASES[1][1], RULES, "items.parquet")


def test_missing_column_named_before_any_value_check():
    with pytest.raises(DataError, match="column 'instruction' is present"):
        validation.check(TEXT.drop("instruction"), RULES, "items.parquet")


def test_text_rules_settled_as_re_search_settles_them():
    """The shortcuts for the text rules (one search over the joined values, str.isspace for whitespace)
    agree with re.search value by value, on random texts of whitespace, controls, invisible, bidi, tag and
    flag characters."""
    import random
    import re

    rng = random.Random(0)
    alphabet = (["a", "Z", " ", "\t", "\n", "\r", "\x0b", "\x1c", "\x1f", "\x00", "\x1b", "\x7f", "\x85", "\x9f",
                 "\xa0", "\u00ad", "\u200b", "\u2028", "\u202e", "\u2066", "\u3000", "\ufeff", "é", "日",
                 "\U0001F3F4", "\U000E0067", "\U000E007F", "\U000E0000"])
    rules = (validation.non_empty_text(["t"]) + validation.visible_text(["t"]) + validation.no_control_characters(["t"])
             + validation.no_bidi_controls(["t"]) + validation.no_tag_characters(["t"]))
    rules = [r for r in rules if "Regex" in r.expectation]
    samples = [["".join(rng.choice(alphabet[:rng.randint(1, len(alphabet))]) for _ in range(rng.randint(0, 4)))
                for _ in range(rng.randint(1, 3))] for _ in range(3000)]
    samples.append(["a \U0001F3F4", "\U000E0067 b"])  # a flag ends one value, a tag starts the next: two texts
    for values in samples:
        table = pl.DataFrame({"t": values})
        for rule in rules:
            found = [re.search(rule.kwargs["regex"], v) is not None for v in values]
            expected = all(found) if rule.expectation == "ExpectColumnValuesToMatchRegex" else not any(found)
            assert validation._holds(table, rule) == expected, (rule.words, values)
