"""diversity stage: instruction embeddings and minimum neighbour distance (MND).

Its own stage so that a new embedder recomputes no IFD loss, and new IFD settings recompute no embedding.

Reads:  data/clean/, params.yaml `diversity` (embedder kind), roles `embedder` (model, revision, dtype,
        device, batch_size), models/identity.json (the embedder's identity)
Writes: data/diversity/items.parquet (id, round, mnd, repeat_count), data/diversity/embeddings.npy
        (unit-normalised float32, one row per item in the table's order), metrics/diversity.json,
        metrics/plots/mnd_hist.json
"""

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import polars as pl

from evolforge.core import validation
from evolforge.core.params import load_params, load_role, load_section
from evolforge.score.histogram import histogram
from evolforge.core.records import atomic_dir, read_table, write_json
from evolforge.core.errors import run_stage
from evolforge.llm import recorded_identity
from evolforge.score.diversity import embed_texts, item_texts, neighbor_stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--items", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--plots", required=True)
    args = ap.parse_args()

    params = load_params(args.params)
    cfg = load_section(params, "diversity")
    role = load_role(params, "embedder")
    items = read_table(args.items)
    validation.check(items, validation.item_columns(["id", "round", "instruction", "input"]) + validation.unique("id"), args.items)

    model = role.model
    embeddings = embed_texts(item_texts(items["instruction"].to_list(), items["input"].to_list()), model,
                             kind=cfg.embedder, revision=role.revision, dtype=role.dtype,
                             device=role.device, batch_size=role.batch_size)
    neighbours = neighbor_stats(embeddings)
    table = items.select("id", "round").with_columns(
        mnd=pl.Series(neighbours.min_distance, dtype=pl.Float64), repeat_count=pl.Series(neighbours.repeat_count, dtype=pl.Int64))
    with atomic_dir(args.out) as tmp:
        table.write_parquet(tmp / "items.parquet")
        np.save(tmp / "embeddings.npy", embeddings)
        write_json(tmp / "meta.json", {"embedder": cfg.embedder, "model": model,
                                       "identity": recorded_identity(role), "dimensions": int(embeddings.shape[1]), "params": dataclasses.asdict(cfg)})
    mnd = table["mnd"].drop_nulls().drop_nans()
    metrics = {"items": table.height, "embedder": cfg.embedder, "model": model,
               "mean_mnd": float(mnd.mean()) if mnd.len() else None,
               "items_with_repeats": int((table["repeat_count"] > 0).sum())}
    write_json(args.metrics, metrics)
    write_json(Path(args.plots) / "mnd_hist.json", histogram(table["mnd"].to_list()))
    print(f"diversity: {table.height} items, mean MND {metrics['mean_mnd']}, {metrics['items_with_repeats']} with repeats")


if __name__ == "__main__":
    run_stage(main)
