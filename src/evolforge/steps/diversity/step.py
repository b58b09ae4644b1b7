"""The diversity stage: instruction embeddings from roles.embedder and each item's minimum neighbour distance
(:mod:`evolforge.score.diversity`). Its own stage, so that a new embedder recomputes no IFD loss, and new IFD
settings recompute no embedding."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from evolforge.io import validation
from evolforge.config.loader import load_role, load_section
from evolforge.io.records import TABLE, atomic_dir, read_table, write_json, write_table
from evolforge.core.stage import Outputs
from evolforge.llm.identity import recorded_identity
from evolforge.score.diversity import embed_texts, item_texts, neighbor_stats
from evolforge.score.histogram import histogram


def run(items: str | Path, out: str | Path, params: dict[str, Any]) -> Outputs:
    """Embed the items of ``items`` and write ``out``: items.parquet (id, round, mnd, repeat_count),
    embeddings.npy (unit-normalised float32, one row per item in the table's order) and meta.json."""
    cfg = load_section(params, "diversity")
    role = load_role(params, "embedder")
    table = read_table(items)
    validation.check(table, validation.item_columns(["id", "round", "instruction", "input"]) + validation.unique("id"), items)
    embeddings = embed_texts(item_texts(table["instruction"].to_list(), table["input"].to_list()), role.model,
                             kind=cfg.embedder, revision=role.revision, dtype=role.dtype,
                             device=role.device, batch_size=role.batch_size)
    neighbours = neighbor_stats(embeddings)
    table = table.select("id", "round").with_columns(
        mnd=pl.Series(neighbours.min_distance, dtype=pl.Float64), repeat_count=pl.Series(neighbours.repeat_count, dtype=pl.Int64))
    with atomic_dir(out) as tmp:
        write_table(table, tmp / TABLE)
        np.save(tmp / "embeddings.npy", embeddings)
        write_json(tmp / "meta.json", {"embedder": cfg.embedder, "model": role.model, "identity": recorded_identity(role),
                                       "dimensions": int(embeddings.shape[1]), "params": dataclasses.asdict(cfg)})
    mnd = table["mnd"].drop_nulls().drop_nans()
    metrics = {"items": table.height, "embedder": cfg.embedder, "model": role.model,
               "mean_mnd": float(mnd.mean()) if mnd.len() else None,
               "items_with_repeats": int((table["repeat_count"] > 0).sum())}
    return Outputs(metrics, f"diversity: {table.height} items, mean MND {metrics['mean_mnd']}, {metrics['items_with_repeats']} with repeats",
                   plots={"mnd_hist.json": histogram(table["mnd"].to_list())})
