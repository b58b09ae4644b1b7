"""Near-duplicate removal: MinHash LSH over the normalised instruction (+ input) of every item.

Text. ``normalize_text`` is Unicode NFKC, casefold, whitespace runs collapsed to one space, ends stripped;
the text of an item is its normalised instruction, plus a newline and the normalised input when there is
one (:func:`item_text`). The seed stage's exact-duplicate check uses the same ``normalize_text``, so "the
same instruction" means one thing across the pipeline.

Similarity. The Jaccard similarity of two items' sets of word shingles (``shingle_size`` consecutive
words of the normalised text; a text shorter than that is one shingle), each shingle hashed to 64 bits
(:mod:`evolforge.steps.common.shingles`, which select's near-duplicate filter shares). MinHash sketches of
all items at once (:func:`minhash_signatures`, vectorised: one sketch object per item cost more CPU than the
rest of the stage), banded for LSH (each band reduced to a 64-bit digest of its values, :func:`band_digest`;
:func:`shared_buckets`), propose candidates; each candidate is checked with the exact Jaccard of the two
shingle sets (:class:`~evolforge.steps.common.shingles.KeptShingles`), so the sketch can only miss a pair (an
LSH false negative: below 1 % for a pair exactly at the threshold, see :func:`lsh_bands`, and fewer above
it), never invent one (a digest collision only adds a candidate: :func:`walk_duplicates`).

Who survives. Items are walked in survival order and an item is removed when an item already kept has
Jaccard >= ``threshold`` with it; ``duplicate_of`` names that kept item (the most similar one; ties go to
the earlier in survival order). So no two kept items are near-duplicates (up to LSH misses), and every
removed item points at a kept item it resembles directly (no chains A ~ B ~ C). Survival order:

1. usable items first (``usable``: the item can be selected -- instruction evolved, response complete),
   so a twin with an empty or truncated response never displaces a complete one;
2. then the latest round (the most evolved version of a prompt);
3. then the smallest id (ids are content hashes: an arbitrary but stable tie-break).

Worked example: "Sort a list of numbers." (round 1) and "sort a  list of NUMBERS." (round 2) normalise to
the same text (Jaccard 1.0): the round-2 item survives and the round-1 item gets ``duplicate_of`` = its id.

>>> normalize_text("  Ｓort a\\tlist  of NUMBERS. ")
'sort a list of numbers.'
"""

from __future__ import annotations


from dataclasses import dataclass
from typing import Sequence

import numpy as np
import polars as pl

from evolforge.core.text import item_text, normalize_text  # noqa: F401  (normalize_text: the docstring example)
from evolforge.steps.common.shingles import MULTIPLIER, KeptShingles, shingle_hashes
from evolforge.steps.dedup.settings import DedupSettings

EXACT, NEAR = "exact_duplicate", "near_duplicate"


def minhash_signatures(hashes: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int,
                       chunk: int = 1 << 14) -> np.ndarray:
    """MinHash signature (``num_perm`` uint32 values) of every text's shingle hashes: value k of a text is
    the minimum over its shingles x of ``h_k(fold(x))``, with ``fold(x)`` the xor of x's two 32-bit halves
    and ``h_k(y) = ((a_k * y + b_k) mod 2^64) >> 32`` (multiply-add-shift: a universal family on 32-bit
    keys; a_k, b_k drawn from ``seed``). A text without shingles gets all ones. Work is done ``chunk``
    shingles at a time (a longer text too), so memory stays at ``chunk * num_perm`` words."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**64, size=num_perm, dtype=np.uint64, endpoint=False)
    b = rng.integers(0, 2**64, size=num_perm, dtype=np.uint64, endpoint=False)
    keys = (hashes ^ (hashes >> np.uint64(32))) & np.uint64(0xFFFFFFFF)
    out = np.full((offsets.size - 1, num_perm), 0xFFFFFFFF, dtype=np.uint32)
    nonempty = np.flatnonzero(offsets[1:] > offsets[:-1])
    ends = offsets[nonempty + 1]
    buffer = np.empty((num_perm, chunk), dtype=np.uint64)  # permutations x shingles, reduced along rows

    def permuted(lo: int, hi: int) -> np.ndarray:
        block = buffer[:, :hi - lo]
        with np.errstate(over="ignore"):
            np.multiply(a[:, None], keys[None, lo:hi], out=block)
            block += b[:, None]
        block >>= np.uint64(32)
        return block

    k = 0
    while k < nonempty.size:  # whole texts per chunk: as many as fit in `chunk` shingles
        lo = int(offsets[nonempty[k]])
        stop = int(np.searchsorted(ends, lo + chunk, side="right"))
        if stop == k:  # one text longer than a chunk: its minimum a chunk at a time
            text, hi = nonempty[k], int(ends[k])
            for start in range(lo, hi, chunk):
                np.minimum(out[text], permuted(start, min(start + chunk, hi)).min(axis=1), out=out[text])
            k += 1
            continue
        texts = nonempty[k:stop]
        out[texts] = np.minimum.reduceat(permuted(lo, int(ends[stop - 1])), offsets[texts] - lo, axis=1).T
        k = stop
    return out


def lsh_bands(threshold: float, num_perm: int, recall: float = 0.99) -> tuple[int, int]:
    """(bands, rows per band) for LSH: a pair at exactly ``threshold`` becomes a candidate with probability
    >= ``recall`` (1 - (1 - J^r)^b; higher above it), and among such settings the one proposing fewest pairs
    at threshold - 0.2. Candidates are verified exactly, so extra candidates cost time, never accuracy.

    >>> lsh_bands(0.7, 128)
    (32, 4)
    """
    best = (num_perm, 1)
    best_cost = None
    for rows in range(1, num_perm // 2 + 1):
        bands = num_perm // rows
        if 1 - (1 - threshold ** rows) ** bands < recall:
            continue
        cost = 1 - (1 - max(threshold - 0.2, 0.0) ** rows) ** bands
        if best_cost is None or cost < best_cost:
            best, best_cost = (bands, rows), cost
    return best


@dataclass(frozen=True)
class Duplicates:
    """One entry per input item, in input order."""

    duplicate_of: list[int | None]    # index of the kept item it duplicates, None when kept
    similarity: list[float | None]    # exact Jaccard with that item
    reason: list[str | None]          # exact_duplicate | near_duplicate | None


def survival_order(rounds: Sequence[int], ids: Sequence[str], usable: Sequence[bool]) -> list[int]:
    """Indices in the order they claim a cluster: usable first, then latest round, then smallest id (ids
    compare by code point, as Python's ``<`` does: UTF-8's byte order is code-point order); equal keys
    keep their input order."""
    keys = pl.DataFrame({"usable": pl.Series(usable, dtype=pl.Boolean), "round": pl.Series(rounds, dtype=pl.Int64),
                         "id": pl.Series(ids, dtype=pl.String)})
    return keys.with_row_index("index").sort(["usable", "round", "id"], descending=[True, True, False],
                                             maintain_order=True)["index"].to_list()


def shared_buckets(digests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The LSH buckets that hold two texts or more (``digests``: one row per text, one column per band, as
    :func:`band_digests`; a bucket is one band and one digest in it): text i is in buckets
    ``ids[starts[i]:starts[i + 1]]``, in band order. A text whose slice is empty shares no band with another.

    Bucket ids count from 0 with no gaps (the walk keeps a list indexed by them).

    >>> ids, starts = shared_buckets(np.array([[1, 5], [2, 5], [1, 6]], dtype=np.uint64))
    >>> [ids[starts[i]:starts[i + 1]].tolist() for i in range(3)]
    [[0, 1], [1], [0]]
    """
    rows, ids, base = [], [], 0
    for column in digests.T:
        held = np.flatnonzero(pl.Series(column).is_duplicated().to_numpy())
        _, inverse = np.unique(column[held], return_inverse=True)
        rows.append(held)
        ids.append(base + inverse)
        base += int(inverse.max()) + 1 if held.size else 0
    row = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    by_text = np.argsort(row, kind="stable")  # each text's buckets in band order
    starts = np.zeros(len(digests) + 1, dtype=np.int64)
    np.cumsum(np.bincount(row, minlength=len(digests)), out=starts[1:])
    return (np.concatenate(ids)[by_text] if ids else row), starts


def band_digest(signatures: np.ndarray, band: int, rows: int) -> np.ndarray:
    """A 64-bit digest of every text's values in LSH band ``band`` (equal bands, equal digests)."""
    digest = np.zeros(len(signatures), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for column in signatures[:, band * rows:(band + 1) * rows].T:
            digest = digest * MULTIPLIER ^ column.astype(np.uint64)
    return digest


def band_digests(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """Every text's :func:`band_digest` of each band: one row per text, one column per band."""
    return np.stack([band_digest(signatures, k, rows) for k in range(bands)], axis=1)


def mark_shared(digest: np.ndarray, shared: np.ndarray) -> None:
    """Set ``shared`` where a text's band digest is also another text's."""
    shared |= pl.Series(digest).is_duplicated().to_numpy()


def find_duplicates(texts: Sequence[str], order: Sequence[int], config: DedupSettings = DedupSettings()) -> Duplicates:
    """Greedy near-duplicate removal over normalised ``texts``, walking them in ``order``: the texts are
    sketched all at once, each LSH band reduced to its 64-bit digest, and :func:`walk_duplicates` walks them."""
    bands, rows = lsh_bands(config.threshold, config.num_perm)
    hashes, offsets = shingle_hashes(texts, config.shingle_size)
    digests = band_digests(minhash_signatures(hashes, offsets, bands * rows, config.seed), bands, rows)
    return walk_duplicates(texts, order, digests, config, (hashes, offsets))


def walk_duplicates(texts: Sequence[str], order: Sequence[int], digests: np.ndarray,
                    config: DedupSettings = DedupSettings(),
                    shingled: tuple[np.ndarray, np.ndarray] | None = None) -> Duplicates:
    """The greedy walk of :func:`find_duplicates`, given every text's band digests (``digests``, as
    :func:`band_digests`: the streamed stage passes those its sketch pass wrote, so no text is sketched twice)
    and, optionally, its :func:`shingle_hashes` (``shingled``; else they are computed here).

    Empty texts take no part (nothing to compare; selection's guards drop them). A text that shares no band
    digest with any other text can have no candidate and is kept without a lookup, so the walk visits only
    the texts that share one. A text's candidates are the kept texts with an equal digest in some band;
    each is checked with the exact Jaccard of the two shingle sets. Two different bands with equal digests
    (probability about 2^-64 per pair and band) add a candidate the bands' values would not have proposed:
    the exact check still decides, so at worst a pair at or above the threshold that LSH would have missed
    is found. Time is linear in the number of items plus the candidate pairs LSH proposes.
    """
    n = len(texts)
    duplicate_of: list[int | None] = [None] * n
    similarity: list[float | None] = [None] * n
    reason: list[str | None] = [None] * n
    hashes, offsets = shingled if shingled is not None else shingle_hashes(texts, config.shingle_size)
    ids, starts = shared_buckets(digests)
    walked = ((np.diff(starts) > 0) & (np.diff(offsets) > 0)).tolist()  # shares a band, has shingles
    walk = [i for i in order if walked[i]]
    buckets, first = ids.tolist(), starts.tolist()  # text i's shared buckets: buckets[first[i]:first[i + 1]]
    bounds = offsets.tolist()  # text i's shingle hashes: hashes[bounds[i]:bounds[i + 1]]
    kept_in: list[list[int] | None] = [None] * (int(ids.max()) + 1 if ids.size else 0)  # a bucket's kept numbers
    kept, kept_text = KeptShingles(), []  # the kept texts' shingle sets; text index of kept number k
    exact_owner: dict[str, int] = {}
    for i in walk:
        text = texts[i]
        if text in exact_owner:  # the common case costs a dict lookup, not a comparison
            duplicate_of[i], similarity[i], reason[i] = exact_owner[text], 1.0, EXACT
            continue
        lo, hi = bounds[i], bounds[i + 1]
        mine = set(hashes[lo:hi].tolist())  # the exact set, for the exact Jaccard
        mine_in = buckets[first[i]:first[i + 1]]  # only shared buckets: the others never hold another text
        candidates: set[int] = set()
        for bucket in mine_in:
            held = kept_in[bucket]
            if held is not None:
                candidates.update(held)
        best, best_j = kept.closest(mine, candidates)  # ties: the first kept, the earlier in the walk
        if best is not None and best_j >= config.threshold:
            duplicate_of[i], similarity[i] = kept_text[best], best_j
            reason[i] = EXACT if best_j == 1.0 and texts[kept_text[best]] == text else NEAR
            continue
        k = kept.add(hashes[lo:hi], mine)
        kept_text.append(i)
        for bucket in mine_in:
            held = kept_in[bucket]
            if held is None:
                kept_in[bucket] = [k]
            else:
                held.append(k)
        exact_owner[text] = i
    return Duplicates(duplicate_of, similarity, reason)


def dedup_table(table: pl.DataFrame, usable: Sequence[bool],
                config: DedupSettings = DedupSettings()) -> tuple[pl.DataFrame, dict]:
    """Add ``duplicate_of`` (kept item's id), ``duplicate_similarity`` and ``dedup_reason`` to every row.

    ``usable`` (one bool per row) is the selection guards' verdict; see the module docstring for the
    survival order. Returns (table with the new columns, metrics).
    """
    texts = [item_text(q, x) for q, x in zip(table["instruction"].to_list(), table["input"].to_list())]
    ids = table["id"].to_list()
    rounds = table["round"].to_list()
    found = find_duplicates(texts, survival_order(rounds, ids, usable), config)
    out = table.with_columns(
        duplicate_of=pl.Series([None if j is None else ids[j] for j in found.duplicate_of], dtype=pl.String),
        duplicate_similarity=pl.Series(found.similarity, dtype=pl.Float64),
        dedup_reason=pl.Series(found.reason, dtype=pl.String),
    )
    removed = out.filter(pl.col("duplicate_of").is_not_null())
    per_round = removed.group_by("round").len().sort("round")
    metrics = {
        "items": out.height,
        "removed": removed.height,
        "kept": out.height - removed.height,
        "removed_exact": int((removed["dedup_reason"] == EXACT).sum()),
        "removed_near": int((removed["dedup_reason"] == NEAR).sum()),
        "removed_per_round": {str(r): int(c) for r, c in per_round.iter_rows()},
        "clusters_with_duplicates": removed["duplicate_of"].n_unique(),
        "distinct_texts_before": len(set(t for t in texts if t)),
        "threshold": config.threshold, "shingle_size": config.shingle_size, "num_perm": config.num_perm,
    }
    return out, metrics
