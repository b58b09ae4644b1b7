"""Seed data: read a local file or a Hugging Face dataset, map its fields to instruction / input / output,
check every value, give every row a stable content-derived id, drop duplicates (recording which row was
kept) and optionally keep a hash-based sample. The rules are written for users in docs/seeds.md.

Field presets (``seed.format``): ``alpaca`` and ``code_alpaca`` (instruction / input / output), ``gsm8k``
(question / answer), ``chat`` (OpenAI ``messages`` / ShareGPT ``conversations``: the first user turn is the
instruction, the first assistant turn after it the output), ``auto`` (picked from the columns present; never
chat). ``seed.fields`` overrides any mapping,
e.g. ``{instruction: prompt, output: completion}``.

Bad input is refused, never repaired: a number where text belongs, control characters (NUL, ANSI
escapes), bidirectional overrides (U+202E...), instructions of only invisible characters, no rows at
all. Each refusal is a :class:`DataError` naming the file, the row, the field and the rule. Row numbers
are 1-based: line numbers for JSONL, record positions otherwise.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import stat
import unicodedata
from pathlib import Path
from typing import Any, NamedTuple

import polars as pl

from evolforge.core import validation
from evolforge.core.jsonfiles import json_kind, jsonl_objects, read_text
from evolforge.core.jsonfiles import read_json as read_json_file
from evolforge.core.records import LINEAGE, SEED, make_id
from evolforge.core.text import normalize_text
from evolforge.core.validation import DataError

PRESETS: dict[str, dict[str, str | None]] = {
    "alpaca": {"instruction": "instruction", "input": "input", "output": "output"},
    "code_alpaca": {"instruction": "instruction", "input": "input", "output": "output"},
    "gsm8k": {"instruction": "question", "input": None, "output": "answer"},
}
FIELDS = ("instruction", "input", "output")
LOCAL_FORMATS = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
ROW = "_row"  # source row number, kept until validation so errors can name it
DUPLICATE_RULE = "same instruction and input after normalize_text (NFKC, casefold, whitespace collapsed); the first row in the source is kept"


class SeedBuild(NamedTuple):
    table: pl.DataFrame  # lineage + instruction, input, output
    metrics: dict[str, Any]
    duplicates: pl.DataFrame  # one row per dropped duplicate: its source row and the row kept instead


# ---------------------------------------------------------------------------------------------------
# reading


def check_regular_file(path: Path) -> None:
    """A seed source is a regular file (a symlink to one is fine). Checked with ``os.stat`` before opening:
    opening a FIFO blocks forever, and a directory named ``x.jsonl`` gives an unhelpful error."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DataError(path, "seed.source is an existing local file",
                        detail="no such file" + (" (wildcards are not expanded: name one file)" if any(c in str(path) for c in "*?[") else "")) from None
    except OSError as err:
        raise DataError(path, "seed.source is a readable local file", detail=err.strerror or str(err)) from None
    except ValueError as err:  # a NUL character in the path
        raise DataError(ascii(str(path)), "seed.source is a path without NUL characters", detail=str(err)) from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
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
        raise DataError(path, "the file holds at least one record", detail="it holds only a byte order mark or blank lines")
    if "\r" in text and "\n" not in text:  # lines ended by a lone CR (old Mac editors): polars would read one line
        text = text.replace("\r", "\n")
    try:
        header = next(csv.reader(io.StringIO(text)), [])
    except csv.Error:
        header = []  # polars names the problem below
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:  # polars would rename the second copy and read the first: which one was meant cannot be told
        raise DataError(path, "column names are unique", detail=f"the header names {', '.join(repr(c) for c in twice)} more than once")
    try:
        return pl.read_csv(text.encode("utf-8"), infer_schema_length=0)
    except Exception as err:  # polars raises several types for unreadable files
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        try:
            rows = [next(i for i, cells in enumerate(csv.reader(io.StringIO(text))) if i and cells and len(cells) != len(header))]
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
            raise DataError(path, f"the file is readable {kind}", detail=str(err).splitlines()[0] if str(err) else type(err).__name__) from None
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


def is_local(source: str) -> bool:
    path = Path(source)
    try:
        on_disk = path.exists() or path.is_symlink()
    except (OSError, ValueError):  # a name too long, or holding NUL: never a hub id either; check_regular_file says why
        on_disk = True
    return on_disk or path.suffix.lower() in LOCAL_FORMATS or source.startswith((".", "/", "~"))


def read_source(source: str, config: str | None = None, split: str = "train", revision: str | None = None) -> list[dict] | pl.DataFrame:
    """JSON/JSONL give a list of records (each with its row number); other formats a table."""
    if is_local(source):
        return read_local(Path(source).expanduser())
    return read_hub(source, config, split, revision)


def source_digest(source: str) -> str | None:
    """sha256 of a local source file (recorded in the metrics; None for hub datasets)."""
    if not is_local(source):
        return None
    digest = hashlib.sha256()
    with open(Path(source).expanduser(), "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------
# mapping fields and checking values


def field_map(columns: list[str], fmt: str = "auto", fields: dict[str, str | None] | None = None) -> dict[str, str | None]:
    if fmt == "auto":
        fmt = "gsm8k" if {"question", "answer"} <= set(columns) and "instruction" not in columns else "alpaca"
    if fmt not in PRESETS:
        raise ValueError(f"params.yaml seed.format: {fmt!r} is not one of auto, {', '.join(PRESETS)}")
    return {**PRESETS[fmt], **(fields or {})}


def _loose(name: str) -> str:
    return "".join(name.split()).casefold().lstrip("\ufeff")


CHAT_COLUMNS = ("messages", "conversations", "conversation", "turns", "dialog", "dialogue")  # chat formats' record keys


def _require_instruction(mapping: dict[str, str | None], columns: list[str], file: str) -> None:
    """The instruction's column is present; and no mapped field is missing while a column that differs from
    its name only in case or spaces is there (`Output `): that field would silently be read as empty."""
    if not mapping.get("instruction"):
        from evolforge.core.params import ParamsError

        raise ParamsError(["seed.fields.instruction: got null; allowed: the name of the source column that holds the instruction"])
    present = [c for c in columns if c != ROW]
    for target in FIELDS:
        column = mapping.get(target)
        if not column or column in columns:
            continue
        near = [c for c in present if _loose(c) == _loose(column)]
        if near or target == "instruction":
            hint = (f"; the column {near[0]!r} differs only in case or spaces: rename it, or map it with "
                    f"seed.fields: {{{target}: {json.dumps(near[0])}}}") if near else ""
            chat = [c for c in present if c in CHAT_COLUMNS]
            if target == "instruction" and chat and not near:
                hint = (f"; {chat[0]!r} looks like a chat format (ShareGPT / OpenAI messages): set "
                        "seed.format: chat to read each record's first user turn as the instruction and the first "
                        "assistant turn as the output, or map existing columns with seed.fields")
            elif target == "instruction" and not near and "prompt" in present:
                pair = ", output: completion" if "completion" in present else ""
                hint = (f"; a prompt/completion file: map its columns with seed.fields: "
                        f"{{instruction: prompt{pair}}}")
            raise DataError(file, f"field '{column}' (mapped to {target}) is present", detail=f"columns: {present}{hint}")


def _require_mapped(fields: dict[str, str | None] | None, columns: list[str], file: str) -> None:
    """A column named in ``seed.fields`` is present: a format's own input / output columns may be absent
    (read as empty), but one the user named is meant to be there, and would otherwise be read as empty."""
    for target, column in (fields or {}).items():
        if column and target != "instruction" and column not in columns:  # instruction: checked with hints below
            present = [c for c in columns if c != ROW]
            near = [c for c in present if _loose(c) == _loose(column)]
            hint = f"; the column {near[0]!r} differs only in case or spaces" if near else ""
            raise DataError(file, f"field '{column}' (mapped to {target} by seed.fields) is present",
                            detail=f"columns: {present}{hint}")


USER_ROLES, ASSISTANT_ROLES = ("user", "human"), ("assistant", "gpt", "model", "bot")


def _turn(turn: Any) -> tuple[str | None, Any]:
    """(role, text) of one chat turn: OpenAI ``{role, content}`` or ShareGPT ``{from, value}``."""
    if not isinstance(turn, dict):
        return None, None
    role = turn.get("role", turn.get("from"))
    return (role.casefold() if isinstance(role, str) else None), turn.get("content", turn.get("value"))


def chat_records(rows: list[dict], file: str) -> list[dict]:
    """``seed.format: chat``: each record's conversation (the first of CHAT_COLUMNS it has) -> its first user turn
    as ``instruction`` and the first assistant turn after it as ``output`` (none: ""). System turns and later
    turns are not read. A record without a user turn is refused, naming its row.

    >>> chat_records([{"_row": 1, "conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]}], "f")
    [{'_row': 1, 'instruction': 'Hi?', 'output': 'Hello.'}]
    """
    out = []
    for row in rows:
        key = next((c for c in CHAT_COLUMNS if c in row), None)
        turns = row.get(key) if key else None
        if not isinstance(turns, list):
            fields = sorted(k for k in row if k != ROW)
            raise DataError(file, "a chat record holds a list of turns (seed.format: chat)", [row[ROW]],
                            f"no {' / '.join(CHAT_COLUMNS[:2])} list; its fields: {fields}")
        parsed = [_turn(t) for t in turns]
        first_user = next((i for i, (role, _) in enumerate(parsed) if role in USER_ROLES), None)
        if first_user is None:
            roles = [role for role, _ in parsed]
            raise DataError(file, "a chat record has a user turn (role user / from human)", [row[ROW]],
                            f"field '{key}' holds turns with roles {roles}")
        answer = next((text for role, text in parsed[first_user + 1:] if role in ASSISTANT_ROLES), None)
        out.append({ROW: row[ROW], "instruction": parsed[first_user][1], "output": answer})
    return out


def normalise_records(rows: list[dict], mapping: dict[str, str | None], file: str) -> pl.DataFrame:
    """JSON records -> instruction / input / output text, every value checked for its type first: a number
    or a list where text belongs is refused (never turned into text); null input/output count as ""."""
    columns = sorted({k for r in rows for k in r})
    _require_instruction(mapping, columns, file)
    out = {ROW: [], **{f: [] for f in FIELDS}}
    for row in rows:
        out[ROW].append(row[ROW])
        for target in FIELDS:
            column = mapping.get(target)
            value = row.get(column) if column else None
            if target == "instruction" and column not in row:
                raise DataError(file, f"field '{column}' (mapped to instruction) is present", [row[ROW]],
                                f"this row has no '{column}'; its fields: {sorted(k for k in row if k != ROW)}")
            if value is not None and not isinstance(value, str):
                shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:20]}... ({len(repr(value))} characters)"
                raise DataError(file, f"{target} is text", [row[ROW]],
                                f"field '{column}' holds {json_kind(value)}" + (f" ({shown})" if isinstance(value, (int, float)) else ""))
            if value is not None and not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as err:  # "\ud800" in JSON: half of a UTF-16 pair, no character
                    raise DataError(file, f"{target} is valid Unicode text", [row[ROW]],
                                    f"field '{column}': a lone surrogate U+{ord(value[err.start]):04X} at character "
                                    f"{err.start + 1} (a JSON \\u escape of half a character pair)") from None
            out[target].append(value if value is not None or target == "instruction" else "")
    return pl.DataFrame(out, schema={ROW: pl.Int64, **{f: pl.String for f in FIELDS}})


def normalise_table(raw: pl.DataFrame, mapping: dict[str, str | None], file: str) -> pl.DataFrame:
    """Parquet / CSV / hub tables -> instruction / input / output; a mapped column must hold text."""
    _require_instruction(mapping, raw.columns, file)
    out = {}
    for target in FIELDS:
        column = mapping.get(target)
        if column is None or column not in raw.columns:
            out[target] = pl.lit("", pl.String)
            continue
        dtype = raw.schema[column]
        if dtype == pl.Null:
            out[target] = pl.lit(None, pl.String) if target == "instruction" else pl.lit("", pl.String)
        elif dtype in (pl.String, pl.Categorical, pl.Enum) or isinstance(dtype, (pl.Categorical, pl.Enum)):
            value = pl.col(column).cast(pl.String)
            out[target] = value if target == "instruction" else value.fill_null("")
        else:
            first = raw.filter(pl.col(column).is_not_null())[ROW].head(1).to_list()
            kind = ("lists" if isinstance(dtype, (pl.List, pl.Array)) else "records (struct/dict values)" if isinstance(dtype, pl.Struct)
                    else "numbers" if dtype.is_numeric() else "true/false values" if dtype == pl.Boolean else "binary data"
                    if dtype == pl.Binary else f"{dtype} values")
            raise DataError(file, f"{target} is text", first, f"column '{column}' holds {kind} ({dtype}), not text")
    return raw.select(pl.col(ROW).cast(pl.Int64), **out)


def explain_characters(text: str, pattern: str) -> str:
    """Name the first offending character: 'U+202E RIGHT-TO-LEFT OVERRIDE at character 4'."""
    import re

    m = re.search(pattern, text)
    if not m:
        return ""
    c = m.group(0)
    return f"U+{ord(c):04X} {unicodedata.name(c, 'control character')} at character {m.start() + 1}"


def check_values(table: pl.DataFrame, file: str) -> None:
    """The value rules (Great Expectations), with row numbers of the source and the character named."""
    rules = (validation.non_empty_text(["instruction"]) + validation.visible_text(["instruction"])
             + validation.no_control_characters(list(FIELDS)) + validation.no_bidi_controls(list(FIELDS))
             + validation.no_tag_characters(list(FIELDS)))
    rows = table[ROW].to_list()
    try:
        validation.check(table.drop(ROW), rules, file)
    except DataError as err:
        detail = err.detail
        column = next((c for c in FIELDS if err.rule.startswith(c + " ")), None)
        pattern = {"control": validation.CONTROL_CHARACTERS, "bidirectional": validation.BIDI_CONTROLS,
                   "tag characters": validation.TAG_CHARACTERS}
        for word, regex in pattern.items():
            if word in err.rule and column and err.rows:
                detail = f"{column}: {explain_characters(table[column][err.rows[0] - 1], regex)}"
        raise DataError(file, err.rule, [rows[r - 1] for r in err.rows], detail) from None


# ---------------------------------------------------------------------------------------------------
# the seed set


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


def hash_sample(table: pl.DataFrame, limit: int, seed: int) -> pl.DataFrame:
    """The ``limit`` items with the smallest hash of (seed, id), in source order. An item's rank depends on
    its content only, so a source that grows keeps every sampled item whose rank is still under the
    limit: growing 20k -> 25k items with limit 10k keeps about 80% of the sample (the most any uniform
    sample can), where a positional sample would keep about 40%."""
    ranked = table.with_columns(_rank=pl.col("id").map_elements(lambda i: make_id(seed, i), return_dtype=pl.String))
    keep = ranked.sort("_rank").head(limit)[ROW].to_list()
    return table.filter(pl.col(ROW).is_in(keep))


def build_seed(source: str, *, fmt: str = "auto", fields: dict | None = None, config: str | None = None,
               split: str = "train", revision: str | None = None, limit: int | None = None, seed: int = 0) -> SeedBuild:
    """Read, map, check, id, dedupe and sample the seed set."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"params.yaml seed.limit: got {limit!r}; allowed: an integer >= 1, or null")
    raw = read_source(source, config, split, revision)
    if len(raw) == 0:
        raise DataError(source, "the source holds at least one record", detail="it holds none (blank lines, a header only, or an empty table)")
    columns = sorted({k for r in raw for k in r}) if isinstance(raw, list) else list(raw.columns)
    _require_mapped(fields, columns, source)
    if fmt == "chat":  # conversations -> instruction / output records, then read as alpaca
        records = raw if isinstance(raw, list) else raw.to_dicts()
        raw, fmt, fields = chat_records(records, source), "alpaca", None
        columns = ["instruction", "output", ROW]
    if isinstance(raw, list):
        table = normalise_records(raw, field_map(columns, fmt, fields), source)
    else:
        table = normalise_table(raw, field_map(columns, fmt, fields), source)
    if table.height == 0:
        raise DataError(source, "the source holds at least one record", detail="it holds none (a header only, or an empty table)")
    check_values(table, source)
    table = table.with_columns(id=pl.struct("instruction", "input").map_elements(
        lambda r: make_id(r["instruction"], r["input"]), return_dtype=pl.String))
    n_read = table.height
    table, duplicates = dedupe(table)
    n_unique = table.height
    if limit is not None and table.height > limit:
        table = hash_sample(table, limit, seed)
    table = table.drop(ROW).with_columns(
        root_id=pl.col("id"), parent_id=pl.lit(None, pl.String), round=pl.lit(0, pl.Int32),
        method=pl.lit("seed"), status=pl.lit(SEED), failure_reason=pl.lit(None, pl.String),
    ).select(LINEAGE + ["instruction", "input", "output"])
    metrics = {"source": source, "source_sha256": source_digest(source), "revision": revision, "rows_read": n_read,
               "duplicates_removed": n_read - n_unique, "sampled_out": n_unique - table.height,
               "rows_written": table.height, "limit": limit}
    return SeedBuild(table, metrics, duplicates)
