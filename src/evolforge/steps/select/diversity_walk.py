"""DEITA's representation filter as a walk: keep a ranked item only when its squared L2 distance to every item
kept before it exceeds a threshold (:func:`diverse_walk`), exactly and a block of items at a time.

Distances are squared L2 between unit-normalised embeddings, d^2 = 2 - 2 cos, the unit of MND (DEITA's cosine
similarity 0.9 is d^2 = 0.2). :func:`nearest_distances` is the tiled product both this walk and the same-problem
walk (:mod:`evolforge.steps.select.same_problem`) compare a block of items with the kept ones by.
"""

from __future__ import annotations

import numpy as np

from evolforge.score.neighbors import KEY_BLOCK, MIN_TILE_WORK, key_tiles


def nearest_distances(block: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Each row of ``block``'s least squared distance 2 - 2 cos to the rows of ``kept``, a tile of them at a time."""
    near = np.full(len(block), np.inf, dtype=np.float32)
    tile = max(KEY_BLOCK, -(-MIN_TILE_WORK // max(1, block.size)))
    for first, last in key_tiles(len(kept), tile):
        d2 = block @ kept[first:last].T
        d2 *= -2.0  # in place: the float32 roundings of 2.0 - 2.0 * cos, one tile of memory
        d2 += 2.0
        np.minimum(near, d2.min(axis=1), out=near)
    return near


def diverse_walk(vectors: np.ndarray, threshold: float, budget: int | None = None, block_size: int = 1024) -> list[int]:
    """Greedy DEITA walk over unit ``vectors`` in their given (ranked) order: row i is kept when its squared
    L2 distance to every kept row exceeds ``threshold``; stop after ``budget`` kept. Returns kept rows.

    Exact, blockwise: each block is compared with the rows kept before it, tiles of at least ``KEY_BLOCK`` of
    them at a time (as :func:`~evolforge.score.neighbors.neighbor_stats` tiles its keys: the floats of one product
    with all of them, up to BLAS's rounding of a tile's edges), then resolved in order against the rows it keeps itself
    (time ~ N x kept x d, memory ~ block x 2 KEY_BLOCK, whatever the number kept; the kept rows themselves, kept x d).
    """
    n = len(vectors)
    budget = n if budget is None else budget
    kept: list[int] = []
    kept_vectors = np.empty((min(budget, n), vectors.shape[1] if n else 0), dtype=np.float32)
    for start in range(0, n, block_size):
        if len(kept) >= budget:
            break
        block = vectors[start:start + block_size]
        ok = nearest_distances(block, kept_vectors[:len(kept)]) > threshold if kept else np.ones(len(block), dtype=bool)
        inner = 2.0 - 2.0 * (block @ block.T)
        mine: list[int] = []
        for i in np.flatnonzero(ok):
            if mine and inner[i, mine].min() <= threshold:
                continue
            mine.append(int(i))
            kept_vectors[len(kept) + len(mine) - 1] = block[i]
            if len(kept) + len(mine) >= budget:
                break
        kept += [start + i for i in mine]
    return kept
