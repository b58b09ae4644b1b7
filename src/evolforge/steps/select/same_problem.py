"""No two selected items that are the same problem: a walk over the ranked items that keeps one only when its
question means something else than every item kept before it, by the distance of their embeddings (the diversity
stage's, ``roles.embedder``), and a count of the distinct problems among some items.

Two items are the same problem when

- they descend from the same seed (the same ``root_id``: the rounds evolve each instruction once, so the items of
  one seed form one chain, each the ancestor of the next), their squared distance is at most ``lineage`` and the
  later one states no restriction the earlier one does not (:func:`~evolforge.steps.common.asking.restriction_mask`:
  "without ...", "do not ...", "a single loop", "O(n)", a constraint added to a long task moves its embedding
  little): a rewrite that asks what its seed or an earlier rewrite asked, reworded, or with its method handed over
  (``same_problem_in_lineage``); or
- whatever their seeds, their squared distance is at most ``threshold`` and they state the same restrictions
  (``same_problem_as_selected``).

Distances are squared L2 between unit-normalised embeddings, d^2 = 2 - 2 cos (the unit of MND and of
``diversity_threshold``). Both thresholds are calibrated on hand-labelled (parent, rewrite) pairs by
``bench/same_problem_calibration.py``. The word 3-gram walk (:mod:`evolforge.steps.select.near_duplicates`) misses
a reworded question, which shares few 3-grams with the one it rewords; its embedding stays close.

The embedding calls few paraphrases the same at the precision asked (docs/results/data-quality.md), so the ancestor
case has a backstop that does not rest on it (``same_answer``, reason ``same_answer_in_lineage``): two items of one
seed whose checked results are equal (:mod:`evolforge.steps.select.checked`: the number verify vouched for) where
the later round's question asks for no more results than the earlier one's
(:func:`~evolforge.steps.common.asking.asks_nothing_new`, from each item's count of results asked): the rewrite
found nothing new.

>>> v = np.array([[1, 0], [0.995, 0.0999], [0, 1], [0.9, 0.4359]], dtype=np.float32)
>>> walk = walk_same_problems(v, np.array([7, 6, 8, 9]), Limits(threshold=0.05, lineage=0.3))
>>> walk.kept, [(d.row, d.reason, d.same_as) for d in walk.dropped]
([0, 2, 3], [(1, 'same_problem_as_selected', 0)])
>>> walk_same_problems(v, np.array([7, 7, 8, 7]), Limits(threshold=0.05, lineage=0.3)).dropped[-1]
Dropped(row=3, reason='same_problem_in_lineage', same_as=0)
>>> traits = Traits(values=np.array([20.0, 20.0, 35.0, 20.0]), rounds=np.array([0, 1, 0, 2]),
...                 asks=np.array([1, 1, 1, 2]), marks=np.zeros(4, dtype=np.int64))
>>> walk = walk_same_problems(None, np.array([7, 7, 8, 7]), Limits(same_answer=True), traits=traits)
>>> walk.kept, walk.dropped
([0, 2, 3], [Dropped(row=1, reason='same_answer_in_lineage', same_as=0)])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import polars as pl

from evolforge.score.neighbors import KEY_BLOCK, key_tiles
from evolforge.steps.select.checked import SAME_RESULT

# the skip reasons, checked in order
IN_LINEAGE, AS_SELECTED, SAME_ANSWER = "same_problem_in_lineage", "same_problem_as_selected", "same_answer_in_lineage"
REASONS = (IN_LINEAGE, AS_SELECTED, SAME_ANSWER)


@dataclass(frozen=True)
class Limits:
    """The squared distances at or below which two items are the same problem (None: that check is off), and whether
    two items of one seed with equal checked results, the later asking nothing new, are (``same_answer``)."""

    threshold: float | None = None  # any two items
    lineage: float | None = None    # two items of the same seed
    same_answer: bool = False

    @property
    def by_embedding(self) -> bool:
        return self.threshold is not None or self.lineage is not None

    def reason(self, d2: float, same_root: bool) -> str | None:
        """Why an item at ``d2`` from a kept one is the same problem (None: it is not)."""
        if same_root and self.lineage is not None and d2 <= self.lineage:
            return IN_LINEAGE
        if self.threshold is not None and d2 <= self.threshold:
            return AS_SELECTED
        return None


class Dropped(NamedTuple):
    row: int      # the dropped item's row in the walked order
    reason: str   # one of REASONS
    same_as: int  # the row of the kept item it repeats


class Traits(NamedTuple):
    """Per item, in the walked order, what its text and verification say beside its embedding: its checked result
    (NaN: none), its round, how many results its question asks for
    (:func:`~evolforge.steps.common.asking.results_asked`) and the restrictions it states (a
    :func:`~evolforge.steps.common.asking.restriction_mask`)."""

    values: np.ndarray
    rounds: np.ndarray
    asks: np.ndarray
    marks: np.ndarray

    def same(self, a: int, b: int) -> bool:
        """Whether items ``a`` and ``b`` (of one seed) have equal checked results and the later round's asks for no
        more than the earlier one's."""
        x, y = self.values[a], self.values[b]
        if np.isnan(x) or np.isnan(y) or self.rounds[a] == self.rounds[b]:
            return False
        if abs(x - y) > SAME_RESULT * max(1.0, abs(x), abs(y)):
            return False
        later, earlier = (a, b) if self.rounds[a] > self.rounds[b] else (b, a)
        return bool(self.asks[later] <= self.asks[earlier])

    def restricted(self, a: int, b: int, same_root: bool) -> bool:
        """Whether the restrictions of items ``a`` and ``b`` tell them apart: of one seed, the later round's states
        one the earlier one's does not; of two seeds, they state different ones."""
        if not same_root:
            return bool(self.marks[a] != self.marks[b])
        later, earlier = (a, b) if self.rounds[a] >= self.rounds[b] else (b, a)
        return bool(self.marks[later] & ~self.marks[earlier])


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


def _closest(block: np.ndarray, kept: np.ndarray, kept_roots: np.ndarray, roots: np.ndarray, limits: Limits,
             rows: np.ndarray, kept_rows: np.ndarray, traits: Traits | None) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``block`` (the walked rows ``rows``): the first kept row (in kept order; walked rows
    ``kept_rows``) that makes it the same problem by the embeddings, and why (index into :data:`REASONS`); -1 where
    none does. Kept rows are compared a tile at a time."""
    match = np.full(len(block), -1, dtype=np.int64)
    why = np.full(len(block), -1, dtype=np.int8)
    if not limits.by_embedding:
        return match, why
    loose = max(t for t in (limits.threshold, limits.lineage) if t is not None)
    for first, last in key_tiles(len(kept), KEY_BLOCK):
        d2 = 2.0 - 2.0 * (block @ kept[first:last].T)
        for i, j in zip(*np.nonzero((d2 <= loose) & (match[:, None] < 0))):
            same_root = bool(roots[i] == kept_roots[first + j])
            if traits is not None and traits.restricted(int(rows[i]), int(kept_rows[first + j]), same_root):
                continue
            reason = limits.reason(float(d2[i, j]), same_root)
            if reason is not None and match[i] < 0:
                match[i], why[i] = first + j, REASONS.index(reason)
    return match, why


def _same_answer_as(row: int, root: int, kept_by_root: dict[int, list[int]], traits: Traits | None) -> int:
    """The first kept row (in kept order) of ``root`` whose checked result ``row`` repeats (:meth:`Traits.same`);
    -1 where none does."""
    if traits is None or np.isnan(traits.values[row]):
        return -1
    return next((k for k in kept_by_root.get(root, []) if traits.same(row, k)), -1)


def walk_same_problems(vectors: np.ndarray | None, roots: np.ndarray, limits: Limits, budget: int | None = None,
                       block_size: int = 1024, traits: Traits | None = None) -> Walk:
    """Greedy walk over unit ``vectors`` in their given (ranked) order: row i is kept unless it is the same problem
    as a row kept before it (``roots``: each row's seed code, :func:`root_codes`; ``traits``: the rows' restrictions
    and, for ``limits.same_answer``, checked results; ``vectors`` may be None without embedding limits); stop once
    ``budget`` are kept (the rows after are neither kept nor dropped). A dropped row names the first kept row (in
    rank order) it repeats, by the first reason of :data:`REASONS` that holds. Exact, a block at a time: each block
    against the rows kept before it, then in order within itself."""
    n = len(roots)
    budget = n if budget is None else budget
    walk = Walk()
    answers = traits is not None and limits.same_answer
    if not limits.by_embedding and not answers:
        walk.kept = list(range(min(n, budget)))
        return walk
    if not limits.by_embedding:
        vectors = np.zeros((n, 0), dtype=np.float32)
    kept_vectors = np.empty((min(budget, n), vectors.shape[1] if n else 0), dtype=np.float32)
    kept_roots = np.empty(min(budget, n), dtype=roots.dtype)
    kept_by_root: dict[int, list[int]] = {}  # seed code -> its kept rows, in kept order (the answers' backstop)
    for start in range(0, n, block_size):
        if len(walk.kept) >= budget:
            break
        block = np.asarray(vectors[start:start + block_size], dtype=np.float32)
        block_roots = roots[start:start + block_size]
        rows = np.arange(start, start + len(block))
        before = len(walk.kept)
        kept_rows = np.asarray(walk.kept, dtype=np.int64)
        match, why = _closest(block, kept_vectors[:before], kept_roots[:before], block_roots, limits, rows,
                              kept_rows, traits)
        for i in range(len(block)):
            if match[i] < 0:  # not a repeat of a row kept before the block: of one kept in it?
                mine = np.arange(before, len(walk.kept))
                m, w = _closest(block[i:i + 1], kept_vectors[mine], kept_roots[mine], block_roots[i:i + 1], limits,
                                rows[i:i + 1], np.asarray(walk.kept[before:], dtype=np.int64), traits)
                match[i], why[i] = (before + m[0], w[0]) if m[0] >= 0 else (-1, -1)
            if match[i] >= 0:
                walk.dropped.append(Dropped(start + i, REASONS[why[i]], walk.kept[match[i]]))
                continue
            root = int(block_roots[i])
            same = _same_answer_as(start + i, root, kept_by_root, traits if answers else None)
            if same >= 0:
                walk.dropped.append(Dropped(start + i, SAME_ANSWER, same))
                continue
            kept_vectors[len(walk.kept)], kept_roots[len(walk.kept)] = block[i], block_roots[i]
            walk.kept.append(start + i)
            kept_by_root.setdefault(root, []).append(start + i)
            if len(walk.kept) >= budget:
                break
    return walk


def count_problems(vectors: np.ndarray | None, roots: np.ndarray, limits: Limits, block_size: int = 1024,
                   traits: Traits | None = None) -> int:
    """How many distinct problems the rows hold: the connected groups of the rows linked when two are the same
    problem (by ``limits``, ``traits`` as in :func:`walk_same_problems`). All pairs of embeddings are compared, a
    block of rows at a time (time ~ N^2 x d), and the pairs of each seed's rows by their answers."""
    n = len(roots)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if limits.by_embedding:
        loose = max(t for t in (limits.threshold, limits.lineage) if t is not None)
        for start in range(0, n, block_size):
            block = np.asarray(vectors[start:start + block_size], dtype=np.float32)
            for other in range(start, n, block_size):
                d2 = 2.0 - 2.0 * (block @ np.asarray(vectors[other:other + block_size], dtype=np.float32).T)
                for i, j in zip(*np.nonzero(d2 <= loose)):
                    a, b = start + int(i), other + int(j)
                    same_root = bool(roots[a] == roots[b])
                    if a >= b or (traits is not None and traits.restricted(a, b, same_root)):
                        continue
                    if limits.reason(float(d2[i, j]), same_root) is not None:
                        parent[find(a)] = find(b)
    if limits.same_answer and traits is not None:
        by_root: dict[int, list[int]] = {}
        for row in np.flatnonzero(~np.isnan(traits.values)):
            by_root.setdefault(int(roots[row]), []).append(int(row))
        for rows in by_root.values():
            for k, a in enumerate(rows):
                for b in rows[k + 1:]:
                    if traits.same(a, b):
                        parent[find(a)] = find(b)
    return len({find(i) for i in range(n)})
