"""Item embeddings for selection: held in memory (:class:`Embeddings`, for a table in memory) or read from the
diversity stage's ``embeddings.npy`` a block of rows at a time (:class:`EmbeddingFile`, the stage's).

Contract (the diversity stage's output folder, e.g. ``data/diversity/``): ``embeddings.npy``, a float32 (N, d)
array, row i belonging to row i of ``items.parquet`` in the same folder (column ``id``). Rows are unit-normalised
as they are read, so a file's rows give the vectors the whole array normalised at once gives.

An id is mapped to its row with a polars join (ids and row numbers: about 40 bytes per item), never a Python
dict; a file's rows are read through a memory map opened for each block and closed after it, so the pages
read do not stay in the process's resident memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import polars as pl

from evolforge.io.records import TABLE
from evolforge.io.stream import iter_chunks

EMBEDDINGS = "embeddings.npy"
BLOCK_ROWS = 16_384  # rows read from the file at a time (16k x 768 float32: 48 MiB)


def _rows_of(index: pl.DataFrame, ids: Sequence[str] | pl.Series) -> np.ndarray:
    """The rows (column ``row`` of ``index``, keyed by ``id``) of ``ids``, in their order; a clear error for an
    id without one."""
    wanted = pl.DataFrame({"id": pl.Series("id", ids, dtype=pl.String)})
    found = wanted.join(index, on="id", how="left", maintain_order="left")
    missing = found.filter(pl.col("row").is_null())["id"]
    if missing.len():
        raise KeyError(f"embeddings: {missing.len()} items have no embedding (first: {missing.head(3).to_list()}); "
                       "rerun the diversity stage")
    return found["row"].to_numpy()


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = vectors.astype(np.float32, copy=False)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@dataclass(frozen=True)
class Embeddings:
    """Unit-normalised item embeddings by id, in memory."""

    ids: list[str]
    vectors: np.ndarray  # (N, d) float32, unit rows

    def take(self, ids: Sequence[str] | pl.Series) -> np.ndarray:
        index = pl.DataFrame({"id": pl.Series(self.ids, dtype=pl.String),
                              "row": np.arange(len(self.ids), dtype=np.int64)})
        return self.vectors[_rows_of(index, ids)]


@dataclass(frozen=True)
class EmbeddingRows:
    """Some rows of an :class:`EmbeddingFile`, in a given order, read (and normalised) only when sliced: what
    :func:`~evolforge.steps.select.diversity_walk.diverse_walk` walks, block by block. ``np.asarray`` reads them all."""

    file: Path
    rows: np.ndarray  # row numbers in the file, in this sequence's order
    dimensions: int

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows), self.dimensions

    def __getitem__(self, part: slice) -> np.ndarray:
        wanted = self.rows[part]
        mapped = np.load(self.file, mmap_mode="r", allow_pickle=False)
        try:
            return _unit(np.array(mapped[wanted]).reshape(len(wanted), self.dimensions))
        finally:
            del mapped  # unmapped: the pages read leave this process's resident memory

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.empty(self.shape, dtype=np.float32)
        for start in range(0, len(self), BLOCK_ROWS):
            out[start:start + BLOCK_ROWS] = self[start:start + BLOCK_ROWS]
        return out if dtype is None else out.astype(dtype, copy=False)


@dataclass(frozen=True)
class EmbeddingFile:
    """A diversity output folder's embeddings, read from ``embeddings.npy`` by id, a block at a time."""

    file: Path
    index: pl.DataFrame  # id, row (its row in the file)
    dimensions: int

    @property
    def ids(self) -> list[str]:
        return self.index["id"].to_list()

    def take(self, ids: Sequence[str] | pl.Series) -> EmbeddingRows:
        return EmbeddingRows(self.file, _rows_of(self.index, ids), self.dimensions)


def _blocks(file: Path, rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows) of the file, ``BLOCK_ROWS`` at a time, each through a memory map of its own."""
    for start in range(0, rows, BLOCK_ROWS):
        mapped = np.load(file, mmap_mode="r", allow_pickle=False)
        block = np.array(mapped[start:start + BLOCK_ROWS], dtype=np.float32)
        del mapped
        yield start, block


def load_embeddings(folder: str | Path, chunk_rows: int = 50_000) -> EmbeddingFile:
    """Check ``embeddings.npy`` against the ``id`` column of ``items.parquet`` of a diversity output folder (one
    row per id; no row zero or not finite), a block at a time, and open it for reading by id."""
    folder = Path(folder)
    file = folder / EMBEDDINGS
    ids = pl.concat([chunk for chunk in iter_chunks(folder, chunk_rows, ["id"])]
                    or [pl.DataFrame(schema={"id": pl.String})])
    shape = np.load(file, mmap_mode="r", allow_pickle=False).shape
    if len(shape) != 2 or shape[0] != ids.height:
        raise ValueError(f"{file}: shape {shape} does not match the {ids.height} rows of {folder / TABLE}")
    bad: list[int] = []
    for start, block in _blocks(file, shape[0]):
        norms = np.linalg.norm(block, axis=1)
        bad += (start + np.flatnonzero(~np.isfinite(norms) | (norms == 0))).tolist()[: 10 - len(bad)]
    if bad:
        raise ValueError(f"{file}: rows {bad} are zero or not finite")
    return EmbeddingFile(file, ids.with_columns(row=pl.int_range(pl.len(), dtype=pl.Int64)), shape[1])
