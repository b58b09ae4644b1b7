"""The selection as the Hugging Face Hub lays out a dataset: ``data/train-XXXXX-of-YYYYY.parquet`` shards of the
published columns (lineage, text, chat messages, scores), and their fingerprint. The dataset card
(:mod:`evolforge.steps.select.card`) describes them and points ``datasets`` at them."""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Iterator

import polars as pl

from evolforge.core.text import question_text
from evolforge.io.records import write_table
from evolforge.io.stream import sink_chunks
from evolforge.steps.common.verification import COLUMNS as VERIFY_COLUMNS

SHARD_ROWS = 50_000  # rows per Parquet shard (a few hundred MB at most for long responses)
COLUMNS = ["id", "root_id", "parent_id", "round", "method", "instruction", "input", "output", "difficulty_level",
           "difficulty_score", "ifd", "ic_ifd", "mnd", *VERIFY_COLUMNS]


def hub_rows(selected: pl.DataFrame) -> pl.DataFrame:
    """The columns published: lineage, text, chat messages and the scores the selection has."""
    cols = [c for c in COLUMNS if c in selected.columns]
    messages = [[{"role": "user", "content": question_text(r["instruction"], r["input"] or "")},
                 {"role": "assistant", "content": r["output"]}]
                for r in selected.select("instruction", "input", "output").iter_rows(named=True)]
    return selected.select(cols).with_columns(messages=pl.Series(messages))


def _hub_chunks(table: Path, start: int, rows: int, chunk_rows: int) -> Iterator[pl.DataFrame]:
    """The hub rows of rows ``start`` to ``start + rows`` of ``table``, ``chunk_rows`` at a time."""
    scan = pl.scan_parquet(table)
    for lo in range(start, start + rows, chunk_rows):
        yield hub_rows(scan.slice(lo, min(chunk_rows, start + rows - lo)).collect())


def write_shards(table: Path, folder: Path, chunk_rows: int) -> list[str]:
    """``data/train-XXXXX-of-YYYYY.parquet`` files (the Hub's naming) of the hub rows of ``table`` (the selection's
    Parquet file, read ``chunk_rows`` rows at a time), replacing any earlier ones."""
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    for old in data.glob("train-*.parquet"):
        old.unlink()
    total = pl.scan_parquet(table).select(pl.len()).collect().item()
    n = max(1, math.ceil(total / SHARD_ROWS))
    schema = hub_rows(pl.read_parquet(table, n_rows=1)).schema
    names = []
    for i in range(n):
        name = f"train-{i:05d}-of-{n:05d}.parquet"
        tmp = data / f".{name}.tmp-{os.getpid()}"
        if total:
            sink_chunks(tmp, schema,
                        _hub_chunks(table, i * SHARD_ROWS, min(SHARD_ROWS, total - i * SHARD_ROWS), chunk_rows))
        else:  # no rows: the columns alone, as hub_rows gives them for an empty table
            write_table(hub_rows(pl.read_parquet(table, n_rows=0)), tmp)
        os.replace(tmp, data / name)
        names.append(f"data/{name}")
    return names


def shards_fingerprint(folder: Path, names: list[str]) -> str:
    """sha256 of the shards' bytes, in name order (first 16 hex digits): the version's fingerprint."""
    digest = hashlib.sha256()
    for name in names:
        with open(folder / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]
