"""Selection: the DEITA-style diversity walk against a brute-force greedy, guards, floors, and an empty
selection that names the filter that emptied it."""

from __future__ import annotations

import json
import runpy
import sys

import numpy as np
import polars as pl
import pytest

from evolforge.steps.select.settings import SelectSettings
from evolforge.steps.select.embeddings import EMBEDDINGS, Embeddings, load_embeddings
from evolforge.steps.select import diversity_walk, set_metrics
from evolforge.steps.select.diversity_walk import diverse_walk
from evolforge.steps.select import selection as selection_module
from evolforge.steps.select.selection import select_items
from evolforge.io.records import write_output


def brute_force_walk(vectors: np.ndarray, threshold: float, budget: int) -> list[int]:
    kept: list[int] = []
    for i, v in enumerate(vectors):
        if len(kept) == budget:
            break
        if all(float(np.sum((v - vectors[k]) ** 2)) > threshold for k in kept):
            kept.append(i)
    return kept


def unit(n: int, d: int, seed: int, clusters: int = 12) -> np.ndarray:
    """Points around a few centres, so that many pairs are close and the threshold matters."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    x = centres[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("threshold,budget,block", [(0.1, 400, 64), (0.3, 50, 16), (0.6, 400, 1000), (1.2, 30, 7)])
def test_diverse_walk_matches_brute_force(threshold, budget, block):
    x = unit(400, 16, seed=int(threshold * 10))
    expected = brute_force_walk(x, threshold, budget)
    assert 5 < len(expected) < 400  # the threshold both keeps and refuses
    assert diverse_walk(x, threshold, budget, block_size=block) == expected


@pytest.mark.parametrize("n, d, threshold", [(14_000, 16, 0.02), (9_000, 64, 0.2)])
def test_diverse_walk_over_many_kept_rows_is_the_whole_product_walk(n, d, threshold, monkeypatch):
    """Past KEY_BLOCK kept rows the walk compares a block with them a tile at a time: the same rows kept as
    when it compared a block with every kept row in one product (each distance is the same dot product)."""
    x = unit(n, d, seed=d, clusters=4000)
    with monkeypatch.context() as whole:
        whole.setattr(diversity_walk, "nearest_distances", lambda block, kept: (2.0 - 2.0 * (block @ kept.T)).min(axis=1))
        expected = diverse_walk(x, threshold, n)
    assert 6_000 < len(expected) < n  # past one tile of kept rows, and some refused
    assert diverse_walk(x, threshold, n) == expected


def pool(n: int = 60, seed: int = 3) -> tuple[pl.DataFrame, Embeddings]:
    rng = np.random.default_rng(seed)
    ids = [f"i{k:03d}" for k in range(n)]
    table = pl.DataFrame({"id": ids, "round": [1 + k % 3 for k in range(n)], "status": ["evolved"] * n,
                          "instruction": [f"question {k}" for k in range(n)], "input": [""] * n,
                          "output": [f"answer {k}" for k in range(n)], "response_status": ["complete"] * n,
                          "ic_ifd": rng.random(n), "loss_instruction": rng.uniform(0.5, 4.0, n), "mnd": rng.uniform(0, 1, n)})
    return table, Embeddings(ids, unit(n, 8, seed, clusters=5))


@pytest.mark.parametrize("fraction,threshold", [(0.5, None), (1.0, None), (None, 0.3)])
def test_selection_with_diversity_is_the_greedy_over_the_ranking(fraction, threshold):
    table, emb = pool()
    chosen, summary, excluded = select_items(table, SelectSettings("ic_ifd", top_fraction=fraction, threshold=threshold,
                                                            diversity_threshold=0.5), embeddings=emb)
    ranked = table.sort(["ic_ifd", "id"], descending=[True, False])
    if threshold is not None:
        ranked = ranked.filter(pl.col("ic_ifd") >= threshold)
    budget = ranked.height if fraction is None else int(np.ceil(fraction * ranked.height))
    expected = [ranked["id"][k] for k in brute_force_walk(emb.take(ranked["id"].to_list()), 0.5, budget)]
    assert chosen["id"].to_list() == expected
    assert summary["removed_by_filter"].get("too_close_to_selected", 0) > 0
    assert sorted(excluded["id"].to_list() + expected) == sorted(table["id"].to_list())  # every item accounted for
    assert summary["selected_min_mnd_within"] > 0.5


def test_floors_and_min_mnd():
    table, _ = pool()
    chosen, summary, excluded = select_items(table, SelectSettings("ic_ifd", top_fraction=1.0, min_loss_instruction=2.0, min_mnd=0.3))
    assert chosen["loss_instruction"].min() >= 2.0 and chosen["mnd"].min() >= 0.3
    reasons = dict(excluded.group_by("skip_reason").len().iter_rows())
    assert reasons["loss_instruction_below_floor"] == int((table["loss_instruction"] < 2.0).sum())
    assert reasons["mnd_below_floor"] == table.filter(pl.col("loss_instruction") >= 2.0).filter(pl.col("mnd") < 0.3).height
    assert summary["selected_mean_mnd_vs_pool"] == pytest.approx(float(chosen["mnd"].mean()))


def guarded_pool() -> pl.DataFrame:
    """Every item fails a guard: each response is incomplete, or its item was not evolved."""
    table, _ = pool(6)
    return table.with_columns(
        status=pl.Series(["evolved", "failed", "evolved", "evolved", "evolved", "evolved"]),
        output=pl.Series(["answer", "answer", "", "answer", "answer", "  "]),
        response_status=pl.Series(["repetitive", "complete", "empty", "truncated", None, "complete"]),
    )


def test_every_item_fails_a_guard():
    chosen, summary, excluded = select_items(guarded_pool(), SelectSettings("ic_ifd", top_fraction=1.0))
    assert chosen.height == 0
    assert summary["emptied_by"] == "response_incomplete"
    assert dict(excluded.select("id", "skip_reason").iter_rows()) == {
        "i000": "response_incomplete", "i001": "not_evolved", "i002": "empty_response", "i003": "response_incomplete",
        "i004": "response_incomplete", "i005": "empty_response"}
    # and an empty response is a recorded skip, not an error, when other items survive
    ok = guarded_pool().with_columns(response_status=pl.Series(["complete", "complete", "empty", "truncated", "complete", "complete"]))
    chosen, summary, excluded = select_items(ok, SelectSettings("ic_ifd", top_fraction=1.0))
    assert sorted(chosen["id"]) == ["i000", "i004"] and summary["emptied_by"] is None
    assert summary["removed_by_filter"] == {"not_evolved": 1, "empty_response": 2, "response_incomplete": 1}


def test_select_stage_records_skips_and_names_the_emptying_filter(tmp_path, repo, monkeypatch, capsys):
    table, emb = pool(12)
    table = table.with_columns(output=pl.when(pl.col("id") == "i000").then(pl.lit("  ")).otherwise(pl.col("output")))
    write_output(tmp_path / "clean", table.drop("ic_ifd", "loss_instruction", "mnd"))
    write_output(tmp_path / "judged", table.select("id", "round", difficulty_score=pl.lit(50.0)))
    write_output(tmp_path / "scores", table.select("id", "round", "ic_ifd", "loss_instruction", ifd=pl.lit(0.5)))
    write_output(tmp_path / "diversity", table.select("id", "round", "mnd"))
    np.save(tmp_path / "diversity" / EMBEDDINGS, emb.vectors)
    assert load_embeddings(tmp_path / "diversity").ids == emb.ids
    monkeypatch.chdir(tmp_path)

    def run(select: str) -> None:
        (tmp_path / "params.yaml").write_text(f"select: {select}\n")
        saved = sys.argv
        sys.argv = ["select_data.py", "--items", "clean", "--judged", "judged", "--scores", "scores", "--diversity",
                    "diversity", "--out", "selected", "--metrics", "select.json"]
        try:
            runpy.run_path(str(repo / "stages" / "select_data.py"), run_name="__main__")
        finally:
            sys.argv = saved

    run("{metric: ic_ifd, top_fraction: 0.5, diversity_threshold: 0.2}")
    excluded = pl.read_parquet(tmp_path / "selected" / "excluded.parquet")
    assert excluded.filter(pl.col("id") == "i000")["skip_reason"].to_list() == ["empty_response"]
    metrics = json.loads((tmp_path / "select.json").read_text())
    assert metrics["selected"] == pl.read_parquet(tmp_path / "selected" / "items.parquet").height == 6
    assert metrics["distinct_instruction_ratio_selected"] == 1.0
    with pytest.raises(SystemExit) as refused:  # a refusal: one message, exit 2
        run("{metric: ic_ifd, top_fraction: 0.5, min_loss_instruction: 99.0}")
    assert refused.value.code == 2
    assert "filter 'loss_instruction_below_floor' removed the last items" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        run("{metric: ic_ifd, min_mdn: 0.1}")
    assert refused.value.code == 2 and "select.min_mdn: unknown key; did you mean `min_mnd`?" in capsys.readouterr().err


def test_distances_within_a_large_selection_come_from_a_fixed_sample(monkeypatch):
    """Above WITHIN_MAX selected items the within-selection distances are those of a fixed sample of that many
    (the search is quadratic), said in the summary; at or under it, of every selected item, and no such key."""
    from evolforge.score.neighbors import neighbor_stats

    table, emb = pool()
    settings = SelectSettings("ic_ifd", top_fraction=1.0)
    whole = select_items(table, settings, embeddings=emb).summary
    assert "selected_mnd_within_sample" not in whole
    assert whole["selected_min_mnd_within"] == float(np.min(neighbor_stats(emb.take(table["id"])).min_distance))
    monkeypatch.setattr(set_metrics, "WITHIN_MAX", 20)
    runs = [select_items(table, settings, embeddings=emb).summary for _ in range(2)]
    assert runs[0] == runs[1] and runs[0]["selected_mnd_within_sample"] == 20
    assert runs[0]["selected"] == 60 and runs[0]["selected_mean_mnd_within"] != whole["selected_mean_mnd_within"]


def test_the_walks_of_selection_are_modules_of_their_own_under_the_size_limit():
    """selection.py ran the filters, the walks, the set's figures and the exports at 400 lines: each of these lives in
    its own module now, none over 360 lines, and selection.py keeps only the filter chain (no walk defined there)."""
    from pathlib import Path

    folder = Path(selection_module.__file__).parent
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in folder.glob("*.py") if p.name != "card.py"}
    assert {"diversity_walk.py", "near_duplicates.py", "set_metrics.py", "export.py"} <= set(sizes)
    assert max(sizes.values()) <= 360, sizes
    source = Path(selection_module.__file__).read_text(encoding="utf-8")
    for moved in ("def diverse_walk", "def set_diversity", "def to_trl", "def join_metrics", "def walk_near_duplicates"):
        assert moved not in source
