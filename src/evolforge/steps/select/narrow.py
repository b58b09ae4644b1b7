"""The select stage's inputs, checked and narrowed a chunk at a time: the ranking table.

The ranking (:func:`evolforge.steps.select.selection.choose`) needs, per item, its id and round, the first guard
it fails, a digest of its text (for the distinct-instruction ratios), one of its seed's id (the same-problem walk's
lineage), how many results its question asks for, the restrictions it states and its checked result (the walk's
guard and backstop: :mod:`evolforge.steps.select.same_problem`, :mod:`evolforge.steps.select.checked`) and the
metric columns; never its texts
(the helper columns: :func:`with_helpers`; the texts, read for the near-duplicate walk only: :func:`file_texts`).
:func:`ranking_table` builds that table from the items read ``chunk_rows`` at a time (guards and digests computed
per chunk, texts dropped) joined with the metric columns of judged, scores and diversity: about 80 bytes per
item, the one part of the stage that grows with the number of items (with the selection's ids, below).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Sequence

import polars as pl

from evolforge.core.text import item_text, question_text
from evolforge.io import validation
from evolforge.io.stream import check_chunks, iter_chunks, table_file, table_schema
from evolforge.steps.common.guards import GUARDS, applicable, guard_reason
from evolforge.steps.common.asking import restriction_mask, results_asked
from evolforge.steps.select.checked import ANSWER, VERIFY_COLUMNS, checked_answers, checked_column
from evolforge.steps.select.near_duplicates import TextReader
from evolforge.steps.select.settings import SelectSettings

# the columns the filters and the summary read (the metrics, the floors' and ifd_filter's columns, the pool MND)
METRIC_COLUMNS = ("ic_ifd", "ifd", "difficulty_score", "difficulty_expected", "loss_instruction", "mnd",
                  "verify_verdict", "verify_confidence",  # drop_wrong's and min_confidence's
                  "verify_method")  # whether verify checked the content: then an answer check alone does not vouch
# helper columns: the first guard a row fails (null: none), its text's digest, its seed's (root_id) digest, the
# results its question asks for (asking.results_asked), the restrictions it states (asking.restriction_mask) and its
# checked result (checked.ANSWER, null: none)
GUARD, TEXT, ROOT, ASKS, MARKS = "_guard", "_text", "_root", "_asks", "_marks"
HELPERS = (GUARD, TEXT, ROOT, ASKS, MARKS, ANSWER)
CHECK_PASSED = "answer_check_passed"  # the items' answer check result (require_check reads it; null: no check)


def with_helpers(table: pl.DataFrame) -> pl.DataFrame:
    """``table`` with the helper columns :func:`~evolforge.steps.select.selection.choose` reads: ``GUARD``, ``ROOT``
    when it has lineage, ``TEXT``, ``ASKS`` and ``MARKS`` when it has instructions, ``ANSWER`` when it has the verify
    stage's columns."""
    table = table.with_columns(guard_reason(table).alias(GUARD))
    if "root_id" in table.columns:
        table = table.with_columns(pl.col("root_id").cast(pl.String).hash(seed=0).alias(ROOT))
    if set(VERIFY_COLUMNS) <= set(table.columns):
        table = table.with_columns(checked_column(table))
    if "instruction" not in table.columns:
        return table
    inputs = table["input"] if "input" in table.columns else pl.Series([None] * table.height, dtype=pl.String)
    questions = [question_text(q or "", x) for q, x in zip(table["instruction"].to_list(), inputs.to_list())]
    return table.with_columns(text_digests(table["instruction"], inputs).alias(TEXT),
                              pl.Series(ASKS, [results_asked(q) for q in questions], dtype=pl.Int16),
                              pl.Series(MARKS, [restriction_mask(q) for q in questions], dtype=pl.Int32))


def table_texts(table: pl.DataFrame) -> TextReader:
    """What reads the question and answer texts of some of ``table``'s items (the near-duplicate walk's input)."""
    def read(ids: Sequence[str]) -> list[tuple[str, str, str]]:
        rows = table.filter(pl.col("id").is_in(list(ids)))
        inputs = rows["input"].to_list() if "input" in rows.columns else [None] * rows.height
        return [(i, question_text(q, x), a or "") for i, q, x, a in zip(rows["id"].to_list(),
                                                                        rows["instruction"].to_list(), inputs,
                                                                        rows["output"].to_list())]
    return read


def text_digests(instructions: pl.Series, inputs: pl.Series) -> pl.Series:
    """A 64-bit digest of each item's normalised text (:func:`evolforge.core.text.item_text`): equal texts, equal
    digests; 8 bytes per item where the texts would be tens or thousands."""
    texts = pl.Series([item_text(q, x) for q, x in zip(instructions.to_list(), inputs.to_list())], dtype=pl.String)
    return texts.hash(seed=0)


@dataclass(frozen=True)
class Inputs:
    """The stage's tables, as the command line names them (the names appear in errors); ``verified`` is optional
    (a selection without the verify stage's verdicts)."""

    items: str
    judged: str
    scores: str
    diversity: str
    verified: str | None = None

    def per_item(self) -> list[str]:
        """The per-item tables, in the order their columns follow the items' (judged, scores, diversity,
        verified)."""
        return [self.judged, self.scores, self.diversity] + ([self.verified] if self.verified else [])


def check_inputs(inputs: Inputs, settings: SelectSettings, chunk_rows: int) -> None:
    """The checks the stage has always made (item columns, unique ids, the numbers this selection reads, in the
    table that holds them), a chunk at a time (:func:`evolforge.io.stream.check_chunks`)."""
    check_chunks(inputs.items, validation.item_columns(["id", "round", "instruction", "input", "output"])
                 + validation.unique("id"), chunk_rows)
    metric = settings.metric
    numbers = {inputs.scores: [metric] if metric in ("ifd", "ic_ifd") else [],
               inputs.judged: [metric] if metric in ("difficulty_score", "difficulty_expected") else [],
               inputs.diversity: ["mnd"] if settings.min_mnd is not None else []}
    if inputs.verified:
        numbers[inputs.verified] = ["verify_confidence"] if settings.min_confidence is not None else []
    numbers[inputs.scores] += ["ifd"] if settings.ifd_filter else []
    numbers[inputs.scores] += ["loss_instruction"] if settings.min_loss_instruction is not None else []
    for path in inputs.per_item():
        check_chunks(path, validation.item_columns(["id"]) + validation.unique("id")
                     + validation.number_columns(numbers[path]), chunk_rows)


def _items_narrow(items: str, chunk_rows: int) -> tuple[pl.DataFrame, list[str]]:
    """id, round, the items' own metric columns, ``GUARD`` and ``TEXT`` of every item, in table order; and the
    guards that apply (those whose columns the items have)."""
    schema = table_schema(items)
    guards = applicable(pl.DataFrame(schema=schema))
    read = ["id", "round", *(c for c in ("root_id", "instruction", "input") if c in schema),
            *(c for name in guards for c in GUARDS[name].columns if c not in ("instruction", "input")),
            *(c for c in (*METRIC_COLUMNS, CHECK_PASSED) if c in schema)]
    read = list(dict.fromkeys(read))
    keep = ["id", "round", *(c for c in (*METRIC_COLUMNS, CHECK_PASSED) if c in schema), GUARD, TEXT, ASKS, MARKS,
            *([ROOT] if "root_id" in schema else [])]
    empty = pl.DataFrame(schema={c: schema[c] for c in read})  # a table without rows still has its columns
    parts = [with_helpers(chunk).select(keep) for chunk in chain([empty], iter_chunks(items, chunk_rows, read))]
    return pl.concat(parts), guards


def file_texts(items: str) -> TextReader:
    """What reads the question and answer texts of some items from the items' file (their rows only)."""
    def read(ids: Sequence[str]) -> list[tuple[str, str, str]]:
        rows = (pl.scan_parquet(table_file(items)).filter(pl.col("id").is_in(list(ids)))
                .select("id", "instruction", "input", "output").collect())
        return table_texts(rows)(ids)
    return read


def ranking_table(inputs: Inputs, chunk_rows: int) -> tuple[pl.DataFrame, list[str]]:
    """The ranking table (module docstring) in the items' order, and the guards that apply. Every item must have a
    row in every per-item table: a missing one means that stage ran on other items."""
    table, guards = _items_narrow(inputs.items, chunk_rows)
    for path in inputs.per_item():
        columns = [c for c in METRIC_COLUMNS if c in table_schema(path) and c not in table.columns]
        other = pl.scan_parquet(table_file(path)).select("id", *columns, _found=pl.lit(True))
        # one join, not an anti join and then a left one: the marker is null where an item has no row
        table = table.lazy().join(other, on="id", how="left", maintain_order="left").collect()
        unmatched = table["_found"].null_count()
        if unmatched:
            raise ValueError(f"{path}: {unmatched} items have no row; rerun that stage")
        table = table.drop("_found")
    if inputs.verified:  # the checked results, from the verify stage's evidence a chunk at a time
        table = table.join(checked_answers(inputs.verified, chunk_rows), on="id", how="left", maintain_order="left")
    return table, guards

