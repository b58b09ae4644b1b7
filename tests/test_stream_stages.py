"""Streaming the respond, score and select stages: at any ``data.chunk_rows`` each writes the bytes (and
metrics, plots) it writes when the whole table fits in one chunk, and those are the in-memory path's."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import polars as pl
import pytest

from stage_runs import run_stage
from tiny import build_random_llama

REPO = Path(__file__).resolve().parents[1]
CHUNKS = (7, 100, 100_000)


def outputs(folder: Path, names: list[str]) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in names}


def without_peak(path: Path) -> dict:
    metrics = json.loads(path.read_text())
    assert metrics.pop("peak_rss_mib") > 0  # every data stage records its peak memory
    return metrics


@pytest.fixture(scope="module")
def scorer_model(tmp_path_factory) -> Path:
    return build_random_llama(tmp_path_factory.mktemp("scorer") / "model", vocab_size=400, hidden_size=64, num_layers=2,
                              num_heads=4, intermediate_size=128)


def scored_items(n: int = 45) -> pl.DataFrame:
    """Texts of many lengths (the scorer sorts by length inside a chunk), some inputs, one empty response."""
    words = "the rain falls on quiet hills while a small river sings of stone and light".split()
    rows = [{"id": f"item-{k:03d}", "round": 1 + k % 3, "instruction": " ".join(words[: 3 + k % 11]) + f" {k}?",
             "input": "" if k % 4 else " ".join(words[k % 5: k % 5 + 4]), "output": "" if k == 13 else " ".join(words[k % 7:]) * (1 + k % 3)}
            for k in range(n)]
    return pl.DataFrame(rows, schema={"id": pl.String, "round": pl.Int64, "instruction": pl.String, "input": pl.String, "output": pl.String})


def run_score(folder: Path, model: Path, chunk_rows: int, monkeypatch) -> Path:
    from evolforge.core.records import write_output

    folder.mkdir()
    monkeypatch.chdir(folder)  # no models/identity.json here: the stage resolves the scorer itself
    write_output(folder / "clean", scored_items())
    (folder / "params.yaml").write_text(f"data: {{chunk_rows: {chunk_rows}}}\nscore: {{max_batch_tokens: 200}}\n"
                                        f"roles: {{scorer: {{backend: hf, model: {model}, batch_size: 3, device: cpu}}}}\n")
    run_stage("score.py", "--items", "clean", "--out", "scores", "--metrics", "m/score.json", "--plots", "m/plots")
    return folder


def test_score_stage_streams_with_the_whole_table_bytes(tmp_path, scorer_model, monkeypatch):
    """With encode chunks of 8 items, the stage at chunk_rows 7, 100 and 100k (read 8, 96 and all rows at a
    time) writes the same table, metrics and histograms; batches (3 rows, 200 padded tokens) never cross an
    encode chunk, so the floats are equal, not only close."""
    import evolforge.score.ifd as ifd

    monkeypatch.setattr(ifd, "ENCODE_CHUNK", 8)
    runs = {rows: run_score(tmp_path / f"rows-{rows}", scorer_model, rows, monkeypatch) for rows in CHUNKS}
    files = ["scores/items.parquet", "m/plots/ifd_hist.json", "m/plots/ic_ifd_hist.json"]
    whole = runs[100_000]
    for rows, folder in runs.items():
        assert outputs(folder, files) == outputs(whole, files), rows
        assert without_peak(folder / "m" / "score.json") == without_peak(whole / "m" / "score.json")
    table = pl.read_parquet(whole / "scores" / "items.parquet")
    assert table["id"].to_list() == scored_items()["id"].to_list() and table["ifd"].null_count() < 3
    assert json.loads((whole / "scores" / "meta.json").read_text())["versions"]  # recorded as write_output does


def test_score_stage_writes_what_the_in_memory_scorer_wrote(tmp_path, scorer_model, monkeypatch):
    """Chunks of whole encode chunks (the default 4096 here covers the table) give the bytes of the table
    scored at once and written with write_parquet, as the stage did before it streamed."""
    from evolforge.core.settings import ScoreSettings
    from evolforge.score.ifd import ifd_scores, load_scorer
    from evolforge.score.precision import stored_scores

    folder = run_score(tmp_path / "run", scorer_model, 7, monkeypatch)
    items = scored_items()
    model, tokenizer = load_scorer(str(scorer_model), device="cpu")
    scores = ifd_scores(model, tokenizer, items["instruction"].to_list(), items["input"].to_list(), items["output"].to_list(),
                        **dataclasses.asdict(ScoreSettings(max_batch_tokens=200)), batch_size=3)
    pl.concat([items.select("id", "round"), stored_scores(scores)], how="horizontal").write_parquet(tmp_path / "expected.parquet")
    assert (folder / "scores" / "items.parquet").read_bytes() == (tmp_path / "expected.parquet").read_bytes()
