"""No two selected items that are the same problem: a walk over the ranked items that keeps one only when its
question means something else than every item kept before it, by the distance of their embeddings (the diversity
stage's, ``roles.embedder``), and a count of the distinct problems among some items.

Two items are the same problem when

- they descend from the same seed (the same ``root_id``: the rounds evolve each instruction once, so the items of
  one seed form one chain, each the ancestor of the next) and their squared distance is at most ``lineage``: a
  rewrite that asks what its seed or an earlier rewrite asked, reworded, or with its method handed over
  (``same_problem_in_lineage``); or
- whatever their seeds, their squared distance is at most ``threshold`` (``same_problem_as_selected``).

Distances are squared L2 between unit-normalised embeddings, d^2 = 2 - 2 cos (the unit of MND and of
``diversity_threshold``). Both thresholds are calibrated on hand-labelled (parent, rewrite) pairs by
``bench/same_problem_calibration.py``. The word 3-gram walk (:mod:`evolforge.steps.select.near_duplicates`) misses
a reworded question, which shares few 3-grams with the one it rewords; its embedding stays close.

>>> v = np.array([[1, 0], [0.995, 0.0999], [0, 1], [0.9, 0.4359]], dtype=np.float32)
>>> walk = walk_same_problems(v, np.array([7, 6, 8, 9]), Limits(threshold=0.05, lineage=0.3))
>>> walk.kept, [(d.row, d.reason, d.same_as) for d in walk.dropped]
([0, 2, 3], [(1, 'same_problem_as_selected', 0)])
>>> walk_same_problems(v, np.array([7, 7, 8, 7]), Limits(threshold=0.05, lineage=0.3)).dropped[-1]
Dropped(row=3, reason='same_problem_in_lineage', same_as=0)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import polars as pl

from evolforge.score.neighbors import KEY_BLOCK, key_tiles

IN_LINEAGE, AS_SELECTED = "same_problem_in_lineage", "same_problem_as_selected"  # the skip reasons, checked in order
REASONS = (IN_LINEAGE, AS_SELECTED)


@dataclass(frozen=True)
class Limits:
    """The squared distances at or below which two items are the same problem (None: that check is off)."""

    threshold: float | None = None  # any two items
    lineage: float | None = None    # two items of the same seed

    def reason(self, d2: float, same_root: bool) -> str | None:
        """Why an item at ``d2`` from a kept one is the same problem (None: it is not)."""
        if same_root and self.lineage is not None and d2 <= self.lineage:
            return IN_LINEAGE
        if self.threshold is not None and d2 <= self.threshold:
            return AS_SELECTED
        return None


class Dropped(NamedTuple):
    row: int      # the dropped item's row in the walked order
    reason: str   # IN_LINEAGE or AS_SELECTED
    same_as: int  # the row of the kept item it repeats


@dataclass
class Walk:
    kept: list[int] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)


def root_codes(roots: pl.Series | None, rows: int) -> np.ndarray:
    """A 64-bit code per item for its seed (``roots``: a digest of each item's ``root_id``, as the ranking table's
    helper column holds it); without lineage every item is its own seed."""
    if roots is None:
        return np.arange(rows, dtype=np.uint64)
    return roots.cast(pl.UInt64).to_numpy()


def _closest(block: np.ndarray, kept: np.ndarray, kept_roots: np.ndarray, roots: np.ndarray,
             limits: Limits) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``block``: the first kept row (in kept order) that makes it the same problem, and why
    (index into :data:`REASONS`); -1 where none does. Kept rows are compared a tile at a time."""
    match = np.full(len(block), -1, dtype=np.int64)
    why = np.full(len(block), -1, dtype=np.int8)
    loose = max(t for t in (limits.threshold, limits.lineage) if t is not None)
    for first, last in key_tiles(len(kept), KEY_BLOCK):
        d2 = 2.0 - 2.0 * (block @ kept[first:last].T)
        for i, j in zip(*np.nonzero((d2 <= loose) & (match[:, None] < 0))):
            reason = limits.reason(float(d2[i, j]), bool(roots[i] == kept_roots[first + j]))
            if reason is not None and match[i] < 0:
                match[i], why[i] = first + j, REASONS.index(reason)
    return match, why


def walk_same_problems(vectors: np.ndarray, roots: np.ndarray, limits: Limits, budget: int | None = None,
                       block_size: int = 1024) -> Walk:
    """Greedy walk over unit ``vectors`` in their given (ranked) order: row i is kept unless it is the same problem
    as a row kept before it (``roots``: each row's seed code, :func:`root_codes`); stop once ``budget`` are kept
    (the rows after are neither kept nor dropped). A dropped row names the first kept row (in rank order) it
    repeats. Exact, a block at a time: each block against the rows kept before it, then in order within itself."""
    n = len(vectors)
    budget = n if budget is None else budget
    walk = Walk()
    if limits.threshold is None and limits.lineage is None:
        walk.kept = list(range(min(n, budget)))
        return walk
    kept_vectors = np.empty((min(budget, n), vectors.shape[1] if n else 0), dtype=np.float32)
    kept_roots = np.empty(min(budget, n), dtype=roots.dtype)
    for start in range(0, n, block_size):
        if len(walk.kept) >= budget:
            break
        block = np.asarray(vectors[start:start + block_size], dtype=np.float32)
        block_roots = roots[start:start + block_size]
        before = len(walk.kept)
        match, why = _closest(block, kept_vectors[:before], kept_roots[:before], block_roots, limits)
        for i in range(len(block)):
            if match[i] < 0:  # not a repeat of a row kept before the block: of one kept in it?
                mine = np.arange(before, len(walk.kept))
                m, w = _closest(block[i:i + 1], kept_vectors[mine], kept_roots[mine], block_roots[i:i + 1], limits)
                match[i], why[i] = (before + m[0], w[0]) if m[0] >= 0 else (-1, -1)
            if match[i] >= 0:
                walk.dropped.append(Dropped(start + i, REASONS[why[i]], walk.kept[match[i]]))
                continue
            kept_vectors[len(walk.kept)], kept_roots[len(walk.kept)] = block[i], block_roots[i]
            walk.kept.append(start + i)
            if len(walk.kept) >= budget:
                break
    return walk


def count_problems(vectors: np.ndarray, roots: np.ndarray, limits: Limits, block_size: int = 1024) -> int:
    """How many distinct problems ``vectors`` hold: the connected groups of the rows linked when two are the same
    problem (by ``limits``). All pairs are compared, a block of rows at a time (time ~ N^2 x d)."""
    n = len(vectors)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    loose = max(t for t in (limits.threshold, limits.lineage) if t is not None)
    for start in range(0, n, block_size):
        block = np.asarray(vectors[start:start + block_size], dtype=np.float32)
        for other in range(start, n, block_size):
            d2 = 2.0 - 2.0 * (block @ np.asarray(vectors[other:other + block_size], dtype=np.float32).T)
            for i, j in zip(*np.nonzero(d2 <= loose)):
                a, b = start + int(i), other + int(j)
                if a < b and limits.reason(float(d2[i, j]), bool(roots[a] == roots[b])) is not None:
                    parent[find(a)] = find(b)
    return len({find(i) for i in range(n)})
