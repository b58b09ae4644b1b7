"""The chosen rows with every column, in rank order, written a chunk at a time: ``items.parquet``,
``train.jsonl`` (TRL) and ``train_alpaca.json`` (Alpaca) of the selection's folder.

An external sort by rank: each input table is read ``chunk_rows`` rows at a time; its chosen rows, tagged
with their rank, are spilled to the bucket of their rank range (``chunk_rows / BUCKET_SHARE`` ranks per bucket)
in a scratch folder. Each bucket is then read back, its four tables' parts joined as the whole tables were
(:func:`join_metrics`: the items' columns, then judged's, scores', diversity's)
and sorted by rank: the chunks of the ranked selection, in order. Memory: one input chunk, one bucket (its
reads, joins and sort copy its rows about four times over, hence a quarter chunk), and the chosen ids with their
ranks (about 40 bytes per chosen item).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

import polars as pl

from evolforge.core.text import question_text
from evolforge.io import validation
from evolforge.io.records import TABLE
from evolforge.io.stream import checked_chunks, iter_chunks, read_spilled, sink_chunks, spilled, table_schema

RANK = "_rank"
BUCKET_SHARE = 4  # a bucket holds chunk_rows / BUCKET_SHARE ranks: read, joined and sorted, about a chunk's memory
CHECKS = validation.non_empty_text(["instruction", "output"])  # ids are unique: they were checked in the items


def join_metrics(items: pl.DataFrame, tables: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """``items`` with the columns of each per-item table (judged, scores, diversity; keyed by ``id``) joined on.
    Every item must have a row in every table: a missing one means that stage ran on other items."""
    for name, other in tables.items():
        other = other.drop("round", strict=False)
        unmatched = items.join(other, on="id", how="anti").height
        if unmatched:
            raise ValueError(f"{name}: {unmatched} items have no row; rerun that stage")
        items = items.join(other, on="id", how="left")
    return items


def conversational_row(prompt: str, completion: str) -> dict:
    """One TRL conversational prompt/completion record (TRL trains on the completion only by default)."""
    return {"prompt": [{"role": "user", "content": prompt}],
            "completion": [{"role": "assistant", "content": completion}]}


def to_trl(rows: pl.DataFrame) -> list[dict]:
    """The selected rows as TRL records, each with its item id."""
    return [{"id": r["id"], **conversational_row(question_text(r["instruction"], r["input"]), r["output"])}
            for r in rows.select("id", "instruction", "input", "output").iter_rows(named=True)]


def to_alpaca(rows: pl.DataFrame) -> list[dict]:
    return rows.select("instruction", "input", "output").to_dicts()


def _spill_buckets(paths: list[str], ranks: pl.DataFrame, chunk_rows: int, bucket_rows: int, work: Path) -> None:
    """Every chosen row of every table, with its rank, to ``work/bucket-B/T-C.parquet`` (table T, chunk C)."""
    for t, path in enumerate(paths):
        for c, chunk in enumerate(iter_chunks(path, chunk_rows)):
            hit = (chunk if t == 0 else chunk.drop("round", strict=False)).join(ranks, on="id", how="inner")
            bucket = (hit[RANK] // bucket_rows).alias("_bucket")
            for (b,), part in hit.with_columns(bucket).group_by("_bucket", maintain_order=True):
                folder = work / f"bucket-{b:06d}"
                folder.mkdir(exist_ok=True)
                part.drop("_bucket").write_parquet(folder / f"{t}-{c:06d}.parquet")


def _empty(paths: list[str]) -> list[pl.DataFrame]:
    """Each table's columns without rows (the per-item tables without ``round``), with the rank."""
    frames = [pl.DataFrame(schema=table_schema(path)) for path in paths]
    frames = [frames[0]] + [f.drop("round", strict=False) for f in frames[1:]]
    return [f.with_columns(pl.lit(None, dtype=pl.Int64).alias(RANK)) for f in frames]


def _joined(paths: list[str], frames: list[pl.DataFrame]) -> pl.DataFrame:
    """The items' part joined with the per-item tables' parts, as the whole tables were; sorted by rank."""
    return join_metrics(frames[0], {path: f.drop(RANK) for path, f in zip(paths[1:], frames[1:])}).sort(RANK)


def ranked_rows(paths: list[str], chosen: pl.Series, chunk_rows: int,
                work: Path) -> tuple[pl.Schema, Iterator[pl.DataFrame]]:
    """The rows of ``chosen`` (ids, in rank order) with every column of ``paths`` (items first, then the
    per-item tables), a bucket (``chunk_rows / BUCKET_SHARE`` rows) at a time in rank order; and their schema. ``work``
    is an empty scratch
    folder that must outlive the iterator."""
    ranks = pl.DataFrame({"id": chosen, RANK: pl.int_range(chosen.len(), dtype=pl.Int64, eager=True)})
    bucket_rows = max(1, chunk_rows // BUCKET_SHARE)
    _spill_buckets(paths, ranks, chunk_rows, bucket_rows, work)
    empty = _empty(paths)
    schema = _joined(paths, empty).drop(RANK).schema

    def chunks() -> Iterator[pl.DataFrame]:
        for b in range(-(-chosen.len() // bucket_rows)):
            folder = work / f"bucket-{b:06d}"
            frames = [pl.concat([pl.read_parquet(f) for f in sorted(folder.glob(f"{t}-*.parquet"))] or [empty[t]])
                      for t in range(len(paths))]
            yield _joined(paths, frames).drop(RANK)
            for file in folder.iterdir():
                file.unlink()
    return schema, chunks()


def _exported(chunks: Iterable[pl.DataFrame], folder: Path) -> Iterator[pl.DataFrame]:
    """``chunks``, passed on, with their rows written to ``train.jsonl`` and ``train_alpaca.json`` as they pass:
    the bytes :func:`evolforge.io.records.write_jsonl` and ``write_json`` write for the whole lists."""
    with open(folder / "train.jsonl", "w", encoding="utf-8") as trl, \
            open(folder / "train_alpaca.json", "w", encoding="utf-8") as alpaca:
        opening = "[\n"
        for chunk in chunks:
            for row in to_trl(chunk):
                trl.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
            for row in to_alpaca(chunk):
                # an element of write_json's indented list: the row's own lines, two spaces in
                text = json.dumps(row, indent=2, sort_keys=True, ensure_ascii=False, default=str)
                alpaca.write(opening + "\n".join("  " + line for line in text.split("\n")))
                opening = ",\n"
            yield chunk
        alpaca.write("[]\n" if opening == "[\n" else "\n]\n")


def write_selection(folder: Path, paths: list[str], chosen: pl.Series, chunk_rows: int, work: Path) -> None:
    """``items.parquet``, ``train.jsonl`` and ``train_alpaca.json`` of the selection ``chosen`` (ids in rank order)
    into ``folder``, streamed; the ranked chunks are spilled to ``work`` and sunk into the table from there."""
    schema, chunks = ranked_rows(paths, chosen, chunk_rows, work)
    ranked = work / "ranked"
    ranked.mkdir()
    files = spilled(_exported(checked_chunks(chunks, CHECKS, folder / TABLE), folder), ranked)
    sink_chunks(folder / TABLE, schema, read_spilled(files))
