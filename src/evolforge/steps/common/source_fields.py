"""A seed source's fields mapped to instruction / input / output and every value checked (docs/how-to/seeds.md).

Field presets (``seed.format``): ``alpaca`` and ``code_alpaca`` (instruction / input / output), ``gsm8k``
(question / answer), ``chat`` (OpenAI ``messages`` / ShareGPT ``conversations``: the first user turn is the
instruction, the first assistant turn after it the output), ``auto`` (picked from the columns present; never
chat). ``seed.fields`` overrides any mapping,
e.g. ``{instruction: prompt, output: completion}``.

Bad input is refused, never repaired: a number where text belongs, control characters (NUL, ANSI
escapes), bidirectional overrides (U+202E...), instructions of only invisible characters. Each refusal is a
:class:`DataError` naming the file, the row, the field and the rule. Row numbers are 1-based: line numbers
for JSONL, record positions otherwise.

>>> field_map(["question", "answer"])
{'instruction': 'question', 'input': None, 'output': 'answer'}
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any

import polars as pl

from evolforge.io import validation
from evolforge.io.jsonfiles import json_kind
from evolforge.io.validation import DataError
from evolforge.steps.common.source_read import ROW

PRESETS: dict[str, dict[str, str | None]] = {
    "alpaca": {"instruction": "instruction", "input": "input", "output": "output"},
    "code_alpaca": {"instruction": "instruction", "input": "input", "output": "output"},
    "gsm8k": {"instruction": "question", "input": None, "output": "answer"},
}
FIELDS = ("instruction", "input", "output")


def field_map(columns: list[str], fmt: str = "auto",
              fields: dict[str, str | None] | None = None) -> dict[str, str | None]:
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
        from evolforge.config.bounds import ParamsError

        raise ParamsError(["seed.fields.instruction: got null; allowed: the name of the source column that holds "
                           "the instruction"])
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
            raise DataError(file, f"field '{column}' (mapped to {target}) is present",
                            detail=f"columns: {present}{hint}")


def require_mapped(fields: dict[str, str | None] | None, columns: list[str], file: str) -> None:
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

    >>> chat_records([{"_row": 1, "conversations": [{"from": "human", "value": "Hi?"},
    ...                                              {"from": "gpt", "value": "Hello."}]}], "f")
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
                shown = (repr(value) if len(repr(value)) <= 40
                         else f"{repr(value)[:20]}... ({len(repr(value))} characters)")
                raise DataError(file, f"{target} is text", [row[ROW]],
                                f"field '{column}' holds {json_kind(value)}"
                                + (f" ({shown})" if isinstance(value, (int, float)) else ""))
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
            kind = ("lists" if isinstance(dtype, (pl.List, pl.Array)) else "records (struct/dict values)"
                    if isinstance(dtype, pl.Struct)
                    else "numbers" if dtype.is_numeric() else "true/false values" if dtype == pl.Boolean
                    else "binary data"
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
