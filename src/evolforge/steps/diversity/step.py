"""The diversity stage: instruction embeddings from roles.embedder and each item's minimum neighbour distance
(:mod:`evolforge.score.diversity`). Its own stage, so that a new embedder recomputes no IFD loss, and new IFD
settings recompute no embedding.

Bounded memory (docs/how-to/scale.md): the items are read and embedded in whole embedder chunks (``data.chunk_rows``
rounded down to a multiple of :data:`evolforge.score.diversity.EMBED_CHUNK`, at least one), each chunk's
vectors appended to embeddings.npy; the neighbour statistics read that file a block of rows at a time; the
table streams out. What grows with the items: the running minimum and repeat count, 12 bytes per item."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import polars as pl

from evolforge.io import validation
from evolforge.config.roles import Role
from evolforge.config.data import DataSettings
from evolforge.steps.diversity.settings import DiversitySettings
from evolforge.io.records import SETTINGS, TABLE, atomic_dir, write_json
from evolforge.io.stream import check_chunks, iter_chunks, sink_chunks, table_file, table_schema
from evolforge.core.stage import Outputs
from evolforge.llm.identity import recorded_identity
from evolforge.score import diversity
from evolforge.score.diversity import item_texts
from evolforge.score.neighbors import NeighborStats, neighbor_stats
from evolforge.score.histogram import histogram
from evolforge.steps.diversity.npy import NpyRows, NpyRowWriter

EMBEDDINGS = "embeddings.npy"


def embedding_rows(chunk_rows: int, embed_chunk: int) -> int:
    """Rows read and embedded at a time: ``chunk_rows`` rounded down to whole embedder chunks, at least one.

    >>> embedding_rows(100_000, 4096), embedding_rows(7, 4096)
    (98304, 4096)
    """
    return max(1, chunk_rows // embed_chunk) * embed_chunk


def role_embedder(role: Role, cfg: DiversitySettings,
                  chunk_size: int = diversity.EMBED_CHUNK) -> Callable[[list[str]], np.ndarray]:
    """``texts -> unit embeddings`` of ``roles.embedder`` as ``diversity.embedder`` says (the model loaded once):
    the stage's, and the one the same-problem thresholds are calibrated with (bench/same_problem_calibration.py)."""
    hf = role.transformers
    return diversity.text_embedder(role.model, kind=cfg.embedder, revision=role.revision, dtype=hf.dtype,
                                   device=hf.device, batch_size=hf.batch_size, chunk_size=chunk_size)


def write_embeddings(file: Path, source: Path, rows: int, embed: Callable[[list[str]], np.ndarray]) -> int:
    """Embed the items of ``source`` ``rows`` at a time into ``file`` (np.save's bytes); the dimensions."""
    total = pl.scan_parquet(source).select(pl.len()).collect().item()
    with NpyRowWriter(file, total) as writer:
        for chunk in iter_chunks(source, rows, ["instruction", "input"]):
            vectors = embed(item_texts(chunk["instruction"].to_list(), chunk["input"].to_list()))
            writer.append(vectors)
            dims = vectors.shape[1]
        if total == 0:  # no rows: the embedder still says how many dimensions
            dims = embed([]).shape[1]
            writer.append(np.zeros((0, dims), dtype=np.float32))
    return int(dims)


def with_neighbours(chunks: Iterator[pl.DataFrame], neighbours: NeighborStats) -> Iterator[pl.DataFrame]:
    """Each chunk of (id, round) with its rows' mnd and repeat_count."""
    lo = 0
    for chunk in chunks:
        hi = lo + chunk.height
        yield chunk.with_columns(mnd=pl.Series(neighbours.min_distance[lo:hi], dtype=pl.Float64),
                                 repeat_count=pl.Series(neighbours.repeat_count[lo:hi], dtype=pl.Int64))
        lo = hi


def run(items: str | Path, out: str | Path, cfg: DiversitySettings, data: DataSettings, role: Role) -> Outputs:
    """Embed the items of ``items`` and write ``out``: items.parquet (id, round, mnd, repeat_count),
    embeddings.npy (unit-normalised float32, one row per item in the table's order) and meta.json."""
    source = table_file(items)
    check_chunks(source,
                 validation.item_columns(["id",
                                          "round", "instruction", "input"]) + validation.unique("id"), data.chunk_rows)
    embed_chunk = diversity.EMBED_CHUNK  # read here, at run time: the texts the embedder sorts and batches together
    embed = role_embedder(role, cfg, embed_chunk)
    schema = {**{c: table_schema(source)[c] for c in ("id", "round")}, "mnd": pl.Float64, "repeat_count": pl.Int64}
    with atomic_dir(out) as tmp:
        dims = write_embeddings(tmp / EMBEDDINGS, source, embedding_rows(data.chunk_rows, embed_chunk), embed)
        with NpyRows(tmp / EMBEDDINGS) as vectors:
            neighbours = neighbor_stats(vectors)
        sink_chunks(tmp / TABLE, schema,
                    with_neighbours(iter_chunks(source, data.chunk_rows, ["id", "round"]), neighbours))
        del neighbours
        write_json(tmp / "meta.json",
                   {"embedder": cfg.embedder, "model": role.model, "identity": recorded_identity(role),
                                       "dimensions": dims, SETTINGS: dataclasses.asdict(cfg)})
    return _outputs(table_file(out), cfg.embedder, role.model)


def _outputs(written: Path, embedder: str, model: str) -> Outputs:
    """Metrics and the MND histogram from the written table, one column at a time (8 bytes per item)."""
    repeats = pl.read_parquet(written, columns=["repeat_count"])["repeat_count"]
    metrics: dict[str, Any] = {"items": repeats.len(), "embedder": embedder, "model": model,
                               "items_with_repeats": int((repeats > 0).sum())}
    del repeats
    mnd = pl.read_parquet(written, columns=["mnd"])["mnd"]
    finite = mnd.drop_nulls().drop_nans()
    metrics["mean_mnd"] = float(finite.mean()) if finite.len() else None
    plots = {"mnd_hist.json": histogram(finite.to_numpy())}
    return Outputs(metrics, f"diversity: {metrics['items']} items, mean MND {metrics['mean_mnd']}, "
                            f"{metrics['items_with_repeats']} with repeats",
                   plots=plots, peak_rss=True)
