"""A seed source read into the seed table: read a local file or a Hugging Face dataset
(:mod:`evolforge.steps.common.source_read`), map its fields to instruction / input / output and check every value
(:mod:`evolforge.steps.common.source_fields`), give every row a stable content-derived id, drop duplicates
(recording which row was kept) and optionally keep a hash-based sample. The rules are written for users in
docs/how-to/seeds.md.

Bad input is refused, never repaired; no rows at all is refused too. Each refusal is a :class:`DataError`
naming the file, the row, the field and the rule.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import polars as pl

from evolforge.io.records import LINEAGE, SEED, make_id
from evolforge.core.text import normalize_text
from evolforge.io.validation import DataError
from evolforge.steps.common.answer_check import FIELD as CHECK_FIELD, check_json, parse_check
from evolforge.steps.common.source_fields import (chat_records, check_values, field_map, normalise_records,
                                                  normalise_table, require_mapped)
from evolforge.steps.common.source_read import ROW, read_source, source_digest

DUPLICATE_RULE = ("same instruction and input after normalize_text (NFKC, casefold, whitespace collapsed); "
                  "the first row in the source is kept")


class SeedBuild(NamedTuple):
    table: pl.DataFrame  # lineage + instruction, input, output
    metrics: dict[str, Any]
    duplicates: pl.DataFrame  # one row per dropped duplicate: its source row and the row kept instead


def dedupe(table: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Drop rows whose instruction and input equal an earlier row's after :func:`normalize_text`; the first
    row in the source is kept. Returns (kept rows, one row per dropped duplicate naming the row kept)."""
    keyed = table.with_columns(_key=pl.struct("instruction", "input").map_elements(
        lambda r: make_id(normalize_text(r["instruction"]), normalize_text(r["input"])), return_dtype=pl.String))
    first = keyed.group_by("_key", maintain_order=True).agg(kept_row=pl.col(ROW).first(), kept_id=pl.col("id").first())
    dropped = keyed.join(first, on="_key").filter(pl.col(ROW) != pl.col("kept_row"))
    duplicates = dropped.select(source_row=pl.col(ROW), id=pl.col("id"), kept_row=pl.col("kept_row"),
                                kept_id=pl.col("kept_id"), reason=pl.lit(DUPLICATE_RULE))
    kept = keyed.filter(~pl.col(ROW).is_in(dropped[ROW].to_list())).drop("_key")
    return kept, duplicates


def hash_sample(table: pl.DataFrame, limit: int, seed: int, min_checked: int = 0) -> pl.DataFrame:
    """The ``limit`` items with the smallest hash of (seed, id), in source order. An item's rank depends on
    its content only, so a source that grows keeps every sampled item whose rank is still under the
    limit: growing 20k -> 25k items with limit 10k keeps about 80% of the sample (the most any uniform
    sample can), where a positional sample would keep about 40%.

    ``min_checked``: the ``min_checked`` items with an answer check (``answer_check`` not null) of smallest
    rank are taken first (fewer when the source has fewer), the rest of the ``limit`` by rank among all the
    others: a small sample that still holds answers that can be checked."""
    rank = pl.col("id").map_elements(lambda i: make_id(seed, i), return_dtype=pl.String)
    ranked = table.with_columns(_rank=rank).sort("_rank")
    first: list[int] = []
    if min_checked and "answer_check" in ranked.columns:
        first = ranked.filter(pl.col("answer_check").is_not_null()).head(min(min_checked, limit))[ROW].to_list()
    keep = first + ranked.filter(~pl.col(ROW).is_in(first)).head(limit - len(first))[ROW].to_list()
    return table.filter(pl.col(ROW).is_in(keep))


def read_checks(raw: list[dict] | pl.DataFrame, source: str) -> dict[int, str]:
    """{source row: canonical check JSON} of the records with a ``check`` field (docs/how-to/seeds.md "Checkable
    seeds"); each value validated by :func:`evolforge.steps.common.answer_check.parse_check`, a bad one refused
    naming the file and row."""
    if isinstance(raw, list):
        pairs = [(r[ROW], r.get(CHECK_FIELD)) for r in raw if r.get(CHECK_FIELD) is not None]
    elif CHECK_FIELD in raw.columns:
        pairs = [(r[ROW], r[CHECK_FIELD]) for r in raw.select(ROW, CHECK_FIELD).to_dicts()
                 if r[CHECK_FIELD] is not None]
    else:
        pairs = []
    out = {}
    for row, value in pairs:
        parsed = parse_check(value, source, row)
        if parsed is not None:
            out[row] = check_json(parsed)
    return out


def build_seed(source: str, *, fmt: str = "auto", fields: dict | None = None, config: str | None = None,
               split: str = "train", revision: str | None = None, limit: int | None = None, seed: int = 0,
               min_checked: int = 0) -> SeedBuild:
    """Read, map, check, id, dedupe and sample the seed set; each record's answer check (``check``) read into
    ``answer_check`` (null where it has none)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"params.yaml seed.limit: got {limit!r}; allowed: an integer >= 1, or null")
    raw = read_source(source, config, split, revision)
    if len(raw) == 0:
        raise DataError(source, "the source holds at least one record",
                        detail="it holds none (blank lines, a header only, or an empty table)")
    columns = sorted({k for r in raw for k in r}) if isinstance(raw, list) else list(raw.columns)
    require_mapped(fields, columns, source)
    checks = read_checks(raw, source)
    if fmt == "chat":  # conversations -> instruction / output records, then read as alpaca
        records = raw if isinstance(raw, list) else raw.to_dicts()
        raw, fmt, fields = chat_records(records, source), "alpaca", None
        columns = ["instruction", "output", ROW]
    if isinstance(raw, list):
        table = normalise_records(raw, field_map(columns, fmt, fields), source)
    else:
        table = normalise_table(raw, field_map(columns, fmt, fields), source)
    if table.height == 0:
        raise DataError(source, "the source holds at least one record",
                        detail="it holds none (a header only, or an empty table)")
    check_values(table, source)
    table = table.with_columns(answer_check=pl.Series([checks.get(r) for r in table[ROW].to_list()], dtype=pl.String))
    table = table.with_columns(id=pl.struct("instruction", "input").map_elements(
        lambda r: make_id(r["instruction"], r["input"]), return_dtype=pl.String))
    n_read = table.height
    table, duplicates = dedupe(table)
    n_unique = table.height
    if limit is not None and table.height > limit:
        table = hash_sample(table, limit, seed, min_checked)
    table = table.drop(ROW).with_columns(
        root_id=pl.col("id"), parent_id=pl.lit(None, pl.String), round=pl.lit(0, pl.Int32),
        method=pl.lit("seed"), status=pl.lit(SEED), failure_reason=pl.lit(None, pl.String),
    ).select(LINEAGE + ["instruction", "input", "output", "answer_check"])
    metrics = {"source": source, "source_sha256": source_digest(source), "revision": revision, "rows_read": n_read,
               "duplicates_removed": n_read - n_unique, "sampled_out": n_unique - table.height,
               "rows_written": table.height, "limit": limit,
               "with_check": {"read": len(checks), "written": int(table["answer_check"].is_not_null().sum())}}
    return SeedBuild(table, metrics, duplicates)
