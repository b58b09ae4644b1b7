"""Reading a seed source (``seed.source``): a local JSONL, JSON, Parquet or CSV file, or a Hugging Face dataset,
every record numbered (:data:`ROW`) so that a refusal can name its row. What is not a readable regular file,
or not what its suffix says, is a :class:`DataError` naming the file (docs/how-to/seeds.md).

>>> is_local_source("data/seeds/demo.jsonl"), is_local_source("tatsu-lab/alpaca")
(True, False)
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import stat
from pathlib import Path

import polars as pl

from evolforge.io.jsonfiles import json_kind, jsonl_objects, read_text
from evolforge.io.jsonfiles import read_json as read_json_file
from evolforge.io.validation import DataError

LOCAL_FORMATS = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
ROW = "_row"  # source row number, kept until validation so errors can name it


def check_regular_file(path: Path) -> None:
    """A seed source is a regular file (a symlink to one is fine). Checked with ``os.stat`` before opening:
    opening a FIFO blocks forever, and a directory named ``x.jsonl`` gives an unhelpful error."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DataError(path, "seed.source is an existing local file",
                        detail="no such file" + (" (wildcards are not expanded: name one file)"
                                                 if any(c in str(path) for c in "*?[") else "")) from None
    except OSError as err:
        raise DataError(path, "seed.source is a readable local file", detail=err.strerror or str(err)) from None
    except ValueError as err:  # a NUL character in the path
        raise DataError(ascii(str(path)), "seed.source is a path without NUL characters", detail=str(err)) from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode)
                or stat.S_ISBLK(st.st_mode)
                else "not a regular file")
        raise DataError(path, "seed.source is a regular file", detail=f"it is {kind}")
    if st.st_size == 0:
        raise DataError(path, "the file holds at least one record", detail="the file is empty")
    if not os.access(path, os.R_OK):
        raise DataError(path, "seed.source is a readable local file", detail="permission denied")


def read_jsonl(path: Path) -> list[dict]:
    return [{**obj, ROW: line_no} for line_no, obj in jsonl_objects(path)]


def read_json(path: Path) -> list[dict]:
    data = read_json_file(path, "the file is one JSON array of objects")
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(path, "the file is one JSON array of objects", detail=f"got {json_kind(data)}")
    bad = [i for i, obj in enumerate(data, start=1) if not isinstance(obj, dict)]
    if bad:
        raise DataError(path, "every record is a JSON object", bad)
    return [{**obj, ROW: i} for i, obj in enumerate(data, start=1)]


def read_csv(path: Path) -> pl.DataFrame:
    """Every cell read as text (a CSV cell is text; "42" stays "42"). The bytes are checked as UTF-8 first:
    a lossy read would silently put U+FFFD where a Latin-1 "é" stood."""
    text = read_text(path)
    if not text.strip():
        raise DataError(path, "the file holds at least one record",
                        detail="it holds only a byte order mark or blank lines")
    if "\r" in text and "\n" not in text:  # lines ended by a lone CR (old Mac editors): polars would read one line
        text = text.replace("\r", "\n")
    try:
        header = next(csv.reader(io.StringIO(text)), [])
    except csv.Error:
        header = []  # polars names the problem below
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:  # polars would rename the second copy and read the first: which one was meant cannot be told
        raise DataError(path, "column names are unique",
                        detail=f"the header names {', '.join(repr(c) for c in twice)} more than once")
    try:
        return pl.read_csv(text.encode("utf-8"), infer_schema_length=0)
    except Exception as err:  # polars raises several types for unreadable files
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        try:
            rows = ([next(i for i, cells in enumerate(csv.reader(io.StringIO(text))) if i and cells
                          and len(cells) != len(header))])
        except (StopIteration, csv.Error):
            rows = []
        if rows and "fields" in detail:
            detail = f"it has a different number of fields than the header's {len(header)} ({detail})"
        else:
            rows = []
        raise DataError(path, "the file is readable csv", rows, detail) from None


def read_table_file(path: Path, kind: str) -> pl.DataFrame:
    if kind == "csv":
        table = read_csv(path)
    else:
        try:
            table = pl.read_parquet(path)
        except Exception as err:  # polars raises several types for unreadable files
            raise DataError(path, f"the file is readable {kind}",
                            detail=str(err).splitlines()[0] if str(err) else type(err).__name__) from None
    return numbered(table, path)


def numbered(table: pl.DataFrame, source: str | Path) -> pl.DataFrame:
    """``table`` with its row numbers in :data:`ROW` (a column of that name in the source is refused)."""
    if ROW in table.columns:
        raise DataError(source, f"no column is named {ROW!r}", detail="evolforge numbers the source's rows in a "
                        "column of that name; rename the column")
    return table.with_row_index(ROW, offset=1)


def read_local(path: Path) -> list[dict] | pl.DataFrame:
    kind = LOCAL_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError(path, f"a local seed file is one of {sorted(LOCAL_FORMATS)}")
    check_regular_file(path)
    if kind == "jsonl":
        return read_jsonl(path)
    if kind == "json":
        return read_json(path)
    return read_table_file(path, kind)


def read_hub(source: str, config: str | None, split: str, revision: str | None) -> pl.DataFrame:
    import datasets

    try:
        ds = datasets.load_dataset(source, config, split=split, revision=revision)
    except Exception as err:  # missing dataset, offline hub, bad config, split or revision
        raise DataError(
            source, "seed.source is an existing local file or a reachable Hugging Face dataset id",
            detail=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
        ) from None
    return numbered(pl.from_arrow(ds.data.table), source)


def is_local_source(source: str) -> bool:
    """A seed source that is a file (on disk, or named like one) rather than a hub dataset id."""
    path = Path(source)
    try:
        on_disk = path.exists() or path.is_symlink()
    except (OSError, ValueError):  # a name too long, or holding NUL: never a hub id either; check_regular_file says why
        on_disk = True
    return on_disk or path.suffix.lower() in LOCAL_FORMATS or source.startswith((".", "/", "~"))


def read_source(source: str, config: str | None = None, split: str = "train",
                revision: str | None = None) -> list[dict] | pl.DataFrame:
    """JSON/JSONL give a list of records (each with its row number); other formats a table."""
    if is_local_source(source):
        return read_local(Path(source).expanduser())
    return read_hub(source, config, split, revision)


def source_digest(source: str) -> str | None:
    """sha256 of a local source file (recorded in the metrics; None for hub datasets)."""
    if not is_local_source(source):
        return None
    digest = hashlib.sha256()
    with open(Path(source).expanduser(), "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
