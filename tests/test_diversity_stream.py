"""The diversity stage streamed: at any ``data.chunk_rows`` it writes the bytes (metrics, plot) of a run with
the whole table in one chunk, and those are what the in-memory stage wrote (every text embedded at once,
neighbour statistics of the whole array, ``write_table`` and ``np.save``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from stage_runs import run_stage
from test_diversity import whole_row_blocks
from tiny import build_random_llama

CHUNKS = (7, 20, 100_000)
FILES = ["diversity/items.parquet", "diversity/embeddings.npy", "diversity/meta.json", "m/plots/mnd_hist.json"]


@pytest.fixture(scope="module")
def embedder_model(tmp_path_factory) -> Path:
    return build_random_llama(tmp_path_factory.mktemp("embedder") / "model", vocab_size=400, hidden_size=64, num_layers=2,
                              num_heads=4, intermediate_size=128)


def items(n: int = 45) -> pl.DataFrame:
    """Instructions of many lengths (the embedder sorts by length), some inputs, two exact twins (repeats)."""
    words = "the rain falls on quiet hills while a small river sings of stone and light".split()
    rows = [{"id": f"item-{k:03d}", "round": 1 + k % 3, "instruction": " ".join(words[: 3 + k % 11]) + f" {k % 40}?",
             "input": "" if k % 4 else " ".join(words[k % 5: k % 5 + 4])} for k in range(n)]
    return pl.DataFrame(rows, schema={"id": pl.String, "round": pl.Int64, "instruction": pl.String, "input": pl.String})


def run_diversity(folder: Path, model: Path, chunk_rows: int, monkeypatch) -> Path:
    from evolforge.io.records import write_output

    folder.mkdir()
    monkeypatch.chdir(folder)  # no models/identity.json here: the stage resolves the embedder itself
    write_output(folder / "clean", items())
    (folder / "params.yaml").write_text(f"data: {{chunk_rows: {chunk_rows}}}\n"
                                        f"roles: {{embedder: {{backend: hf, model: {model}, batch_size: 3, device: cpu}}}}\n")
    run_stage("diversity.py", "--items", "clean", "--out", "diversity", "--metrics", "m/diversity.json", "--plots", "m/plots")
    return folder


def metrics(folder: Path) -> dict:
    found = json.loads((folder / "m" / "diversity.json").read_text())
    assert found.pop("peak_rss_mib") > 0
    assert found.pop("wall_s") >= 0  # the stage process's wall seconds differ run to run
    return found


def test_diversity_stage_streams_with_the_whole_table_bytes(tmp_path, embedder_model, monkeypatch):
    """With embedder chunks of 8 texts, chunk_rows 7, 20 and 100k (embed 8, 16 and all rows at a time; the
    table read 7, 20 and all rows at a time) write the same files, metrics and histogram, byte for byte."""
    import evolforge.score.diversity as diversity

    monkeypatch.setattr(diversity, "EMBED_CHUNK", 8)
    runs = {rows: run_diversity(tmp_path / f"rows-{rows}", embedder_model, rows, monkeypatch) for rows in CHUNKS}
    whole = runs[100_000]
    for rows, folder in runs.items():
        assert {f: (folder / f).read_bytes() for f in FILES} == {f: (whole / f).read_bytes() for f in FILES}, rows
        assert metrics(folder) == metrics(whole)
    table = pl.read_parquet(whole / "diversity" / "items.parquet")
    assert table["id"].to_list() == items()["id"].to_list() and table["repeat_count"].max() >= 1
    assert np.load(whole / "diversity" / "embeddings.npy").shape == (45, 64)


def test_diversity_stage_writes_what_the_in_memory_stage_wrote(tmp_path, embedder_model, monkeypatch):
    """Fewer items than an embedder chunk, read 7 rows at a time: the bytes of every text embedded at once, the
    function neighbor_stats was (whole_row_blocks), write_table and np.save."""
    from evolforge.io.records import write_table
    from evolforge.score.diversity import item_texts, mean_pooled_embeddings
    from evolforge.core.models import load_scorer

    folder = run_diversity(tmp_path / "run", embedder_model, 7, monkeypatch)
    table = items()
    model, tokenizer = load_scorer(str(embedder_model), device="cpu")
    embeddings = mean_pooled_embeddings(model, tokenizer, item_texts(table["instruction"].to_list(), table["input"].to_list()),
                                        batch_size=3, chunk_size=len(table))
    min_distance, repeat_count = whole_row_blocks(embeddings)
    write_table(table.select("id", "round").with_columns(mnd=pl.Series(min_distance, dtype=pl.Float64),
                                                         repeat_count=pl.Series(repeat_count, dtype=pl.Int64)), tmp_path / "expected.parquet")
    np.save(tmp_path / "expected.npy", embeddings)
    assert (folder / "diversity" / "items.parquet").read_bytes() == (tmp_path / "expected.parquet").read_bytes()
    assert (folder / "diversity" / "embeddings.npy").read_bytes() == (tmp_path / "expected.npy").read_bytes()
    mnd = pl.Series(min_distance, dtype=pl.Float64)
    assert metrics(folder)["mean_mnd"] == float(mnd.mean()) and metrics(folder)["items"] == 45
