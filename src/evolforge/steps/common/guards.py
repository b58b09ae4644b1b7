"""The guards: the rules an item must pass to be training material (evolved or a seed, an instruction and a
complete response). The dedup step lets an item that passes them win its cluster over a twin that fails one;
the select step drops the items that fail one and reports each guard's count. Duplicates and contaminated
items never reach selection: dedup and decontaminate drop them.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from evolforge.io.records import EVOLVED, SEED


def _blank(col: str) -> pl.Expr:
    return pl.col(col).is_null() | (pl.col(col).str.strip_chars() == "")


@dataclass(frozen=True)
class Guard:
    """One guard: what it means, the columns it reads (absent: not applied, as in an older responses table
    without response_status) and the expression true on the rows that fail it."""

    means: str
    columns: tuple[str, ...]
    fails: pl.Expr


# in the order they are checked: a row is counted under the first one it fails
GUARDS: dict[str, Guard] = {
    "not_evolved": Guard("status is not evolved (or seed)", ("status",),
                         ~pl.col("status").is_in([EVOLVED, SEED]) | pl.col("status").is_null()),
    "empty_instruction": Guard("instruction is empty", ("instruction",), _blank("instruction")),
    "empty_response": Guard("response is empty", ("output",), _blank("output")),
    "response_incomplete": Guard("response_status is not complete (truncated, repetitive, empty)", ("response_status",),
                                 pl.col("response_status").is_null() | (pl.col("response_status") != "complete")),
}


def applicable(table: pl.DataFrame) -> list[str]:
    """The guards whose columns ``table`` has, in order."""
    return [name for name, guard in GUARDS.items() if all(c in table.columns for c in guard.columns)]


def guard_reason(table: pl.DataFrame) -> pl.Series:
    """The first guard each row fails (null when it passes all that apply), as a String series."""
    expr = pl.lit(None, dtype=pl.String)
    for name in reversed(applicable(table)):  # built inside out, so the first guard in GUARDS wins
        expr = pl.when(GUARDS[name].fails).then(pl.lit(name)).otherwise(expr)
    return table.with_columns(expr.alias("_guard"))["_guard"].alias("guard")
