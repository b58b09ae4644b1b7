"""The data stages' per-chunk work in this process or on Ray Data (``data.engine``, docs/how-to/scale-ray.md).

:func:`map_chunks` applies a function to every chunk of a Parquet table and yields the results in table
order: with ``engine: local`` it is ``map(fn, iter_chunks(...))``; with ``engine: ray`` the same calls run as
a Ray Data pipeline, one Ray task (or one call of an actor) per chunk, and the results come back in the same
order, so a stage writes the same bytes with the same writers either way.

How the Ray path keeps the chunks and their order. The dataset holds one row per chunk (its number, first
row and row count: the chunks of :func:`evolforge.io.stream.iter_chunks`), and the task that takes a row reads
that chunk from the file itself, so the driver never holds the table and a chunk is read where it is
worked on (the file must be at the same path on every node: a shared filesystem on a cluster of several).
A result goes back as an Arrow table tagged with its chunk's number; Ray Data may split a large result into
several blocks, so the driver joins a chunk's blocks before yielding it. ``preserve_order`` keeps the blocks
in chunk order; the tags check it.

Example: the row count of each chunk of 3 rows of a table of 7, on Ray (``engine: local``: the same)::

    data = DataSettings(engine="ray")
    with session(data):
        counts = map_chunks("items.parquet", 3, ["id"], lambda chunk: pl.DataFrame({"rows": [chunk.height]}), data)
        [c["rows"].item() for c in counts]  # [3, 3, 1]

``ray`` is imported only when the engine is ray.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import polars as pl

from evolforge.config.data import DataSettings
from evolforge.io.stream import iter_chunks, table_file

EXTRA_HINT = "pip install 'evolforge[ray]' (ray[data] 2.60.0)"
CHUNK = "__evolforge_chunk"  # the tag column a result carries back to the driver
ChunkFn = Callable[[pl.DataFrame], pl.DataFrame]


def import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as err:
        raise ImportError(f"data.engine: ray needs the ray extra: {EXTRA_HINT}") from err
    return ray


@contextmanager
def session(data: DataSettings) -> Iterator[None]:
    """A Ray session around a stage's pipelines when ``data.engine`` is ray (nothing otherwise): the one this
    process already has, else ``ray.init(address=data.ray_address)`` (null: a local cluster of this
    machine's CPUs), shut down at the end when it was opened here."""
    if data.engine != "ray":
        yield
        return
    ray = import_ray()
    opened = not ray.is_initialized()
    if opened:
        ray.init(address=data.ray_address, log_to_driver=False, include_dashboard=False)
    try:
        yield
    finally:
        if opened:
            ray.shutdown()


def chunk_bounds(file: Path, chunk_rows: int) -> list[tuple[int, int]]:
    """(first row, row count) of each chunk :func:`iter_chunks` reads."""
    total = pl.scan_parquet(file).select(pl.len()).collect().item()
    return [(start, min(chunk_rows, total - start)) for start in range(0, total, chunk_rows)]


class ChunkTask:
    """What a Ray task (or actor) runs for a dataset row: read its chunk of ``file``, apply ``fn``, tag the
    result with the chunk's number. As an actor it holds one copy of ``fn`` for all its calls."""

    def __init__(self, fn: ChunkFn, file: str, columns: list[str] | None) -> None:
        self.fn, self.file, self.columns = fn, file, columns

    def __call__(self, batch: Any) -> Any:  # a pyarrow.Table of one row: chunk, start, rows
        [row] = batch.to_pylist()
        scan = pl.scan_parquet(self.file)
        if self.columns is not None:
            scan = scan.select(self.columns)
        result = self.fn(scan.slice(row["start"], row["rows"]).collect())
        # the oldest Arrow layout (large_string, not string_view): what every Ray block operation accepts
        return result.with_columns(pl.lit(row["chunk"], dtype=pl.Int64).alias(CHUNK)).to_arrow(
            compat_level=pl.CompatLevel.oldest())


def map_chunks(path: str | Path, chunk_rows: int, columns: list[str] | None, fn: ChunkFn, data: DataSettings,
               actors: int | None = None, cpus: float = 1.0) -> Iterator[pl.DataFrame]:
    """``fn(chunk)`` for every chunk of ``chunk_rows`` rows of the table at ``path`` (``columns`` only, when
    given), in table order: in this process (``data.engine: local``) or on Ray (``ray``, inside
    :func:`session`). On Ray ``fn`` must pickle; it runs in Ray tasks of ``cpus`` CPUs each, or, with
    ``actors``, in that many actors that each unpickle it once (for a function that loads a model on its
    first call)."""
    if data.engine == "local":
        yield from map(fn, iter_chunks(path, chunk_rows, columns))
        return
    ray, file = import_ray(), table_file(path).absolute()
    bounds = chunk_bounds(file, chunk_rows)
    if not bounds:
        return
    dataset = ray.data.from_items([{"chunk": c, "start": start, "rows": rows}
                                   for c, (start, rows) in enumerate(bounds)],
                                  override_num_blocks=len(bounds))  # a block, hence a task, per chunk
    dataset.context.execution_options.preserve_order = True  # this dataset's own context, not the process's
    dataset.context.enable_progress_bars = False  # the stage prints its own summary
    if actors is None:
        mapped = dataset.map_batches(ChunkTask(fn, str(file), columns), batch_size=1,
                                     batch_format="pyarrow", num_cpus=cpus)
    else:
        mapped = dataset.map_batches(ChunkTask, fn_constructor_args=(fn, str(file), columns), batch_size=1,
                                     batch_format="pyarrow", num_cpus=cpus,
                                     compute=ray.data.ActorPoolStrategy(size=min(actors, len(bounds))))
    blocks = iter(mapped.iter_batches(batch_size=None, batch_format="pyarrow"))
    try:
        yield from _joined((pl.from_arrow(block) for block in blocks if block.num_rows), len(bounds))
    finally:
        close = getattr(blocks, "close", None)
        if close is not None:  # a stage stopped midway: stop the pipeline and free its workers now
            close()


def _joined(blocks: Iterator[pl.DataFrame], chunks: int) -> Iterator[pl.DataFrame]:
    """One frame per chunk, untagged, from tagged blocks in chunk order (a chunk may span several blocks;
    every chunk's result has rows, as the stages' results have one per item)."""
    pieces: list[pl.DataFrame] = []
    current = 0
    for block in blocks:
        for (c,), part in block.group_by(CHUNK, maintain_order=True):
            if c == current + 1 and pieces:
                yield pl.concat(pieces).drop(CHUNK)
                pieces, current = [], c
            elif c != current:
                where = f"after chunk {current}'s" if pieces else "first"
                raise RuntimeError(f"Ray Data returned chunk {c}'s result {where} (the chunks' order was lost)")
            pieces.append(part)
    if pieces:
        yield pl.concat(pieces).drop(CHUNK)
    if current + 1 != chunks or not pieces:
        raise RuntimeError(f"Ray Data returned {current + bool(pieces)} of {chunks} chunks' results")
