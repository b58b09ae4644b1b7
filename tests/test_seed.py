"""The seed stage: formats and field mappings, ids, dedupe, seeded limit, and bad input named precisely."""

from __future__ import annotations

import json
import subprocess
import sys

import polars as pl
import pytest

from evolforge.io.records import make_id, read_table
from evolforge.steps.common.source import build_seed
from evolforge.io.validation import DataError

ALPACA = [
    {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
    {"instruction": "Name a color.", "input": "", "output": "Red"},
    {"instruction": "Add 2 and 3.", "input": "", "output": "five"},  # exact duplicate of row 1
    {"instruction": "Sum the list.", "input": "[1, 2]", "output": "3"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_alpaca_jsonl_ids_and_dedupe(tmp_path):
    table, metrics, duplicates = build_seed(str(write_jsonl(tmp_path / "s.jsonl", ALPACA)))
    assert table["instruction"].to_list() == ["Add 2 and 3.", "Name a color.", "Sum the list."]
    assert table["id"].to_list()[0] == make_id("Add 2 and 3.", "")
    assert table["root_id"].to_list() == table["id"].to_list()
    assert set(table["status"]) == {"seed"} and set(table["round"]) == {0}
    assert metrics["duplicates_removed"] == 1 and metrics["rows_written"] == 3
    # the first row is kept; the dropped one names it
    assert duplicates.select("source_row", "kept_row").row(0) == (3, 1)
    assert table.filter(pl.col("instruction") == "Add 2 and 3.")["output"].item() == "5"
    # ids depend on content only, not on position
    again, _, _ = build_seed(str(write_jsonl(tmp_path / "r.jsonl", list(reversed(ALPACA)))))
    assert set(again["id"]) == set(table["id"])


@pytest.mark.parametrize("suffix", ["json", "parquet", "csv"])
def test_other_local_formats(tmp_path, suffix):
    path = tmp_path / f"s.{suffix}"
    frame = pl.DataFrame(ALPACA)
    if suffix == "json":
        path.write_text(json.dumps(ALPACA))
    elif suffix == "parquet":
        frame.write_parquet(path)
    else:
        frame.write_csv(path)
    table, _, _ = build_seed(str(path))
    assert table.height == 3
    assert table.filter(pl.col("instruction") == "Sum the list.")["input"].item() == "[1, 2]"


def test_gsm8k_and_code_alpaca_mappings(tmp_path):
    gsm = write_jsonl(tmp_path / "g.jsonl", [{"question": "2+2?", "answer": "#### 4"}])
    table, _, _ = build_seed(str(gsm))
    assert table.select("instruction", "input", "output").row(0) == ("2+2?", "", "#### 4")
    code = write_jsonl(tmp_path / "c.jsonl", [{"instruction": "Write f.", "input": "def f(): pass", "output": "ok"}])
    table, _, _ = build_seed(str(code), fmt="code_alpaca")
    assert table.select("instruction", "input").row(0) == ("Write f.", "def f(): pass")
    custom = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Say hi.", "completion": "hi"}])
    table, _, _ = build_seed(str(custom), fields={"instruction": "prompt", "output": "completion", "input": None})
    assert table.select("instruction", "input", "output").row(0) == ("Say hi.", "", "hi")


def test_limit_is_a_seeded_sample_in_order(tmp_path):
    rows = [{"instruction": f"Task {i}.", "input": "", "output": ""} for i in range(50)]
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    a, _, _ = build_seed(str(path), limit=10, seed=1)
    b, _, _ = build_seed(str(path), limit=10, seed=1)
    c, _, _ = build_seed(str(path), limit=10, seed=2)
    assert a["id"].to_list() == b["id"].to_list() and a["id"].to_list() != c["id"].to_list()
    numbers = [int(t.split()[1].rstrip(".")) for t in a["instruction"]]
    assert numbers == sorted(numbers) and len(numbers) == 10


BAD = {
    "malformed_line": (b'{"instruction": "ok", "output": ""}\n{"instruction": "broken"\n', "each line is one JSON object", [2]),
    "missing_field": (b'{"question_text": "ok"}\n', "field 'instruction' (mapped to instruction) is present", []),
    "empty_instruction": (b'{"instruction": "ok"}\n{"instruction": "  "}\n{"instruction": "fine"}\n', "instruction is non-empty text", [2]),
    "null_instruction": (b'{"instruction": "ok"}\n{"instruction": null}\n', "instruction is not null", [2]),
    "not_utf8": (b'{"instruction": "ok"}\n{"instruction": "caf\xe9"}\n', "text is UTF-8", [2]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_names_file_row_and_rule(tmp_path, case):
    data, rule, rows = BAD[case]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(data)
    with pytest.raises(DataError) as err:
        build_seed(str(path))
    assert err.value.rule == rule and err.value.rows == rows
    assert str(path) in str(err.value) and rule in str(err.value)


def test_unknown_dataset_id():
    with pytest.raises(DataError) as err:
        build_seed("evolforge-no-such-org/no-such-dataset")
    assert "evolforge-no-such-org/no-such-dataset" in str(err.value)
    assert "Hugging Face dataset id" in err.value.rule


def test_stage_leaves_no_partial_output(tmp_path, repo):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(BAD["malformed_line"][0])
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"seed": {"source": str(bad)}}))
    out = tmp_path / "out" / "seed"
    proc = subprocess.run([sys.executable, str(repo / "stages/seed.py"), "--params", str(params), "--out", str(out),
                           "--metrics", str(tmp_path / "m.json")], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "bad.jsonl: row 2: rule 'each line is one JSON object'" in proc.stderr
    assert not out.exists() and not (tmp_path / "m.json").exists()
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []  # no temporary folder left

    good = tmp_path / "good.jsonl"
    write_jsonl(good, ALPACA)
    params.write_text(json.dumps({"seed": {"source": str(good), "limit": 2}}))
    proc = subprocess.run([sys.executable, str(repo / "stages/seed.py"), "--params", str(params), "--out", str(out),
                           "--metrics", str(tmp_path / "m.json")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert read_table(out).height == 2
    assert json.loads((tmp_path / "m.json").read_text())["rows_written"] == 2


def test_round_one_evolves_the_sample_not_the_whole_pool(tmp_path):
    """The seed folder holds the sample (items.parquet) and every seed (all_seeds.parquet, for the optimizer):
    the first round reads the sample, as a round reads its predecessor's pool."""
    from evolforge.core.stage import write as write_outputs
    from evolforge.steps.evolve.step import read_pool
    from evolforge.steps.seed.settings import SeedSettings
    from evolforge.steps.seed.step import run as seed_run
    from types import SimpleNamespace

    rows = [{"instruction": f"Explain topic number {i}.", "input": "", "output": "An answer."} for i in range(10)]
    source = write_jsonl(tmp_path / "s.jsonl", rows)
    outputs = seed_run(SeedSettings(source=str(source), limit=3))
    write_outputs(SimpleNamespace(out=str(tmp_path / "seed"), metrics=str(tmp_path / "m.json")), outputs)
    assert read_pool(tmp_path / "seed").height == 3
    assert pl.read_parquet(tmp_path / "seed" / "all_seeds.parquet").height == 10
