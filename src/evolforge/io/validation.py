"""Validation at stage boundaries: Great Expectations suites over tables, errors written for people.

A failed check raises :class:`DataError` naming the file, the row(s) and the rule, e.g.::

    data/seed/items.parquet: rows 3, 17: rule 'instruction is non-empty text'
    (expect_column_value_lengths_to_be_between)

Row numbers are 1-based positions in the table as read (for JSONL sources: line numbers).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from evolforge.config.bounds import Refusal


class DataError(Refusal, ValueError):
    """Bad data at a stage boundary. The message names file, row and rule."""

    def __init__(self, file: str | Path, rule: str, rows: list[int] | None = None, detail: str = ""):
        self.file, self.rule, self.rows, self.detail = str(file), rule, rows or [], detail
        where = ""
        if self.rows:
            shown = ", ".join(str(r) for r in self.rows[:10]) + (f" (+{len(self.rows) - 10} more)"
                                                                 if len(self.rows) > 10 else "")
            where = f" row{'s' if len(self.rows) > 1 else ''} {shown}:"
        super().__init__(f"{self.file}:{where} rule '{rule}'" + (f": {detail}" if detail else ""))


@dataclass(frozen=True)
class Rule:
    """One expectation with the plain-words rule a person reads in the error."""

    words: str
    expectation: str  # a great_expectations.expectations class name
    kwargs: dict[str, Any]


def required_columns(columns: list[str]) -> list[Rule]:
    return [Rule(f"column '{c}' is present", "ExpectColumnToExist", {"column": c}) for c in columns]


# The columns every item table shares (records.LINEAGE and the texts), with their types, and those never null
# (a seed's parent_id is null; so is a failed response's output).
ITEM_TYPES = {"id": pl.String, "root_id": pl.String, "parent_id": pl.String, "round": "integer",
              "instruction": pl.String, "input": pl.String, "output": pl.String}
ITEM_NOT_NULL = ("id", "root_id", "round", "instruction")


def item_columns(columns: list[str]) -> list[Rule]:
    """``columns`` present; those of :data:`ITEM_TYPES` of their type, and those of :data:`ITEM_NOT_NULL`
    never null. A hand-edited table with a null instruction or a numeric id is refused here, before a
    prompt says "None" or a sort fails halfway."""
    rules = required_columns(columns)
    for c in columns:
        if c in ITEM_TYPES:
            kind = ITEM_TYPES[c]
            rules.append(Rule(f"column '{c}' holds {'integers' if kind == 'integer' else 'text'}", "ColumnType",
                              {"column": c, "type": kind}))
    return rules + [Rule(f"{c} is not null", "ExpectColumnValuesToNotBeNull", {"column": c})
                    for c in columns if c in ITEM_NOT_NULL]


def number_columns(columns: list[str]) -> list[Rule]:
    """``columns`` present and holding numbers (nulls allowed: an unscored item is never selected by it)."""
    return required_columns(columns) + [Rule(f"column '{c}' holds numbers", "ColumnType",
                                             {"column": c, "type": "number"})
                                        for c in columns]


def _of_type(dtype: pl.DataType, kind: Any) -> bool:
    if dtype == pl.Null:  # no value at all: the null rules decide
        return True
    if kind == "number":
        return dtype.is_numeric()
    return dtype.is_integer() if kind == "integer" else dtype == kind


def non_empty_text(columns: list[str]) -> list[Rule]:
    rules = []
    for c in columns:
        rules.append(Rule(f"{c} is not null", "ExpectColumnValuesToNotBeNull", {"column": c}))
        rules.append(Rule(f"{c} is non-empty text", "ExpectColumnValuesToMatchRegex", {"column": c, "regex": r"\S"}))
    return rules


# C0 controls but tab, newline and carriage return; DEL; C1 controls (ANSI escape sequences start with ESC)
CONTROL_CHARACTERS = "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]"
# bidirectional embeddings, overrides and isolates: they reorder how text displays ("Trojan Source")
BIDI_CONTROLS = "[\u202a-\u202e\u2066-\u2069]"
# a character that shows: not whitespace, not zero-width / format / filler characters
VISIBLE = ("[^\\s\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f"
           "\u200b-\u200f\u2028-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0]")


# Unicode tag characters show nothing but spell ASCII that a model reads ("ASCII smuggling" of hidden
# instructions). Their one ordinary use, subdivision flags (U+1F3F4 then tags), is allowed.
TAG_CHARACTERS = "(?<![\U0001F3F4\U000E0020-\U000E007E])[\U000E0000-\U000E007F]"


def no_tag_characters(columns: list[str]) -> list[Rule]:
    return [Rule(f"{c} holds no hidden tag characters (U+E0000-U+E007F, outside an emoji flag)",
                 "ExpectColumnValuesToNotMatchRegex", {"column": c, "regex": TAG_CHARACTERS}) for c in columns]


def visible_text(columns: list[str]) -> list[Rule]:
    return [Rule(f"{c} has a visible character (not only zero-width or format characters)",
                 "ExpectColumnValuesToMatchRegex",
                 {"column": c, "regex": VISIBLE}) for c in columns]


def no_control_characters(columns: list[str]) -> list[Rule]:
    return [Rule(f"{c} holds no control characters (NUL, ANSI escapes...; tab and newlines are fine)",
                 "ExpectColumnValuesToNotMatchRegex", {"column": c, "regex": CONTROL_CHARACTERS}) for c in columns]


def no_bidi_controls(columns: list[str]) -> list[Rule]:
    return [Rule(f"{c} holds no bidirectional override or isolate characters (U+202A-U+202E, U+2066-U+2069)",
                 "ExpectColumnValuesToNotMatchRegex", {"column": c, "regex": BIDI_CONTROLS}) for c in columns]


def unique(column: str) -> list[Rule]:
    return [Rule(f"{column} values are unique", "ExpectColumnValuesToBeUnique", {"column": column})]


def between(column: str, low: float | None, high: float | None) -> list[Rule]:
    return [Rule(f"{column} lies in [{low}, {high}]", "ExpectColumnValuesToBeBetween",
                 {"column": column, "min_value": low, "max_value": high})]


_context = None


def _gx_context():
    global _context
    if _context is None:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        import great_expectations as gx

        logging.getLogger("great_expectations").setLevel(logging.ERROR)
        _context = gx.get_context(mode="ephemeral")
        try:  # quiet the per-expectation progress bars
            from great_expectations.data_context.types.base import ProgressBarsConfig

            _context.variables.progress_bars = ProgressBarsConfig(globally=False)
        except Exception:  # noqa: BLE001 - cosmetics only; older/newer layouts differ
            pass
    return _context


def _holds(table: pl.DataFrame, rule: Rule) -> bool:
    """True when ``rule`` certainly holds, decided as Great Expectations' pandas engine decides it: over the
    non-null values, with Python's ``re.search`` for regexes. False when it may not hold, and for any
    expectation or column type this shortcut does not cover: Great Expectations then decides."""
    kind, kwargs = rule.expectation, rule.kwargs
    if kind == "ExpectColumnToExist":
        return kwargs["column"] in table.columns
    column = table[kwargs["column"]]
    if kind == "ExpectColumnValuesToNotBeNull":
        return column.null_count() == 0 and not (column.dtype.is_float() and column.is_nan().any())
    if kind == "ExpectColumnValuesToBeUnique":
        return not column.drop_nulls().is_duplicated().any()
    if kind == "ExpectColumnValuesToBeBetween" and column.dtype.is_numeric() \
            and kwargs.keys() <= {"column", "min_value", "max_value"}:
        values = column.drop_nulls()
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        return bool((low is None or (values >= low).all()) and (high is None or (values <= high).all()))
    if kind in ("ExpectColumnValuesToMatchRegex", "ExpectColumnValuesToNotMatchRegex") and column.dtype == pl.String \
            and kwargs.keys() == {"column", "regex"}:
        regex, values = kwargs["regex"], column.drop_nulls().to_list()
        search = re.compile(regex).search
        if kind == "ExpectColumnValuesToNotMatchRegex":
            if regex in _ONE_CHARACTER:  # one search over all the values, apart by a character none matches
                text = "\n".join(values)
                return (regex in _NON_ASCII and text.isascii()) or search(text) is None
            return all(search(v) is None for v in values)
        if regex in _NOT_ONLY_WHITESPACE:  # re's \s is str.isspace; VISIBLE excludes nothing else in ASCII
            return all((v and not v.isspace() and (regex == r"\S" or v.isascii())) or search(v) is not None
                       for v in values)
        return all(search(v) is not None for v in values)
    return False


# Patterns that match one character (a class, with at most a lookbehind at the character before it): a
# value holds a match exactly when the values joined by newlines, which none of them matches, hold one.
_ONE_CHARACTER = frozenset({CONTROL_CHARACTERS, BIDI_CONTROLS, TAG_CHARACTERS})
_NON_ASCII = frozenset({BIDI_CONTROLS, TAG_CHARACTERS})  # of those, the ones no ASCII character matches
# Patterns a value matches when it holds a character that is not whitespace: always (\S), and for an
# ASCII value (VISIBLE: the invisible characters it also refuses are all outside ASCII)
_NOT_ONLY_WHITESPACE = frozenset({r"\S", VISIBLE})


def check(table: pl.DataFrame, rules: list[Rule], file: str | Path) -> None:
    """Validate ``table`` against ``rules``; raise DataError on the first broken rule.

    Rules that certainly hold are settled here (:func:`_holds`, the same semantics); only a table where
    some rule may break goes through Great Expectations, which finds the rule and rows for the message.
    Importing it costs about 3 s of CPU and 280 MiB, once per stage process, for tables that pass."""
    missing = [r for r in rules if r.expectation == "ExpectColumnToExist" and r.kwargs["column"] not in table.columns]
    if missing:  # report the schema problem plainly before running value checks on absent columns
        raise DataError(file, missing[0].words, detail=f"columns present: {table.columns}")
    for rule in rules:  # then the types, as plainly
        if rule.expectation == "ColumnType" and not _of_type(table.schema[rule.kwargs["column"]], rule.kwargs["type"]):
            raise DataError(file, rule.words, detail=f"it holds {table.schema[rule.kwargs['column']]}")
    rules = [r for r in rules if r.expectation != "ColumnType"]
    if not all(_holds(table, rule) for rule in rules):
        gx_check(table, rules, file)


def gx_check(table: pl.DataFrame, rules: list[Rule], file: str | Path) -> None:
    """Validate ``table`` (every rule's column present) with a Great Expectations suite of ``rules``."""
    import great_expectations as gx

    ctx = _gx_context()
    name = f"t{id(table)}"
    asset = ctx.data_sources.add_or_update_pandas("evolforge").add_dataframe_asset(name)
    batch = asset.add_batch_definition_whole_dataframe("all").get_batch(
        batch_parameters={"dataframe": table.to_pandas()}
    )
    suite = gx.ExpectationSuite(name=name)
    for rule in rules:
        suite.add_expectation(getattr(gx.expectations, rule.expectation)(**rule.kwargs))
    result = batch.validate(suite, result_format="COMPLETE")
    by_type = {}  # two rules of one type on one column differ by their regex
    for rule in rules:
        by_type.setdefault((_snake(rule.expectation), rule.kwargs.get("column"), rule.kwargs.get("regex")), rule)
    for res in result.results:
        if res.success:
            continue
        cfg = res.expectation_config
        rule = by_type.get((cfg.type, cfg.kwargs.get("column"), cfg.kwargs.get("regex")))
        rows = [int(i) + 1 for i in (res.result or {}).get("unexpected_index_list") or []]
        raise DataError(file, rule.words if rule else cfg.type, rows, detail=f"({cfg.type})")


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
