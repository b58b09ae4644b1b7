"""A hostile user's corpus of seed files and params files, beyond tests/test_seed_input.py and
tests/test_params.py: wrong encodings, truncated and disguised files, odd JSON shapes, duplicate keys and
columns, near-miss column names, lone surrogates, hidden characters, YAML merge keys, bombs and
self-referencing anchors, non-text keys, `.inf`. Each case is refused with one message naming the file and
the rule (and the row where there is one), or accepted with the rows it holds. The seed cases run
``build_seed``, the function the seed stage calls; the params cases ``load_params``, which every stage and
``evolforge check`` call first. A few cases also run the stage script itself: exit 2, no traceback, no output."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evolforge.steps.common.source import build_seed
from evolforge.core.models import ModelError, model_identity
from evolforge.config.bounds import ParamsError
from evolforge.schema import load_params
from evolforge.io.validation import DataError
from test_seed_input import run_seed_stage  # the seed stage's __main__, in this process

OK = {"instruction": "Add 2 and 3.", "input": "", "output": "5"}


def jl(*rows) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def lines(*texts) -> bytes:
    return "".join(t + "\n" for t in texts).encode()


def arrow(table: pa.Table) -> Callable[[Path], None]:
    return lambda path: pq.write_table(table, path)


def frame(df: pl.DataFrame) -> Callable[[Path], None]:
    return lambda path: df.write_parquet(path)


def truncated_parquet(path: Path) -> None:
    buf = io.BytesIO()
    pl.DataFrame({"instruction": ["a", "b"] * 50}).write_parquet(buf)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


def row_37_without_instruction(path: Path) -> None:
    rows = [{"instruction": f"Task {i}", "output": "o"} for i in range(1, 51)]
    rows[36] = {"prompt": "Task 37", "output": "o"}
    path.write_bytes(jl(*rows))


def bad_line_5(path: Path) -> None:
    texts = [json.dumps({"instruction": f"Task {i}"}) for i in range(1, 10)]
    texts[4] = '{"instruction": "Task 5",}'
    path.write_bytes(lines(*texts))


REFUSED, ACCEPTED = "refused", "accepted"

# name -> (file name, bytes or a function writing the file, build_seed keywords, (REFUSED, [message parts]) | (ACCEPTED, rows))
SEEDS = {
    # encodings: every text file is UTF-8 (a leading BOM is fine); a lossy read would change the data
    "utf16_bom_jsonl": ("s.jsonl", json.dumps(OK).encode("utf-16"), {}, (REFUSED, ["text is UTF-8", "UTF-16"])),
    "utf16_no_bom_jsonl": ("s.jsonl", (json.dumps(OK) + "\n").encode("utf-16-le"), {}, (REFUSED, ["text is UTF-8", "UTF-16 text without a byte order mark"])),
    "utf16_json": ("s.json", json.dumps([OK]).encode("utf-16"), {}, (REFUSED, ["text is UTF-8", "UTF-16"])),
    "utf16_csv": ("s.csv", "instruction,output\nAdd 2 and 3.,5\n".encode("utf-16"), {}, (REFUSED, ["text is UTF-8", "UTF-16"])),
    "latin1_csv": ("s.csv", "instruction,output\ncafé au lait,ok\n".encode("latin-1"), {}, (REFUSED, ["text is UTF-8", "line 2", "0xe9"])),
    "latin1_json": ("s.json", json.dumps([OK, {"instruction": "café"}], ensure_ascii=False).encode("latin-1"), {}, (REFUSED, ["text is UTF-8", "line 1", "0xe9"])),
    "latin1_jsonl_line_3": ("s.jsonl", jl(OK, OK | {"instruction": "b"}) + '{"instruction": "café"}\n'.encode("latin-1"), {}, (REFUSED, ["row 3:", "text is UTF-8", "0xe9"])),
    "gzip_named_jsonl": ("s.jsonl", gzip.compress(jl(OK))[:20], {}, (REFUSED, ["text is UTF-8", "gzip-compressed"])),
    "parquet_named_csv": ("s.csv", frame(pl.DataFrame({"instruction": ["a", "b"]})), {}, (REFUSED, ["text is UTF-8", "Parquet"])),
    "csv_header_starting_with_magic_bytes": ("s.csv", b"BZh,PAR1\nok,1\n", {"fields": {"instruction": "BZh"}}, (ACCEPTED, 1)),
    "bom_only_csv": ("s.csv", b"\xef\xbb\xbf", {}, (REFUSED, ["the file holds at least one record", "byte order mark"])),
    "bom_only_jsonl": ("s.jsonl", b"\xef\xbb\xbf\r\n", {}, (REFUSED, ["the source holds at least one record"])),
    "bom_in_the_middle_jsonl": ("s.jsonl", jl(OK) + b"\xef\xbb\xbf" + jl({"instruction": "b"}), {}, (REFUSED, ["row 2:", "each line is one JSON object", "byte order mark"])),
    "bom_crlf_json": ("s.json", b"\xef\xbb\xbf[\r\n" + json.dumps(OK).encode() + b"\r\n]\r\n", {}, (ACCEPTED, 1)),
    "cr_only_line_ends_jsonl": ("s.jsonl", (json.dumps(OK) + "\r" + json.dumps({"instruction": "b"}) + "\r").encode(), {}, (ACCEPTED, 2)),
    "raw_line_separator_inside_a_value": ("s.jsonl", jl({"instruction": "a\u2028b"}, {"instruction": "e\u2029f"}), {}, (ACCEPTED, 2)),
    # truncated or disguised files
    "truncated_parquet": ("s.parquet", truncated_parquet, {}, (REFUSED, ["the file is readable parquet"])),
    "jsonl_named_parquet": ("s.parquet", jl(OK), {}, (REFUSED, ["the file is readable parquet"])),
    "gz_extension": ("s.jsonl.gz", gzip.compress(jl(OK)), {}, (REFUSED, ["a local seed file is one of"])),
    "tsv_extension": ("s.tsv", b"instruction\toutput\na\tb\n", {}, (REFUSED, ["a local seed file is one of"])),
    # JSON shapes
    "json_top_level_number": ("s.json", b"42", {}, (REFUSED, ["the file is one JSON array of objects", "got a number"])),
    "json_top_level_string": ("s.json", b'"hello"', {}, (REFUSED, ["the file is one JSON array of objects", "got text"])),
    "json_top_level_null": ("s.json", b"null", {}, (REFUSED, ["the file is one JSON array of objects", "got null"])),
    "json_object_of_rows": ("s.json", json.dumps({"a": OK}).encode(), {}, (REFUSED, ["the file is one JSON array of objects", "got an object"])),
    "json_empty_array": ("s.json", b"[]", {}, (REFUSED, ["the source holds at least one record"])),
    "json_data_wrapper": ("s.json", json.dumps({"data": [OK, {"instruction": "b"}]}).encode(), {}, (ACCEPTED, 2)),
    "json_trailing_garbage": ("s.json", json.dumps([OK]).encode() + b" ]", {}, (REFUSED, ["the file is one JSON array of objects", "line 1, column 63: Extra data"])),
    "jsonl_line_is_null": ("s.jsonl", lines(json.dumps(OK), "null"), {}, (REFUSED, ["row 2:", "each line is one JSON object", "got null"])),
    "jsonl_invalid_line_5_of_9": ("s.jsonl", bad_line_5, {}, (REFUSED, ["row 5:", "each line is one JSON object"])),
    "jsonl_no_instruction_on_row_37": ("s.jsonl", row_37_without_instruction, {}, (REFUSED, ["row 37:", "field 'instruction' (mapped to instruction) is present", "'prompt'"])),
    "jsonl_duplicate_key": ("s.jsonl", lines(json.dumps(OK), '{"instruction": "a", "instruction": "b"}'), {}, (REFUSED, ["row 2:", "each JSON object names a key once", '"instruction"'])),
    "json_duplicate_key": ("s.json", b'[{"instruction": "a", "output": "x", "output": "y"}]', {}, (REFUSED, ["each JSON object names a key once", '"output"'])),
    "jsonl_nesting_200k_deep": ("s.jsonl", b'{"instruction": "ok", "input": ' + b"[" * 200_000 + b"]" * 200_000 + b"}\n", {}, (REFUSED, ["row 1:", "nested too deeply"])),
    "jsonl_5000_digit_integer": ("s.jsonl", b'{"instruction": ' + b"9" * 5000 + b"}\n", {}, (REFUSED, ["row 1:", "each line is one JSON object", "4300 digits"])),
    "jsonl_400_digit_integer_shown_short": ("s.jsonl", b'{"instruction": ' + b"9" * 400 + b"}\n", {}, (REFUSED, ["row 1:", "instruction is text", "(400 characters)"])),
    "jsonl_nan_output": ("s.jsonl", b'{"instruction": "ok", "output": NaN}\n', {}, (REFUSED, ["row 1:", "output is text", "nan"])),
    "jsonl_minus_infinity_input": ("s.jsonl", b'{"instruction": "ok", "input": -Infinity}\n', {}, (REFUSED, ["input is text", "-inf"])),
    "json_false_output_row_2": ("s.json", json.dumps([OK, OK | {"instruction": "b", "output": False}]).encode(), {}, (REFUSED, ["row 2:", "output is text", "true/false"])),
    "json_nested_instruction": ("s.json", json.dumps([{"instruction": [{"text": "a"}]}]).encode(), {}, (REFUSED, ["row 1:", "instruction is text", "a list"])),
    "jsonl_lone_surrogate": ("s.jsonl", lines(json.dumps(OK), '{"instruction": "bad \\ud800 text"}'), {}, (REFUSED, ["row 2:", "instruction is valid Unicode text", "U+D800", "character 5"])),
    "jsonl_surrogate_pair": ("s.jsonl", lines('{"instruction": "emoji \\ud83d\\ude00 ok"}'), {}, (ACCEPTED, 1)),
    "jsonl_mapped_output_column_missing": ("s.jsonl", jl({"prompt": "a", "answer": "b"}), {"fields": {"instruction": "prompt", "output": "completion"}}, (REFUSED, ["field 'completion' (mapped to output by seed.fields) is present", "columns: ['answer', 'prompt']"])),
    "jsonl_number_column_mapped": ("s.jsonl", jl({"prompt": "a", "n": 5}), {"fields": {"instruction": "prompt", "output": "n"}}, (REFUSED, ["row 1:", "output is text", "field 'n' holds a number (5)"])),
    "gsm8k_format_on_alpaca_rows": ("s.jsonl", jl(OK), {"fmt": "gsm8k"}, (REFUSED, ["field 'question' (mapped to instruction) is present"])),
    # CSV
    "csv_duplicate_columns": ("s.csv", b"instruction,output,instruction\na,b,c\n", {}, (REFUSED, ["column names are unique", "'instruction'"])),
    "csv_capitalised_columns": ("s.csv", b"Instruction,Output\nAdd 2 and 3.,5\n", {}, (REFUSED, ["field 'instruction' (mapped to instruction) is present", "differs only in case or spaces", "seed.fields"])),
    "csv_output_column_capitalised": ("s.csv", b"instruction,Output\nAdd 2 and 3.,5\n", {}, (REFUSED, ["field 'output' (mapped to output) is present", "'Output' differs only in case"])),
    "jsonl_key_with_trailing_space": ("s.jsonl", jl({"instruction ": "a", "output": "b"}), {}, (REFUSED, ["mapped to instruction", "'instruction ' differs only in case or spaces"])),
    "csv_whitespace_only_row": ("s.csv", b"instruction,output\nok,1\n   ,  \n", {}, (REFUSED, ["row 2:", "instruction is non-empty text"])),
    "csv_ragged_row": ("s.csv", b"instruction,output\na,b\nc,d,e,f\n", {}, (REFUSED, ["row 2:", "the file is readable csv", "number of fields"])),
    "csv_unterminated_quote": ("s.csv", b'instruction,output\n"abc,d\n', {}, (REFUSED, ["the file is readable csv"])),
    "csv_nul_byte": ("s.csv", b"instruction,output\na\x00b,c\n", {}, (REFUSED, ["row 1:", "no control characters", "U+0000"])),
    "csv_semicolon_separated": ("s.csv", b"instruction;output\na;b\n", {}, (REFUSED, ["mapped to instruction) is present", "instruction;output"])),
    "csv_quoted_multiline_cell": ("s.csv", b'instruction,output\r\n"line one\r\nline two",x\r\n', {}, (ACCEPTED, 1)),
    "csv_numbers_stay_text": ("s.csv", b"instruction,output\n42,7\n", {}, (ACCEPTED, 1)),
    "csv_lone_cr_line_ends": ("s.csv", b'instruction,output\rAdd 2 and 3.,5\r"Name\ra colour.",red\r', {}, (ACCEPTED, 2)),
    # chat formats are not instruction records: said so, with what to do
    "sharegpt_conversations": ("s.jsonl", jl({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}), {}, (REFUSED, ["field 'instruction' (mapped to instruction) is present", "'conversations' looks like a chat format", "first user turn"])),
    "openai_messages": ("s.jsonl", jl({"messages": [{"role": "user", "content": "hi"}]}), {}, (REFUSED, ["'messages' looks like a chat format (ShareGPT / OpenAI messages)"])),
    # Parquet
    "parquet_null_typed_instruction": ("s.parquet", arrow(pa.table({"instruction": pa.array([None, None], pa.null())})), {}, (REFUSED, ["rows 1, 2:", "instruction is not null"])),
    "parquet_null_typed_output": ("s.parquet", arrow(pa.table({"instruction": ["a", "b"], "output": pa.array([None, None], pa.null())})), {}, (ACCEPTED, 2)),
    "parquet_bool_input": ("s.parquet", frame(pl.DataFrame({"instruction": ["a"], "input": [True]})), {}, (REFUSED, ["input is text", "true/false values"])),
    "parquet_binary_instruction": ("s.parquet", frame(pl.DataFrame({"instruction": [b"abc"]})), {}, (REFUSED, ["instruction is text", "binary data"])),
    "parquet_float_output_with_nan": ("s.parquet", frame(pl.DataFrame({"instruction": ["a", "b"], "output": [float("nan"), 1.0]})), {}, (REFUSED, ["output is text", "numbers"])),
    "parquet_large_string": ("s.parquet", arrow(pa.table({"instruction": pa.array(["a", "b"], pa.large_string())})), {}, (ACCEPTED, 2)),
    "parquet_dictionary_encoded": ("s.parquet", arrow(pa.table({"instruction": pa.array(["a", "b", "a"]).dictionary_encode()})), {}, (ACCEPTED, 2)),
    "parquet_duplicate_columns": ("s.parquet", arrow(pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"])], names=["instruction", "instruction"])), {}, (REFUSED, ["the file is readable parquet", "more than one"])),
    "parquet_no_columns": ("s.parquet", arrow(pa.table({})), {}, (REFUSED, ["the source holds at least one record"])),
    "parquet_bell_character": ("s.parquet", frame(pl.DataFrame({"instruction": ["ok", "bell\x07"]})), {}, (REFUSED, ["row 2:", "no control characters", "U+0007"])),
    # zero-length and special files
    "empty_json": ("s.json", b"", {}, (REFUSED, ["the file holds at least one record", "empty"])),
    "empty_csv": ("s.csv", b"", {}, (REFUSED, ["the file holds at least one record", "empty"])),
    "empty_parquet": ("s.parquet", b"", {}, (REFUSED, ["the file holds at least one record", "empty"])),
    "symlink_to_dev_zero": ("s.jsonl", lambda p: os.symlink("/dev/zero", p), {}, (REFUSED, ["seed.source is a regular file", "a device"])),
    "symlink_to_a_directory": ("s.jsonl", lambda p: os.symlink(p.parent, p), {}, (REFUSED, ["seed.source is a regular file", "a directory"])),
    "dangling_symlink": ("s.jsonl", lambda p: os.symlink(p.parent / "gone.jsonl", p), {}, (REFUSED, ["seed.source is an existing local file", "no such file"])),
    "directory_named_parquet": ("s.parquet", lambda p: p.mkdir(), {}, (REFUSED, ["seed.source is a regular file", "a directory"])),
    "glob_matching_nothing": ("*.jsonl", None, {}, (REFUSED, ["seed.source is an existing local file", "wildcards are not expanded"])),
    # characters
    "instruction_of_10_mb": ("s.jsonl", lambda p: p.write_bytes(jl({"instruction": "x" * 10_000_000}, OK)), {}, (ACCEPTED, 2)),
    "c1_next_line_control": ("s.jsonl", jl({"instruction": "next\x85line"}), {}, (REFUSED, ["row 1:", "no control characters", "U+0085"])),
    "form_feed_in_input": ("s.jsonl", jl(OK | {"input": "page\x0cbreak"}), {}, (REFUSED, ["input holds no control characters", "U+000C"])),
    "rtl_isolate_in_input": ("s.jsonl", jl(OK, OK | {"instruction": "b", "input": "x\u2067y\u2069"}), {}, (REFUSED, ["row 2:", "input holds no bidirectional", "U+2067"])),
    "soft_hyphen_and_bom_only": ("s.jsonl", jl({"instruction": "\ufeff\u00ad"}), {}, (REFUSED, ["instruction has a visible character"])),
    "hangul_fillers_only": ("s.jsonl", jl({"instruction": "\u3164\u115f"}), {}, (REFUSED, ["instruction has a visible character"])),
    "hidden_tag_characters": ("s.jsonl", jl({"instruction": "Say hi\U000e0049\U000e0047\U000e004e"}), {}, (REFUSED, ["hidden tag characters", "U+E0049 TAG LATIN CAPITAL LETTER I at character 7"])),
    "emoji_subdivision_flag": ("s.jsonl", jl({"instruction": "Flag \U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f ok"}), {}, (ACCEPTED, 1)),
    "private_use_character": ("s.jsonl", jl({"instruction": "icon \ue000 here"}), {}, (ACCEPTED, 1)),
}


def make(tmp_path: Path, name: str) -> Path:
    file_name, data, _, _ = SEEDS[name]
    path = tmp_path / file_name
    if callable(data):
        data(path)
    elif data is not None:
        path.write_bytes(data)
    return path


@pytest.mark.parametrize("name", list(SEEDS))
def test_hostile_seed_file(tmp_path, name):
    path = make(tmp_path, name)
    _, _, kwargs, (outcome, expected) = SEEDS[name]
    if outcome == ACCEPTED:
        assert build_seed(str(path), **kwargs).table.height == expected
        return
    with pytest.raises(DataError) as err:
        build_seed(str(path), **kwargs)
    message = str(err.value)
    assert message.startswith(str(path)) and "\n" not in message, message
    for part in expected:
        assert part in message, message


Y = "roles:\n  evolver:\n    backend: hf\n    model: m\n"
SEED = "seed:\n  source: data/seeds/demo.jsonl\n"
SK = "sk-" + "Zq3vR8tLw1Xy7Kp2Nb5Hd9Fg"  # assembled so no secret scanner flags this file
GH = "ghp_" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5"
BOMB = Y + "    extra:\n      l0: &l0 [a, a, a, a, a, a, a, a, a]\n" + "".join(
    f"      l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))

# name -> (params.yaml text, None when accepted or the parts of the one problem)
PARAMS = {
    "top_level_list": ("- a\n- b\n", ["the top level is a list of 2"]),
    "section_is_a_list": ("seed: [a, b]\n", ["seed: got a list of 2; expected a mapping"]),
    "role_is_text": ("roles:\n  evolver: hf\n", ["roles.evolver: got text; expected a mapping"]),
    "rounds_is_a_list": (SEED + "evolve:\n  rounds: [data/seed]\n", ["evolve.rounds: got a list of 1"]),
    "round_index_true": (SEED + "evolve:\n  rounds:\n    round_1: {src: data/seed, index: true}\n", ["evolve.rounds.round_1.index: got true; allowed: an integer >= 1"]),
    "respond_rounds_scalar": ("evolve:\n  rounds:\n    round_1: {src: data/seed, index: 1}\nrespond:\n  rounds: 5\n", ["respond.rounds: got 5"]),
    "unknown_nested_key": (SEED + "evolve:\n  repetition:\n    ngramm: 3\n", ["evolve.repetition.ngramm: unknown key; did you mean `ngram`?"]),
    "merge_key_with_override": ("roles:\n  evolver: &b {backend: hf, model: m, max_tokens: 10}\n  judge:\n    <<: *b\n    max_tokens: 20\n", None),
    "merge_key_typo_inside": ("roles:\n  evolver: &b {backend: hf, model: m, max_tokns: 10}\n  judge: {<<: *b}\n",
                              ["roles.evolver.max_tokns: unknown key", "roles.judge.max_tokns: unknown key"]),  # both roles hold it
    "anchor_reused": ("roles:\n  evolver: &b {backend: hf, model: m}\n  judge: *b\n", None),
    "duplicate_nested_key": (Y + "    temperature: 0.1\n    temperature: 0.9\n", ["line 6: key 'temperature' appears twice"]),
    "duplicate_section": (SEED + "seed:\n  source: x.jsonl\n", ["line 3: key 'seed' appears twice"]),
    "tab_indentation": ("seed:\n\tsource: x.jsonl\n", ["line 2, column 1: not valid YAML", "'\\t'"]),
    "integer_key": ("seed:\n  source: x.jsonl\n  1: 2\n", ["line 3: the key `1` reads as an integer, not text"]),
    "null_key": ("seed:\n  source: x.jsonl\n  null: 2\n", ["line 3: the key `null` reads as null"]),
    "yaml_on_key": ("evolve:\n  on: true\n", ["line 2: the key `on` reads as true/false", "quote it"]),
    "list_as_key": ("seed:\n  source: x.jsonl\n  ? [a, b]\n  : 2\n", ["line 3: a key is a list"]),
    "python_object_tag": ("seed: !!python/object/apply:os.system ['echo hi']\n", ["not valid YAML", "python/object"]),
    "yaml_bomb": (BOMB, ["expands to more than 100,000 values"]),
    "anchor_containing_itself": (Y + "    extra:\n      a: &a [1, *a]\n", ["line 6, column 10: an anchor holds an alias of itself"]),
    "nested_2000_deep": (Y + "    extra:\n      a: " + "[" * 2000 + "]" * 2000 + "\n", ["nested too deeply"]),
    "two_documents": (SEED + "---\n" + SEED, ["not valid YAML (but found another document)"]),
    "huge_integer_seed": (SEED + "  seed: 999999999999999999999999999999999999\n", None),
    "inf_interval": ("llm:\n  commit_interval_s: .inf\n", ["llm.commit_interval_s: got Infinity (a number); allowed: a number > 0"]),
    "inf_temperature": (Y + "    temperature: .inf\n", ["roles.evolver.temperature: got Infinity"]),
    "nan_failure_rate": ("llm:\n  max_failure_rate: .nan\n", ["llm.max_failure_rate: got NaN"]),
    "inf_in_typed_mapping": ("evolve:\n  repetition:\n    max_compression_ratio: .inf\n", ["evolve.repetition.max_compression_ratio: got Infinity"]),
    "limit_true": (SEED + "  limit: true\n", ["seed.limit: got true; allowed: an integer >= 1, or null"]),
    "batch_size_yes": (Y + "    batch_size: yes\n", ["roles.evolver.batch_size: got true"]),
    "limit_whole_float": (SEED + "  limit: 5.0\n", ["seed.limit: got 5.0 (a number)"]),
    "limit_hex": (SEED + "  limit: 0x10\n", None),
    "nested_list_of_rounds": ("respond:\n  rounds: [[1]]\n", ["respond.rounds[0]: got a list of 1"]),
    "nested_list_of_tasks": ("evaluate:\n  tasks: [[ifeval]]\n", ["evaluate.tasks[0]: got a list of 1"]),
    "instruction_mapped_to_null": (SEED + "  fields: {instruction: null}\n", ["seed.fields.instruction: got null"]),
    "instruction_mapped_to_empty": (SEED + "  fields: {instruction: ''}\n", ["seed.fields.instruction: got \"\" (text); allowed: text (not empty)"]),
    "nul_in_seed_source": ('seed:\n  source: "a\\0b.jsonl"\n', ["seed.source: holds the control character U+0000 at character 2"]),
    "ansi_escape_in_model": (Y.replace("model: m", 'model: "m\\e[31m"'), ["roles.evolver.model: holds the control character U+001B"]),
    "secret_under_a_new_extra_key": (Y + f"    extra:\n      zzz: {SK}\n", ["roles.evolver.extra.zzz: holds an API key"]),
    "secret_in_nested_lists": (Y + f"    extra:\n      args: [[a, {{h: '{GH}'}}]]\n", ["roles.evolver.extra.args[0][1].h: holds a GitHub token"]),
    "secret_as_a_key": (Y + f"    extra:\n      '{SK}': 1\n", ["roles.evolver.extra (a key): holds an API key"]),
    "secret_in_seed_fields": (SEED + f"  fields: {{instruction: '{SK}'}}\n", ["seed.fields.instruction: holds an API key"]),
    "secret_in_a_comment": (SEED + f"  # {SK}\n", None),
    "half_megabyte_value": (SEED + "  split: " + "a" * 500_000 + "\n", None),  # the secret scan was quadratic: minutes
}


@pytest.mark.parametrize("name", list(PARAMS))
def test_hostile_params_file(tmp_path, name):
    text, expected = PARAMS[name]
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    if expected is None:
        load_params(path)
        return
    with pytest.raises(ParamsError) as err:
        load_params(path)
    message = str(err.value)
    assert message.startswith(str(path)) and len(err.value.problems) == (2 if name == "merge_key_typo_inside" else 1), message
    assert SK not in message and GH not in message
    for part in expected:
        assert part in message, message


@pytest.mark.parametrize("model, expected", [
    ("./models/does-not-exist", "no such folder"),
    ("/nonexistent/model", "no such folder"),
    ("a/b/c", "no such folder"),
    ("FILE", "is not a folder"),
])
def test_a_model_path_that_does_not_exist_is_named_not_sent_to_the_hub(tmp_path, model, expected):
    if model == "FILE":
        model = str(tmp_path / "model.safetensors")
        Path(model).write_bytes(b"x")
    with pytest.raises(ModelError, match=expected):
        model_identity(model)


@pytest.mark.parametrize("name, source", [
    ("jsonl_lone_surrogate", None),  # these three stopped the stage with exit 1 and a bare exception before
    ("jsonl_5000_digit_integer", None),
    ("glob_matching_nothing", "/tmp/" + "a" * 300 + ".jsonl"),  # a name too long for the file system
])
def test_the_stage_refuses_with_exit_2_no_traceback_and_no_output(repo, tmp_path, capsys, name, source):
    path = make(tmp_path, name)
    code, err = run_seed_stage(repo, tmp_path, {"seed": {"source": source or str(path)}}, capsys)
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1 and "rule '" in err, err
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


# --- stage outputs and files other stages read ------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"PAR1 cut short", b'{"id": "a"}\n'])
def test_an_unreadable_table_is_refused_naming_it(tmp_path, content):
    from evolforge.io.records import read_table

    (tmp_path / "items.parquet").write_bytes(content)
    with pytest.raises(DataError, match=r"items\.parquet: rule 'a readable Parquet table'.*rerun the stage"):
        read_table(tmp_path)


def test_a_broken_identity_file_is_refused_with_its_line(tmp_path):
    from evolforge.config.roles import Role
    from evolforge.llm.identity import recorded_identity

    path = tmp_path / "identity.json"
    path.write_text('{\n  "judge": {not json\n}')
    with pytest.raises(DataError, match=r"identity\.json: rule 'valid JSON': line 2, column 13"):
        recorded_identity(Role(name="judge", backend="hf", model="m"), path)


def test_a_failure_while_finishing_an_output_leaves_the_previous_one(tmp_path):
    from evolforge.io.records import write_output

    out = tmp_path / "selected"
    write_output(out, pl.DataFrame({"id": ["a"]}), extra={"train.jsonl": [{"id": "a"}]})
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def card(folder: Path) -> None:  # as select's dataset card fails on a broken models/identity.json
        (folder / "README.md").write_text("half a card")
        raise DataError("models/identity.json", "valid JSON")

    with pytest.raises(DataError):
        write_output(out, pl.DataFrame({"id": ["b"]}), extra={"train.jsonl": [{"id": "b"}]}, finish=card)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["selected"]  # no staging folder left behind


@pytest.mark.parametrize("argv, expected", [
    (["lineage", "no-such-id"], "evolforge lineage: error: data/seed and 0 round folders: rule 'an item id, or the "
                                "prefix of exactly one': 'no-such-id' matches no item"),
    (["card", "--selected", "nowhere", "--params", "{repo}/params.yaml"],
     "evolforge card: error: nowhere/items.parquet: no selection"),
    (["report", "--root", "nowhere", "--out", "r.html"], "evolforge report: error: 'nowhere' is no folder here"),
])
def test_cli_misuse_is_one_line_without_traceback(repo, tmp_path, monkeypatch, capsys, argv, expected):
    from evolforge.cli import main

    monkeypatch.chdir(tmp_path)
    shutil.copy(repo / "dvc.yaml", "dvc.yaml")  # where the commands read the artifacts' paths
    seed = Path("data/seed")
    seed.mkdir(parents=True)
    pl.DataFrame({"id": ["s1"], "root_id": ["s1"], "parent_id": [None], "round": [0], "method": ["seed"],
                  "status": ["seed"], "failure_reason": [None], "instruction": ["Add 2 and 3."]},
                 schema_overrides={"parent_id": pl.String, "failure_reason": pl.String}).write_parquet(
        seed / "items.parquet")
    with pytest.raises(SystemExit) as exit_:
        main([a.replace("{repo}", str(repo)) for a in argv])
    err = capsys.readouterr().err + (exit_.value.code if isinstance(exit_.value.code, str) else "")
    assert exit_.value.code != 0 and expected in err and "Traceback" not in err, err
    assert not Path("r.html").exists()


def _items(**changes) -> pl.DataFrame:
    table = pl.DataFrame({"id": ["a", "b"], "root_id": ["a", "b"], "parent_id": [None, None], "round": [0, 0],
                          "method": ["seed"] * 2, "status": ["seed"] * 2, "failure_reason": [None, None],
                          "instruction": ["Add 2 and 3.", "Name a colour."], "input": ["", ""]},
                         schema_overrides={"parent_id": pl.String, "failure_reason": pl.String})
    return table.with_columns(**changes)


@pytest.mark.parametrize("changes, expected", [
    ({"instruction": pl.Series([None, "Name a colour."], dtype=pl.String)}, "row 1: rule 'instruction is not null'"),
    ({"instruction": pl.Series([1, 2])}, "rule 'column 'instruction' holds text': it holds Int64"),
    ({"id": pl.Series(["a", None], dtype=pl.String)}, "row 2: rule 'id is not null'"),
    ({"round": pl.Series(["0", "1"])}, "rule 'column 'round' holds integers': it holds String"),
    ({"input": pl.Series([["x"], ["y"]])}, "rule 'column 'input' holds text': it holds List(String)"),
])
def test_a_hand_edited_item_table_is_refused_before_any_call(tmp_path, changes, expected):
    from evolforge.steps.respond.step import gather
    from evolforge.io.records import write_output

    write_output(tmp_path / "seed", _items(**changes))
    with pytest.raises(DataError, match=re.escape(expected)):
        gather([], tmp_path / "seed")  # respond's inputs; evolve, judge, dedup ... check theirs the same way


def test_a_seed_table_of_the_pipeline_passes_the_item_checks():
    from evolforge.io import validation
    from evolforge.io.records import LINEAGE

    validation.check(_items(), validation.item_columns(LINEAGE + ["instruction", "input"]), "seed")


def test_a_seed_table_with_our_row_column_is_refused(tmp_path):
    from evolforge.steps.common.source_read import read_table_file

    path = tmp_path / "s.parquet"
    pl.DataFrame({"instruction": ["a"], "_row": [7]}).write_parquet(path)
    with pytest.raises(DataError, match="rule 'no column is named '_row'': evolforge numbers"):
        read_table_file(path, "parquet")


@pytest.mark.parametrize("text, expected", [
    ("# only a comment\n\n", "rule 'at least one seed constraint'"),
    ("Answer in French.\nUse \x1b[31mred\x1b[0m words.\n", "row 2: rule 'no control characters"),
    ("R\xe9ponds en fran\xe7ais.\n".encode("latin-1"), "rule 'text is UTF-8': line 1, byte 0xe9 at column 2"),
])
def test_bad_seed_constraints_files_are_refused(tmp_path, text, expected):
    from evolforge.steps.autoif.constraints import read_seed_constraints

    path = tmp_path / "constraints.txt"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(DataError, match=re.escape(expected)):
        read_seed_constraints(path)


def test_a_train_file_with_a_bad_line_names_the_line(tmp_path):
    from evolforge.io.jsonfiles import read_jsonl

    path = tmp_path / "train.jsonl"
    path.write_text('\ufeff{"prompt": []}\n\n{"prompt": [}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.jsonl: row 3: rule 'each line is one JSON object': column 13"):
        read_jsonl(path)
    path.write_text('\ufeff{"prompt": []}\n[1]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"row 2: .*got a list"):
        read_jsonl(path)
    path.write_text('{"prompt": [], "prompt": [1]}\r{"completion": []}\r', encoding="utf-8")  # the seed reader's rules too
    with pytest.raises(DataError, match=r"row 1: rule 'each JSON object names a key once': key \"prompt\" appears twice"):
        read_jsonl(path)
    path.write_text('\ufeff{"prompt": []}\n', encoding="utf-8")
    assert read_jsonl(path) == [{"prompt": []}]  # a byte order mark at the start is fine


@pytest.mark.parametrize("role, expected", [
    ({"backend": "openai", "model": "m"}, "roles.judge: backend 'openai' needs base_url"),
    ({"backend": "openai", "model": "m", "base_url": ""}, 'roles.judge.base_url: got ""; allowed: an http:// or https://'),
    ({"backend": "openai", "model": "m", "base_url": "localhost:8000/v1"}, 'base_url: got "localhost:8000/v1"'),
    ({"backend": "openai", "model": "m", "base_urls": ["http://a:1/v1", "ftp://b/v1"]}, 'base_urls[1]: got "ftp://b/v1"'),
])
def test_server_addresses_are_checked_with_params(role, expected):
    from evolforge.schema import check_params

    with pytest.raises(ParamsError, match=re.escape(expected)):
        check_params({"roles": {"judge": role}})


def test_autoif_query_lengths_that_keep_nothing_are_refused():
    from evolforge.schema import check_params

    with pytest.raises(ParamsError, match=re.escape("autoif.queries.min_chars: 300 is not below max_chars (20)")):
        check_params({"autoif": {"queries": {"min_chars": 300, "max_chars": 20}}})


@pytest.mark.parametrize("edit, expected", [
    ({"evolved": None}, "round_1.json: rule ''evolved' is a count (an integer >= 0)': got null"),
    ({"in": "6"}, "rule ''in' is a count (an integer >= 0)': got \"6\""),
    ({"failed_by_reason": ["empty"]}, "rule ''failed_by_reason' maps each reason to a count'"),
    ({"mean_length_growth": "1.2"}, "rule ''mean_length_growth' is a number or null'"),
])
def test_evolve_report_refuses_a_hand_edited_round_file(repo, tmp_path, capsys, monkeypatch, edit, expected):
    import importlib.util

    from evolforge.core.stage import run_stage

    metrics = {"in": 6, "evolved": 5, "failed": 1, "calls": 11, "cache_hits": 0, "failed_by_reason": {"empty": 1},
               "mean_length_growth": 1.4}
    (tmp_path / "evolve").mkdir()
    (tmp_path / "evolve" / "round_1.json").write_text(json.dumps({**metrics, **edit}))
    (tmp_path / "params.yaml").write_text(json.dumps({"evolve": {"rounds": {"round_1": {"src": "data/seed", "index": 1}}}}))
    spec = importlib.util.spec_from_file_location("evolve_report_stage", repo / "stages/evolve_report.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    monkeypatch.setattr("sys.argv", ["evolve_report", "--params", str(tmp_path / "params.yaml"), "--metrics-dir",
                                     str(tmp_path / "evolve"), "--judged", str(tmp_path / "judged"), "--out",
                                     str(tmp_path / "evolve.json"), "--plots", str(tmp_path / "plots")])
    with pytest.raises(SystemExit) as exit_:
        run_stage(stage.main)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and expected in err and "Traceback" not in err, err
    assert not (tmp_path / "evolve.json").exists()


@pytest.mark.parametrize("argv, noted", [
    (["stage", "--params", "exp.yaml"], True),
    (["stage", "--params=configs/exp.yaml"], True),
    (["stage", "--params", "configs/params.yaml"], False),  # the same name: nothing to explain
    (["stage"], False),
])
@pytest.mark.parametrize("error", [ValueError, SystemExit])  # a stage's own SystemExit message too
def test_a_stage_run_on_another_params_file_says_which_file_params_yaml_means(monkeypatch, capsys, argv, noted, error):
    from evolforge.core.stage import run_stage

    def main():
        raise error("params.yaml roles.scorer.backend: scoring needs logits")

    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as exit_:
        run_stage(main)
    code = exit_.value.code
    err = capsys.readouterr().err + (code if isinstance(code, str) else "")
    assert "params.yaml" in err and "Traceback" not in err
    given = argv[-1].split("=")[-1]
    assert (f"(params.yaml here is {given}: this run's --params)" in err) == noted, err
