"""Nearest neighbours between unit-normalised embeddings, exact and tile by tile, in numpy alone (no torch):
each item's Minimum Neighbor Distance (MND, docs/reference/algorithms.md §7) and repeat count, for the diversity
stage, and the tiles the selection's diversity walk compares its kept rows in.

MND of an item = squared L2 distance between unit-normalised embeddings to its nearest neighbour other than
itself, d^2 = 2 - 2 cos (what paper B reads from a flat faiss L2 index). Higher = more diverse; an exact
duplicate has MND 0.

Worked example: unit vectors a = (1, 0), b = (0.6, 0.8), c = (0, 1): cos(a, b) = 0.6, cos(b, c) = 0.8,
cos(a, c) = 0, so MND = (2 - 1.2, 2 - 1.6, 2 - 1.6) = (0.8, 0.4, 0.4).

>>> min_neighbor_distance(np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])).round(6)
array([0.8, 0.4, 0.4], dtype=float32)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REPEAT_THRESHOLD = 0.05  # squared L2 below which a neighbour counts as a repeat (paper B's code)


@dataclass(frozen=True)
class NeighborStats:
    min_distance: np.ndarray  # (N,) float32: squared L2 to the nearest other item (NaN when N == 1)
    repeat_count: np.ndarray  # (N,) int64: other items closer than the repeat threshold


KEY_BLOCK = 4096  # least rows of keys compared with a block of queries at once (the last tile takes the rest)
MIN_TILE_WORK = 1 << 24  # least multiply-adds per tile: a product no smaller than BLAS's small-matrix paths


def _unit_rows(rows: np.ndarray) -> np.ndarray:
    x = np.asarray(rows, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _check_rows(embeddings, block_size: int) -> None:
    """2-d, and no row of zero norm (the first ten such rows named), read a block of rows at a time."""
    if len(embeddings.shape) != 2:
        raise ValueError(f"embeddings must be a 2-d array (items x dimensions), got shape {tuple(embeddings.shape)}")
    zero: list[int] = []
    for start in range(0, embeddings.shape[0], block_size):
        norms = np.linalg.norm(np.asarray(embeddings[start : start + block_size], dtype=np.float32), axis=1)
        zero += (np.flatnonzero(norms == 0) + start).tolist()
        if len(zero) >= 10:
            break
    if zero:
        raise ValueError(f"embedding rows {zero[:10]} have zero norm: no direction to compare")


def key_tiles(n: int, rows: int) -> list[tuple[int, int]]:
    """[start, stop) of tiles of ``rows`` keys, the last one also taking a shorter rest (all n when n < 2 rows)."""
    starts = list(range(0, n, rows))
    if len(starts) > 1 and n - starts[-1] < rows:
        starts.pop()
    return list(zip(starts, starts[1:] + [n]))


def _fold(d2: np.ndarray, first_query: int, first_key: int, min_distance: np.ndarray, repeat_count: np.ndarray,
          repeat_threshold: float) -> None:
    """Fold one tile of cosines (queries x keys) into its queries' running minimum and repeat count."""
    d2 *= -2.0  # in place: 2 - 2 cos with the float32 roundings of 2.0 - 2.0 * cos, one tile of memory
    d2 += 2.0
    np.maximum(d2, 0.0, out=d2)  # rounding can dip just below 0 for duplicates
    lo, hi = max(first_query, first_key), min(first_query + d2.shape[0], first_key + d2.shape[1])
    if lo < hi:
        own = np.arange(lo, hi)
        d2[own - first_query, own - first_key] = np.inf  # not its own neighbour
    np.minimum(min_distance, d2.min(axis=1), out=min_distance)
    repeat_count += (d2 < repeat_threshold).sum(axis=1)


def neighbor_stats(
    embeddings: np.ndarray, block_size: int = 4096, repeat_threshold: float = REPEAT_THRESHOLD,
                   key_block: int = KEY_BLOCK
) -> NeighborStats:
    """Exact nearest-neighbour distance and repeat count of every row, tile by tile.

    ``embeddings`` is anything with ``shape`` whose row slices are arrays: an array, a memory map, or
    :class:`evolforge.steps.diversity.npy.NpyRows` (a file read a block at a time); rows are normalised a
    block at a time. Each block of ``block_size`` queries is compared with tiles of at least ``key_block``
    keys by one matrix multiply, so memory is about block_size x 2 key_block x 4 bytes (4096 x 8191: 128 MiB),
    whatever N; time is N x N x d. The floats are those of one product of a query block with all N rows
    where BLAS rounds a tile's edge rows and columns as its inner ones (every cosine is the same dot product
    over d; min and counts are exact); where it does not (OpenBLAS on an AMD EPYC, Zen 3), a few percent of
    them differ by a float32 ulp or two. They never depend on the chunk size. Numpy hands a block of one
    query row (N = 1 mod block_size) to BLAS's gemv, whose rounding of a few columns depends on how BLAS
    splits them among its threads. Unlike paper B's ``search_batch(k=500)``, repeats are
    counted over all rows, not only the 500 nearest.
    """
    rows = embeddings if hasattr(embeddings, "shape") else np.asarray(embeddings, dtype=np.float32)
    _check_rows(rows, block_size)
    n = rows.shape[0]
    min_distance = np.full(n, np.inf, dtype=np.float32)
    repeat_count = np.zeros(n, dtype=np.int64)
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        queries = _unit_rows(rows[start:stop])
        tile = max(key_block, -(-MIN_TILE_WORK // max(1, queries.size)))
        for first, last in key_tiles(n, tile):
            # the whole table in one tile: the same buffer twice, so numpy takes the path it took for x @ x.T
            keys = queries if (start, stop) == (first, last) == (0, n) else _unit_rows(rows[first:last])
            _fold(queries @ keys.T, start, first, min_distance[start:stop], repeat_count[start:stop], repeat_threshold)
    min_distance[np.isinf(min_distance)] = np.nan  # a single item has no neighbour
    return NeighborStats(min_distance, repeat_count)


def min_neighbor_distance(embeddings: np.ndarray, block_size: int = 4096) -> np.ndarray:
    """MND per row: squared L2 distance (unit-normalised) to the nearest other row; float32, (N,)."""
    return neighbor_stats(embeddings, block_size).min_distance
