"""Chunked Parquet I/O: read a stage's table a chunk of rows at a time and write one from a stream of chunks,
so a stage's peak memory follows the chunk size, not the number of items.

Writing goes through polars' streaming Parquet sink over a Python source of chunks
(:func:`sink_chunks`): the file it writes is byte for byte the one :func:`evolforge.io.records.write_table`
writes for the concatenated chunks (same writer, row groups of ``ROW_GROUP_ROWS`` rows whatever the chunks),
so streaming a stage, or its chunk size, changes none of its outputs' hashes. ``data.chunk_rows``
(``docs/how-to/scale.md``) sets the chunk size.

A loop over chunks drops its chunk before it asks for the next one (``del`` after a ``yield``, or a consumer
that keeps nothing): a ``for`` variable otherwise still holds chunk k while chunk k + 1 is read, two chunks
where one is needed.
"""

from __future__ import annotations

from collections import deque
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import polars as pl
from polars.io.plugins import register_io_source

from evolforge.io.records import ROW_GROUP_ROWS, TABLE, atomic_dir, write_json, write_jsonl
from evolforge.io.validation import DataError, Rule, check, unique

Chunks = Callable[[], Iterable[pl.DataFrame]]  # called once per pass: a fresh iterable of chunks each time


def table_file(path: str | Path) -> Path:
    """The Parquet file of a stage output (its folder or the file itself); a clear error when absent."""
    path = Path(path)
    file = path / TABLE if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"{file}: no such artifact; has the stage that writes it run?")
    return file


def _unreadable(file: Path, err: Exception) -> DataError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return DataError(file, "a readable Parquet table", detail=f"{first}; rerun the stage that writes it "
                     "(`dvc repro`), or `dvc checkout` to restore the recorded version")


def table_schema(path: str | Path) -> pl.Schema:
    """Column names and types of a stage's table, read from the file's footer only."""
    file = table_file(path)
    try:
        return pl.scan_parquet(file).collect_schema()
    except (pl.exceptions.PolarsError, OSError) as err:
        raise _unreadable(file, err) from None


def iter_chunks(path: str | Path, chunk_rows: int, columns: list[str] | None = None) -> Iterator[pl.DataFrame]:
    """The rows of a stage's table, ``chunk_rows`` at a time, in file order (``columns`` only, when given)."""
    if not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive number of rows, got {chunk_rows!r}")
    file = table_file(path)
    scan = pl.scan_parquet(file)
    if columns is not None:
        scan = scan.select(columns)
    # one slice query per chunk: polars reads only the row groups it overlaps. (collect_batches reads ahead
    # of a slow consumer without bound: the whole table ends up in memory while a chunk is being worked on.)
    try:
        total = pl.scan_parquet(file).select(pl.len()).collect().item()
        for start in range(0, total, chunk_rows):
            yield scan.slice(start, chunk_rows).collect()
    except (pl.exceptions.PolarsError, OSError) as err:
        raise _unreadable(file, err) from None


def sink_chunks(file: str | Path, schema: pl.Schema | dict[str, pl.DataType], chunks: Iterable[pl.DataFrame]) -> None:
    """Write ``chunks`` (frames of ``schema``) as one Parquet file, streaming: the same bytes as
    ``write_table(pl.concat(chunks), file)`` for any split into chunks (the row groups are
    ``ROW_GROUP_ROWS`` rows, never the chunks), without ever holding the concatenation."""
    schema = pl.Schema(schema)

    def source(with_columns: list[str] | None, predicate: Any,
               n_rows: int | None, batch_size: int | None) -> Iterator[pl.DataFrame]:
        for part in chunks:  # the sink asks for every column and row: no projection or filter to apply
            if part.height:
                yield part.select(list(schema)).cast(dict(schema))
            del part  # not held while the next chunk is read (module docstring)

    register_io_source(source, schema=schema).sink_parquet(file, row_group_size=ROW_GROUP_ROWS)


def spilled(chunks: Iterable[pl.DataFrame], work: str | Path) -> list[Path]:
    """Produce ``chunks`` here, on the calling thread, each written to a Parquet file in ``work``; the files in
    order. For chunks that call a model or the call cache: polars runs a sink's Python source on a thread of
    its own, where a SQLite connection (and a progress bar, a signal) of the caller's does not work; the
    files are then read back one at a time into the sink (:func:`read_spilled`)."""
    files = []
    for k, chunk in enumerate(chunks):
        files.append(Path(work) / f"part-{k:06d}.parquet")
        chunk.write_parquet(files[-1])
        del chunk  # not held while the next one is produced
    return files


def read_spilled(files: list[Path]) -> Iterator[pl.DataFrame]:
    """The chunks :func:`spilled` wrote, one at a time, each file removed once read."""
    for file in files:
        chunk = pl.read_parquet(file)
        file.unlink()
        yield chunk
        del chunk  # not held while the next one is read


def write_output_chunks(out_dir: str | Path, tables: dict[str, tuple[pl.Schema, Iterable[pl.DataFrame]]],
                        meta: dict | None = None, extra: dict[str, Any] | None = None) -> None:
    """:func:`evolforge.io.records.write_output` for streamed tables: each ``name -> (schema, chunks)`` is
    sunk into a temporary folder that replaces ``out_dir`` whole only when every file is written."""
    with atomic_dir(out_dir) as tmp:
        for name, (schema, chunks) in tables.items():
            sink_chunks(tmp / name, schema, chunks)
        write_json(tmp / "meta.json", meta or {})
        for name, data in (extra or {}).items():
            (write_jsonl if name.endswith(".jsonl") else write_json)(tmp / name, data)


def checked_chunks(chunks: Iterable[pl.DataFrame], rules: list[Rule], file: str | Path) -> Iterator[pl.DataFrame]:
    """``chunks``, each checked against ``rules`` (:func:`evolforge.io.validation.check`) as it passes: row
    numbers in an error count from the first chunk's first row and name ``file``."""
    lo = 0
    for chunk in chunks:
        try:
            check(chunk, rules, file)
        except DataError as err:
            raise DataError(file, err.rule, [r + lo for r in err.rows], err.detail) from None
        lo += chunk.height
        yield chunk
        del chunk  # not held while the next one is read


def check_unique(table: pl.LazyFrame, column: str, file: str | Path) -> None:
    """:func:`evolforge.io.validation.unique` over ``table``'s ``column``; rows in the error counted from 1, as
    in ``check()``, naming ``file``.

    Memory: 8 bytes per row, not the values. A streaming query hashes the column to 64 bits, the hashes are
    sorted, and only the rows whose hash repeats are read back and compared by value (equal values have equal
    hashes, so every repeat is among them; a hash collision of two different values is then no error)."""
    ordered = table.select(pl.col(column).hash(seed=0).sort()).collect(engine="streaming").to_series().to_numpy()
    repeats = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    del ordered
    if not repeats.size:
        return
    candidates = (table.select(column).with_row_index("row")
                  .filter(pl.col(column).hash(seed=0).is_in(pl.lit(pl.Series(repeats, dtype=pl.UInt64)).implode()))
                  .collect(engine="streaming"))
    repeated = candidates.filter(pl.col(column).is_duplicated()).head(10)
    if repeated.height:
        raise DataError(file, unique(column)[0].words, (repeated["row"] + 1).to_list(),
                        detail=f"{column} {repeated[column][0]!r} appears more than once")


def check_chunks(path: str | Path, rules: list[Rule], chunk_rows: int) -> None:
    """:func:`evolforge.io.validation.check` of a whole table, a chunk at a time: row numbers in the error
    count from the table's first row; a uniqueness rule is checked over the whole column (one streaming
    query over that column alone)."""
    file = table_file(path)
    unique_rules = [r for r in rules if r.expectation == "ExpectColumnValuesToBeUnique"]
    empty = pl.DataFrame(schema=table_schema(file))  # a table without rows still has its columns checked
    deque(checked_chunks(chain([empty], iter_chunks(file, chunk_rows)),
                         [r for r in rules if r not in unique_rules], file),
          maxlen=0)  # consumed without holding a chunk while the next is read
    for rule in unique_rules:
        check_unique(pl.scan_parquet(file), rule.kwargs["column"], file)
