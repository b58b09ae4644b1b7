"""The select stage in bounded memory: at any ``data.chunk_rows`` it writes the bytes (every file of the
selection's folder, the metrics) it writes when the whole table fits in one chunk, and those are the selection
the in-memory :func:`select_items` makes of the whole joined table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from polars.testing import assert_frame_equal

from stage_runs import run_stage
from evolforge.io.records import write_output
from evolforge.steps.select import embeddings, shards
from evolforge.steps.select.embeddings import EMBEDDINGS, Embeddings, load_embeddings
from evolforge.steps.select.export import join_metrics
from evolforge.steps.select.selection import select_items
from evolforge.steps.select.settings import SelectSettings

CHUNKS = (7, 100, 100_000)
SETTINGS = ["{metric: ic_ifd, top_fraction: 0.5, diversity_threshold: 0.3}",
            "{metric: random, top_fraction: 0.6, seed: 3, rounds: [1, 2], diversity_threshold: 0.5}",
            "{metric: difficulty_score, top_fraction: null, threshold: 40, min_loss_instruction: 0.5, min_mnd: 0.1}",
            "{metric: ifd, top_fraction: 1.0, ifd_filter: true}",
            "{metric: ic_ifd, top_fraction: 0.5, near_duplicates: 0.7, same_problem: 0.15, same_problem_lineage: 0.5}"]


def unit_rows(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.normal(size=(6, d))[rng.integers(0, 6, n)] + 0.5 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_inputs(folder: Path, n: int = 90) -> None:
    """Items failing each guard, repeated instructions, null and NaN metrics; each per-item table (and the
    embeddings with the diversity table) in an order of its own."""
    rng = np.random.default_rng(5)
    k = np.arange(n)
    ids = [f"item-{x:03d}" for x in rng.permutation(n)]
    items = pl.DataFrame({
        "id": ids, "root_id": [ids[j - j % 4] for j in k], "round": k % 4, "status": np.where(k % 17 == 1, "failed", np.where(k % 3, "evolved", "seed")),
        "instruction": [f"Question {j % 40}  about Café" if j % 5 else f"question {j % 40} about café" for j in k],
        "input": ["" if j % 4 else f"input {j % 3}" for j in k],
        "output": ["  " if j % 23 == 5 else f"answer {j}" for j in k],
        "response_status": np.where(k % 19 == 2, "truncated", "complete")})
    write_output(folder / "clean", items)

    def metric(values: np.ndarray, nulls: int, nans: int = 0) -> pl.Series:
        values = np.where(k % nans == 3, np.nan, values) if nans else values
        return pl.Series(values).scatter(np.flatnonzero(k % nulls == 0), None)

    frame = pl.DataFrame({"id": ids, "round": (k % 4).astype(np.int32)})
    write_output(folder / "judged", frame.with_columns(difficulty_score=metric(np.round(rng.uniform(0, 100, n)), 11),
                                                      difficulty_level=pl.lit("hard"))[rng.permutation(n)])
    loss_q, loss_a = rng.uniform(0.2, 3, n), rng.uniform(0.5, 3, n)
    write_output(folder / "scores", frame.with_columns(
        loss_instruction=metric(loss_q, 13, 7), ifd=metric(rng.uniform(0.5, 1.3, n), 9),
        ic_ifd=metric(np.round(1 / (loss_q * loss_a), 2), 8, 10))[rng.permutation(n)])
    order = rng.permutation(n)
    write_output(folder / "diversity", frame.with_columns(mnd=pl.Series(rng.uniform(0, 1, n)))[order])
    np.save(folder / "diversity" / EMBEDDINGS, unit_rows(n, 8, rng)[order])


def run_select(folder: Path, inputs: Path, chunk_rows: int, select: str, monkeypatch) -> Path:
    folder.mkdir()
    monkeypatch.chdir(folder)
    (folder / "params.yaml").write_text(f"data: {{chunk_rows: {chunk_rows}}}\nselect: {select}\n")
    run_stage("select_data.py", "--items", str(inputs / "clean"), "--judged", str(inputs / "judged"),
              "--scores", str(inputs / "scores"), "--diversity", str(inputs / "diversity"),
              "--out", "selected", "--metrics", "select.json")
    return folder


def written(folder: Path) -> dict[str, bytes]:
    files = {str(f.relative_to(folder)): f.read_bytes() for f in sorted((folder / "selected").rglob("*")) if f.is_file()}
    metrics = json.loads((folder / "select.json").read_text())
    assert metrics.pop("peak_rss_mib") > 0
    assert metrics.pop("wall_s") >= 0  # the stage process's wall seconds differ run to run
    return {**files, "metrics": json.dumps(metrics, sort_keys=True).encode()}


@pytest.mark.parametrize("select", SETTINGS)
def test_select_stage_streams_with_the_whole_table_bytes(tmp_path, monkeypatch, select):
    """chunk_rows 7 and 100 write the whole-table run's files byte for byte (several buckets, card shards of 10
    rows), and the selection is the in-memory one over the whole joined table, row for row."""
    monkeypatch.setattr(shards, "SHARD_ROWS", 10)
    write_inputs(tmp_path / "in")
    runs = {rows: written(run_select(tmp_path / f"rows-{rows}", tmp_path / "in", rows, select, monkeypatch))
            for rows in CHUNKS}
    whole = runs[100_000]
    assert sum(name.startswith("selected/data/train-") for name in whole) > 1
    assert {"selected/items.parquet", "selected/excluded.parquet", "selected/train.jsonl", "selected/train_alpaca.json",
            "selected/README.md", "selected/meta.json"} <= set(whole)
    for rows, files in runs.items():
        assert files == whole, (rows, [name for name in whole if files.get(name) != whole[name]])

    tables = {name: pl.read_parquet(tmp_path / "in" / name / "items.parquet") for name in ("judged", "scores", "diversity")}
    table = join_metrics(pl.read_parquet(tmp_path / "in" / "clean" / "items.parquet"), tables)
    vectors = np.load(tmp_path / "in" / "diversity" / EMBEDDINGS)
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)  # as the stage reads them
    expected = select_items(table, SelectSettings(**yaml.safe_load(select)),
                            embeddings=Embeddings(tables["diversity"]["id"].to_list(), vectors))
    out = tmp_path / "rows-7" / "selected"
    assert_frame_equal(pl.read_parquet(out / "items.parquet"), expected.chosen)
    assert_frame_equal(pl.read_parquet(out / "excluded.parquet"), expected.excluded)
    assert json.loads(whole["metrics"]) == json.loads(json.dumps(expected.summary))
    alpaca = json.loads((out / "train_alpaca.json").read_text())
    assert alpaca == expected.chosen.select("instruction", "input", "output").to_dicts() and len(alpaca) > 5


def test_embedding_file_reads_the_rows_the_whole_array_gives(tmp_path, monkeypatch):
    """Rows read a block at a time by id are the whole array's normalised rows; a zero or non-finite row is
    reported with the first ten such rows, whatever the block size."""
    monkeypatch.setattr(embeddings, "BLOCK_ROWS", 4)
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(30, 5)).astype(np.float32) * 3
    ids = [f"i{k:02d}" for k in range(30)]
    write_output(tmp_path / "d", pl.DataFrame({"id": ids, "round": [0] * 30}))
    np.save(tmp_path / "d" / EMBEDDINGS, vectors)
    loaded = load_embeddings(tmp_path / "d", chunk_rows=7)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    wanted = [ids[k] for k in rng.permutation(30)]
    rows = loaded.take(wanted)
    assert np.array_equal(np.asarray(rows), Embeddings(ids, unit).take(wanted))
    assert np.array_equal(rows[3:11], unit[[ids.index(i) for i in wanted[3:11]]])
    with pytest.raises(KeyError, match="1 items have no embedding"):
        loaded.take(["i01", "nope"])
    vectors[[2, 5, 9, 12, 13, 14, 17, 20, 21, 25, 28]] = 0
    vectors[3, 1] = np.nan
    np.save(tmp_path / "d" / EMBEDDINGS, vectors)
    with pytest.raises(ValueError, match=r"rows \[2, 3, 5, 9, 12, 13, 14, 17, 20, 21\] are zero or not finite"):
        load_embeddings(tmp_path / "d")
    np.save(tmp_path / "d" / EMBEDDINGS, vectors[:29])
    with pytest.raises(ValueError, match=r"shape \(29, 5\) does not match the 30 rows"):
        load_embeddings(tmp_path / "d")
