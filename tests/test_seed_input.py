"""Bad seed files and seed params, as a careless or hostile user makes them: each gets one message naming
the file, the row, the field and the rule, a non-zero exit, no traceback and no output. Also: what is
accepted (BOM, CRLF, tabs, right-to-left marks), duplicates recorded, and a sample that survives growth."""

from __future__ import annotations

import json
import os
import runpy
import sys

import polars as pl
import pytest

from evolforge.steps.common.source import build_seed, hash_sample
from evolforge.io.records import make_id, read_table


def jsonl(*rows) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def parquet(tmp_path, frame: pl.DataFrame):
    path = tmp_path / "seeds.parquet"
    frame.write_parquet(path)
    return path


OK = {"instruction": "Add 2 and 3.", "input": "", "output": "5"}

# name -> (file name, how to make it, expected message parts)
BAD_FILES = {
    "empty_file": ("s.jsonl", b"", ["the file holds at least one record", "the file is empty"]),
    "blank_lines_only": ("s.jsonl", b"\n\n  \n", ["the source holds at least one record"]),
    "header_only_csv": ("s.csv", b"instruction,input,output\n", ["the source holds at least one record"]),
    "number_as_instruction": ("s.jsonl", jsonl(OK, {"instruction": 42}), ["row 2:", "rule 'instruction is text'", "field 'instruction' holds a number (42)"]),
    "list_as_input": ("s.jsonl", jsonl(OK, OK | {"input": ["a", "b"]}), ["row 2:", "rule 'input is text'", "holds a list"]),
    "object_as_output": ("s.jsonl", jsonl({"instruction": "x", "output": {"a": 1}}), ["row 1:", "rule 'output is text'", "holds an object"]),
    "bool_as_instruction": ("s.jsonl", jsonl({"instruction": True}), ["rule 'instruction is text'", "true/false"]),
    "nul_byte": ("s.jsonl", jsonl(OK, {"instruction": "Add\x002 and 3"}), ["row 2:", "no control characters", "U+0000", "at character 4"]),
    "ansi_escape": ("s.jsonl", jsonl({"instruction": "\x1b[31mred\x1b[0m text"}), ["row 1:", "no control characters", "U+001B"]),
    "bidi_override": ("s.jsonl", jsonl(OK, OK, {"instruction": "Sort \u202eeman\u202c the list"}), ["row 3:", "bidirectional", "U+202E RIGHT-TO-LEFT OVERRIDE"]),
    "bidi_in_output": ("s.jsonl", jsonl(OK | {"output": "ok \u2066x\u2069"}), ["row 1:", "output holds no bidirectional", "U+2066"]),
    "zero_width_only": ("s.jsonl", jsonl(OK, {"instruction": "\u200b\u200b\u2060"}), ["row 2:", "instruction has a visible character"]),
    "whitespace_only": ("s.jsonl", jsonl({"instruction": " \t "}), ["row 1:", "instruction is non-empty text"]),
    "null_instruction": ("s.jsonl", jsonl(OK, {"instruction": None}), ["row 2:", "instruction is not null"]),
    "not_an_object": ("s.jsonl", b'{"instruction": "ok"}\n[1, 2]\n', ["row 2:", "each line is one JSON object", "got a list"]),
    "json_not_array": ("s.json", b'{"instruction": "ok"}', ["the file is one JSON array of objects", "got an object"]),
    "unknown_extension": ("s.txt", b"Add 2 and 3.\n", ["a local seed file is one of"]),
    "missing_file": ("absent.jsonl", None, ["seed.source is an existing local file", "no such file"]),
}


def make_source(tmp_path, case: str):
    name, data, expected = BAD_FILES[case]
    path = tmp_path / name
    if data is not None:
        path.write_bytes(data)
    return path, expected


def run_seed_stage(repo, tmp_path, params: dict, capsys) -> tuple[int, str]:
    """The stage script as `dvc repro` runs it (its __main__, through run_stage), in this process."""
    params_file = tmp_path / "params.yaml"
    params_file.write_text(json.dumps(params), encoding="utf-8")
    argv = sys.argv
    sys.argv = [str(repo / "stages/seed.py"), "--params", str(params_file), "--out", str(tmp_path / "out/seed"),
                "--metrics", str(tmp_path / "out/seed.json")]
    try:
        with pytest.raises(SystemExit) as exit_:
            runpy.run_path(str(repo / "stages/seed.py"), run_name="__main__")
            raise SystemExit(0)
    finally:
        sys.argv = argv
    return exit_.value.code, capsys.readouterr().err


def assert_refused(code: int, err: str, tmp_path, expected: list[str]) -> None:
    assert code not in (0, None)
    assert "Traceback" not in err and err.count("\n") <= 3, err
    for part in expected:
        assert part in err, err
    out = tmp_path / "out"
    assert not out.exists() or list(out.iterdir()) == []  # no output, no temporary folder


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_seed_file_is_refused_clearly(repo, tmp_path, capsys, case):
    path, expected = make_source(tmp_path, case)
    code, err = run_seed_stage(repo, tmp_path, {"seed": {"source": str(path)}}, capsys)
    assert_refused(code, err, tmp_path, expected + [str(path)])


BAD_TABLES = {
    "list_column": (pl.DataFrame({"instruction": [["a"], ["b"]]}), ["instruction is text", "holds lists"]),
    "struct_column": (pl.DataFrame({"instruction": ["a", "b"], "output": [{"x": 1}, {"x": 2}]}), ["output is text", "records (struct/dict values)"]),
    "int_column": (pl.DataFrame({"instruction": [1, 2]}), ["instruction is text", "holds numbers"]),
    "empty_table": (pl.DataFrame({"instruction": []}, schema={"instruction": pl.String}), ["the source holds at least one record"]),
}


@pytest.mark.parametrize("case", sorted(BAD_TABLES))
def test_bad_parquet_values_are_named(repo, tmp_path, capsys, case):
    frame, expected = BAD_TABLES[case]
    path = parquet(tmp_path, frame)
    code, err = run_seed_stage(repo, tmp_path, {"seed": {"source": str(path)}}, capsys)
    assert_refused(code, err, tmp_path, expected)


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_a_source_that_is_not_a_regular_file_is_refused_without_opening_it(repo, tmp_path, capsys, kind):
    path = tmp_path / "x.jsonl"
    if kind == "directory":
        path.mkdir()
    else:
        os.mkfifo(path)  # opening it would block forever
    code, err = run_seed_stage(repo, tmp_path, {"seed": {"source": str(path)}}, capsys)
    assert_refused(code, err, tmp_path, ["seed.source is a regular file", "a directory" if kind == "directory" else "a FIFO"])


@pytest.mark.parametrize("seed_params, expected", [
    ({"limit": 0}, "seed.limit: got 0 (an integer); allowed: an integer >= 1, or null"),
    ({"limit": -5}, "seed.limit: got -5"),
    ({"limit": 2.5}, "seed.limit: got 2.5 (a number)"),
    ({"limit": "abc"}, 'seed.limit: got "abc" (text)'),
    ({"source": None}, "seed.source: got null"),
    ({"source": ["a.jsonl"]}, "seed.source: got a list of 1"),
    ({"limt": 5}, "seed.limt: unknown key; did you mean `limit`?"),
])
def test_bad_seed_params_are_refused_before_reading(repo, tmp_path, capsys, seed_params, expected):
    good = tmp_path / "good.jsonl"
    good.write_bytes(jsonl(OK))
    code, err = run_seed_stage(repo, tmp_path, {"seed": {"source": str(good), **seed_params}}, capsys)
    assert_refused(code, err, tmp_path, [expected, "params.yaml"])


def test_debug_shows_the_traceback(repo, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EVOLFORGE_DEBUG", "1")
    path, _ = make_source(tmp_path, "nul_byte")
    with pytest.raises(Exception, match="no control characters"):
        run_seed_stage(repo, tmp_path, {"seed": {"source": str(path)}}, capsys)


def test_bom_crlf_tabs_and_rtl_text_are_accepted(repo, tmp_path, capsys):
    rows = [OK, {"instruction": "Explain:\tthis\nand that.", "input": "", "output": ""},
            {"instruction": "\u0645\u0631\u062d\u0628\u0627 \u200fok", "input": "", "output": ""}]  # Arabic + RLM mark
    path = tmp_path / "s.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\r\n" for r in rows))
    code, err = run_seed_stage(repo, tmp_path, {"seed": {"source": str(path)}}, capsys)
    assert code in (0, None), err
    table = read_table(tmp_path / "out/seed")
    assert table["instruction"].to_list() == [r["instruction"] for r in rows]
    csv = tmp_path / "s.csv"
    csv.write_bytes(b"\xef\xbb\xbfinstruction,output\r\nAdd 2 and 3.,5\r\n")
    assert build_seed(str(csv)).table["instruction"].to_list() == ["Add 2 and 3."]


def test_duplicates_after_normalisation_are_recorded(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_bytes(jsonl(OK, {"instruction": "add  2 AND 3.", "output": "five"}, {"instruction": "Name a color."},
                           {"instruction": "\uff21dd 2 and 3."}))  # full-width A
    built = build_seed(str(path))
    assert built.table["instruction"].to_list() == ["Add 2 and 3.", "Name a color."]
    assert built.duplicates.select("source_row", "kept_row").rows() == [(2, 1), (4, 1)]
    assert set(built.duplicates["kept_id"]) == {make_id("Add 2 and 3.", "")}
    assert "first row in the source is kept" in built.duplicates["reason"][0]
    assert built.metrics["duplicates_removed"] == 2


def test_hash_sample_keeps_its_items_when_the_source_grows():
    def table(names):
        return pl.DataFrame({"id": [make_id(n) for n in names], "_row": list(range(1, len(names) + 1))})

    old = [f"old {i}" for i in range(2000)]
    new = [f"new {i}" for i in range(500)]
    before = set(hash_sample(table(old), 1000, seed=0)["id"])
    after = set(hash_sample(table(new + old), 1000, seed=0)["id"])  # 25% more, prepended
    assert len(before) == len(after) == 1000
    assert len(before & after) >= 750  # ~80% expected: the most a uniform sample can keep
    assert set(hash_sample(table(old[1:]), 1000, seed=0)["id"]) >= before - {make_id(old[0])}
    assert hash_sample(table(old), 1000, seed=1)["id"].to_list() != hash_sample(table(old), 1000, seed=0)["id"].to_list()
