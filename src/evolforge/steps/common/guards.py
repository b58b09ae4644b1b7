"""The guards: the rules an item must pass to be training material (evolved or a seed, an instruction and a
complete response, not a duplicate, not contaminated). The dedup step skips items that already fail one; the
select step reports each guard's count beside its selection.
"""

from __future__ import annotations

import polars as pl

from evolforge.core.records import EVOLVED, SEED


# Guards, in the order they are checked: name -> (what it means, the columns it needs). A guard whose
# column is absent (an older responses table has no response_status) is not applied.
GUARDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "not_evolved": ("status is not evolved (or seed)", ("status",)),
    "empty_instruction": ("instruction is empty", ("instruction",)),
    "empty_response": ("response is empty", ("output",)),
    "response_incomplete": ("response_status is not complete (truncated, repetitive, empty)", ("response_status",)),
    "duplicate": ("near-duplicate of a kept item (duplicate_of is set)", ("duplicate_of",)),
    "contaminated": ("shares an n-gram with a benchmark (contamination_benchmark is set)", ("contamination_benchmark",)),
}


def _blank(col: str) -> pl.Expr:
    return pl.col(col).is_null() | (pl.col(col).str.strip_chars() == "")


def _guard_fails(name: str) -> pl.Expr:
    if name == "not_evolved":
        return ~pl.col("status").is_in([EVOLVED, SEED]) | pl.col("status").is_null()
    if name == "empty_instruction":
        return _blank("instruction")
    if name == "empty_response":
        return _blank("output")
    if name == "response_incomplete":
        return pl.col("response_status").is_null() | (pl.col("response_status") != "complete")
    if name == "duplicate":
        return pl.col("duplicate_of").is_not_null()
    return pl.col("contamination_benchmark").is_not_null()


def guard_reason(table: pl.DataFrame) -> pl.Series:
    """The first guard each row fails (null when it passes all that apply), as a String series."""
    expr = pl.lit(None, dtype=pl.String)
    for name in reversed(GUARDS):  # built inside out, so the first guard in GUARDS wins
        if all(c in table.columns for c in GUARDS[name][1]):
            expr = pl.when(_guard_fails(name)).then(pl.lit(name)).otherwise(expr)
    return table.with_columns(expr.alias("_guard"))["_guard"].alias("guard")
