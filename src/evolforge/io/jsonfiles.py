"""Reading text, JSON and JSONL files that people write or edit: every way a file can be wrong is one
``DataError`` naming the file, the line (as the row, for JSONL) and the rule, never a decoder's traceback.

Used for the seed stage's JSON and JSONL sources, the seed constraints of AutoIF, and the JSON and JSONL
files stages hand each other (``models/identity.json``, ``metrics/pool.json``, ``train.jsonl``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

from evolforge.io.validation import DataError

JSONL_RULE = "each line is one JSON object"

# what a file named .jsonl/.json/.csv really is, when it is not UTF-8 and its first bytes say so
_MAGIC = ((b"\xff\xfe\x00\x00", "UTF-32 text"), (b"\x00\x00\xfe\xff", "UTF-32 text"), (b"\xff\xfe", "UTF-16 text"),
          (b"\xfe\xff", "UTF-16 text"), (b"\x1f\x8b", "gzip-compressed"), (b"PK\x03\x04", "a zip archive"),
          (b"PAR1", "Parquet"), (b"\x28\xb5\x2f\xfd", "zstd-compressed"), (b"BZh", "bzip2-compressed"))


def read_text(path: Path, lines_are_rows: bool = False) -> str:
    """The file as UTF-8 text (a leading byte order mark dropped). Anything else is refused with the line
    and byte (as the row for JSONL), and what the file is when its first bytes tell: UTF-16, gzip..."""
    data = path.read_bytes()
    head = data[:4096]
    # named only for a file refused anyway
    kind = next((kind for magic, kind in _MAGIC if data.startswith(magic)), None)
    if head.count(b"\x00") * 4 >= len(head) > 0:  # valid UTF-8, but no text file is a quarter NUL bytes
        raise DataError(path, "text is UTF-8", detail=f"the file is {kind} (its first bytes say so); save or convert "
                                                      f"it as UTF-8 text" if kind else
                        "every other byte is NUL: the file looks like UTF-16 text without a byte order mark; "
                        "save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        if kind:
            raise DataError(path, "text is UTF-8", detail=f"the file is {kind} (its first bytes say so); save or "
                                                          f"convert it as UTF-8 text") from None
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise DataError(path, "text is UTF-8", [line] if lines_are_rows else None,
                        (""
                         if lines_are_rows else f"line {line}, ") + f"byte 0x{data[err.start]:02x} at column {column} "
                        "(Latin-1 or Windows-1252 text? save it as UTF-8)") from None


def json_kind(value: Any) -> str:
    """A JSON value's kind in words: 'a list', 'null', 'text'..."""
    return {bool: "true/false", int: "a number", float: "a number", list: "a list", dict: "an object",
            type(None): "null", str: "text"}.get(type(value), type(value).__name__)


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """json.loads keeps the last of two equal keys without a word; which one was meant cannot be told."""
    obj = dict(pairs)
    if len(obj) < len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise _DuplicateKey(twice)
    return obj


def parse_json(text: str, file: str | Path, rule: str, rows: list[int] | None = None) -> Any:
    """json.loads, with every way it can fail turned into a DataError naming ``rule`` (and the line)."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        where = f"column {err.colno}" if rows else f"line {err.lineno}, column {err.colno}"
        raise DataError(file, rule, rows, f"{where}: {err.msg}") from None
    except _DuplicateKey as err:
        raise DataError(file, "each JSON object names a key once", rows,
                        f"key {json.dumps(err.args[0], ensure_ascii=True)} appears twice in one object (JSON readers "
                        f"would silently keep the last)") from None
    except RecursionError:
        raise DataError(file, rule, rows, "values nested too deeply to read (thousands of levels)") from None
    except ValueError as err:  # an integer of more than 4300 digits
        raise DataError(file, rule, rows, str(err).split(";")[0]) from None


def read_json(path: str | Path, rule: str = "valid JSON") -> Any:
    """A JSON file's content."""
    path = Path(path)
    return parse_json(read_text(path), path, rule)


def read_jsonl(path: str | Path) -> list[dict]:
    """The JSON objects of a JSONL file, blank lines skipped (:func:`jsonl_objects` without the numbers)."""
    return [obj for _, obj in jsonl_objects(path)]


def jsonl_objects(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file."""
    path = Path(path)
    # LF, CRLF and a lone CR (old Mac editors) end a line: a raw CR or LF is invalid inside a JSON string, so
    # no value is cut. Not str.splitlines: U+0085, U+2028 and U+2029 may stand raw inside a JSON string.
    for line_no, line in enumerate(re.split("\r\n|\r|\n", read_text(path, lines_are_rows=True)), start=1):
        if not line.strip():  # blank lines separate nothing
            continue
        if line.startswith("\ufeff"):
            raise DataError(path, JSONL_RULE, [line_no],
                            "the line starts with a byte order mark (files joined together?); remove it")
        obj = parse_json(line, path, JSONL_RULE, [line_no])
        if not isinstance(obj, dict):
            raise DataError(path, JSONL_RULE, [line_no], f"got {json_kind(obj)}")
        yield line_no, obj
