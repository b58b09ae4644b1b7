"""Seed data: read a local file or a Hugging Face dataset, map its fields to instruction / input / output,
give every row a stable content-derived id, drop exact duplicates, and optionally take a seeded sample.

Field presets (``seed.format``): ``alpaca`` and ``code_alpaca`` (instruction / input / output), ``gsm8k``
(question / answer), ``auto`` (picked from the columns present). ``seed.fields`` overrides any mapping,
e.g. ``{instruction: prompt, output: completion}``.

Row numbers in error messages are 1-based: line numbers for JSONL, record positions otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from evolforge.core import validation
from evolforge.core.records import LINEAGE, SEED, make_id
from evolforge.core.validation import DataError

PRESETS: dict[str, dict[str, str | None]] = {
    "alpaca": {"instruction": "instruction", "input": "input", "output": "output"},
    "code_alpaca": {"instruction": "instruction", "input": "input", "output": "output"},
    "gsm8k": {"instruction": "question", "input": None, "output": "answer"},
}
LOCAL_FORMATS = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
ROW = "_row"  # source row number, kept until validation so errors can name it


def read_jsonl(path: Path) -> pl.DataFrame:
    rows = []
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(path, "text is UTF-8", [line_no], f"byte 0x{raw[err.start]:02x} at column {err.start + 1}") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(path, "each line is one JSON object", [line_no], err.msg) from None
            if not isinstance(obj, dict):
                raise DataError(path, "each line is one JSON object", [line_no], f"got {type(obj).__name__}")
            rows.append({**obj, ROW: line_no})
    if not rows:
        raise DataError(path, "the file holds at least one record")
    return pl.DataFrame(rows, infer_schema_length=None)


def read_json(path: Path) -> pl.DataFrame:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise DataError(path, "text is UTF-8", detail=f"byte at offset {err.start}") from None
    except json.JSONDecodeError as err:
        raise DataError(path, "the file is one JSON array of objects", detail=f"line {err.lineno}: {err.msg}") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list) or not data:
        raise DataError(path, "the file is one JSON array of objects")
    bad = [i for i, obj in enumerate(data, start=1) if not isinstance(obj, dict)]
    if bad:
        raise DataError(path, "every record is a JSON object", bad)
    return pl.DataFrame([{**obj, ROW: i} for i, obj in enumerate(data, start=1)], infer_schema_length=None)


def read_local(path: Path) -> pl.DataFrame:
    kind = LOCAL_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError(path, f"a local seed file is one of {sorted(LOCAL_FORMATS)}")
    if kind == "jsonl":
        return read_jsonl(path)
    if kind == "json":
        return read_json(path)
    try:
        table = pl.read_parquet(path) if kind == "parquet" else pl.read_csv(path, infer_schema_length=0)
    except Exception as err:  # polars raises several types for unreadable files
        raise DataError(path, f"the file is readable {kind}", detail=str(err).splitlines()[0]) from None
    return table.with_row_index(ROW, offset=1)


def read_hub(source: str, config: str | None, split: str) -> pl.DataFrame:
    import datasets

    try:
        ds = datasets.load_dataset(source, config, split=split)
    except Exception as err:  # missing dataset, offline hub, bad config or split
        raise DataError(
            source, "seed.source is an existing local file or a reachable Hugging Face dataset id",
            detail=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
        ) from None
    return pl.from_arrow(ds.data.table).with_row_index(ROW, offset=1)


def read_source(source: str, config: str | None = None, split: str = "train") -> pl.DataFrame:
    path = Path(source)
    if path.exists():
        return read_local(path)
    if path.suffix.lower() in LOCAL_FORMATS or source.startswith((".", "/")):
        raise DataError(source, "seed.source is an existing local file", detail="no such file")
    return read_hub(source, config, split)


def field_map(columns: list[str], fmt: str = "auto", fields: dict[str, str | None] | None = None) -> dict[str, str | None]:
    if fmt == "auto":
        fmt = "gsm8k" if {"question", "answer"} <= set(columns) and "instruction" not in columns else "alpaca"
    if fmt not in PRESETS:
        raise ValueError(f"params.yaml seed.format: {fmt!r} is not one of auto, {', '.join(PRESETS)}")
    return {**PRESETS[fmt], **(fields or {})}


def normalise(raw: pl.DataFrame, mapping: dict[str, str | None], file: str) -> pl.DataFrame:
    """Map source columns to instruction / input / output as strings (missing optional fields -> "")."""
    if not mapping.get("instruction"):
        raise ValueError("params.yaml seed.fields: 'instruction' must name a source column")
    out = {}
    for target, column in mapping.items():
        if column is None:
            out[target] = pl.lit("")
        elif column not in raw.columns:
            if target == "instruction":
                raise DataError(file, f"field '{column}' (mapped to instruction) is present", detail=f"columns: {[c for c in raw.columns if c != ROW]}")
            out[target] = pl.lit("")
        else:
            out[target] = pl.col(column).cast(pl.String).fill_null("") if target != "instruction" else pl.col(column).cast(pl.String)
    return raw.select(pl.col(ROW), **out)


def build_seed(source: str, *, fmt: str = "auto", fields: dict | None = None, config: str | None = None,
               split: str = "train", limit: int | None = None, seed: int = 0) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Read, map, validate, id, dedupe and sample the seed set. Returns (table, metrics)."""
    raw = read_source(source, config, split)
    table = normalise(raw, field_map(raw.columns, fmt, fields), source)
    # The rows a person must fix are named by their source row number.
    rows = table[ROW].to_list()
    try:
        validation.check(table, validation.non_empty_text(["instruction"]), source)
    except DataError as err:
        raise DataError(source, err.rule, [rows[r - 1] for r in err.rows], err.detail) from None
    table = table.with_columns(id=pl.struct("instruction", "input").map_elements(
        lambda r: make_id(r["instruction"], r["input"]), return_dtype=pl.String))
    n_read = table.height
    table = table.unique(subset="id", keep="first", maintain_order=True)
    n_unique = table.height
    if limit is not None and table.height > limit:
        # seeded sample, original order kept
        table = table.with_row_index("_pos").sample(n=limit, seed=seed).sort("_pos").drop("_pos")
    table = table.drop(ROW).with_columns(
        root_id=pl.col("id"), parent_id=pl.lit(None, pl.String), round=pl.lit(0, pl.Int32),
        method=pl.lit("seed"), status=pl.lit(SEED), failure_reason=pl.lit(None, pl.String),
    ).select(LINEAGE + ["instruction", "input", "output"])
    metrics = {"source": source, "rows_read": n_read, "duplicates_removed": n_read - n_unique,
               "rows_written": table.height, "limit": limit}
    return table, metrics
