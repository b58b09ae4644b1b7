"""Near-duplicate removal: MinHash LSH over the normalised instruction (+ input) of every item.

Text. ``normalize_text`` is Unicode NFKC, casefold, whitespace runs collapsed to one space, ends stripped;
the text of an item is its normalised instruction, plus a newline and the normalised input when there is
one (:func:`item_text`). The seed stage's exact-duplicate check uses the same ``normalize_text``, so "the
same instruction" means one thing across the pipeline.

Similarity. The Jaccard similarity of two items' sets of word shingles (``shingle_size`` consecutive
words of the normalised text; a text shorter than that is one shingle). MinHash (datasketch) sketches,
banded as datasketch's ``MinHashLSH`` bands them (:class:`BandIndex`), propose candidates; each candidate is checked with the exact Jaccard of the two shingle sets, so the sketch can
only miss a pair (an LSH false negative: below 1 % for a pair exactly at the threshold, see
:func:`lsh_bands`, and fewer above it), never invent one.

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
>>> shingles("sort a list of numbers.", 3)
['sort a list', 'a list of', 'list of numbers.']
"""

from __future__ import annotations


import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import polars as pl
from datasketch import MinHash


from evolforge.core.text import normalize_text
from evolforge.core.settings import DedupSettings

EXACT, NEAR = "exact_duplicate", "near_duplicate"


def item_text(instruction: str | None, input_text: str | None) -> str:
    """The text compared for an item: normalised instruction, plus newline + normalised input when present
    (:func:`evolforge.core.text.normalize_text`, the seed stage's exact-duplicate rule too)."""
    instruction, input_text = normalize_text(instruction), normalize_text(input_text)
    return f"{instruction}\n{input_text}" if input_text else instruction


def shingles(text: str, size: int) -> list[str]:
    """Word ``size``-grams of an already normalised text (the whole text when it has fewer words)."""
    words = text.split()
    if len(words) <= size:
        return [" ".join(words)] if words else []
    return [" ".join(words[i:i + size]) for i in range(len(words) - size + 1)]


def shingle_hashes(text: str, size: int) -> np.ndarray:
    """Sorted unique 32-bit hashes (CRC-32 of UTF-8) of the text's shingles.

    32 bits is what datasketch's default MinHash scheme takes; a collision between two different shingles
    of one compared pair is a ~1e-7 event and only nudges that pair's Jaccard.
    """
    return np.unique(np.fromiter((zlib.crc32(s.encode("utf-8")) for s in shingles(text, size)), dtype=np.uint32))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard of two sorted unique hash arrays."""
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (a.size + b.size - inter)


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


def _identity(value):  # shingles arrive hashed; MinHash must not hash them again
    return int(value)


class BandIndex:
    """LSH buckets over MinHash signatures: band k of a signature is its values ``k*rows .. (k+1)*rows - 1``,
    and a query returns every inserted item that shares a band with it -- the candidates datasketch's
    ``MinHashLSH(params=(bands, rows))`` proposes, from one dict lookup per band (datasketch's per-band
    calls cost about 200 us an item: a third of a 52k-seed pipeline's CPU).

    >>> index = BandIndex(bands=2, rows=2)
    >>> index.insert(7, index.keys(np.array([1, 2, 3, 4], dtype=np.uint64)))
    >>> index.query(index.keys(np.array([9, 9, 3, 4], dtype=np.uint64))), index.query(index.keys(np.array([1, 9, 9, 9], dtype=np.uint64)))
    ({7}, set())
    """

    def __init__(self, bands: int, rows: int):
        self.rows = rows
        # a bucket holds its one item as a bare int, a list only once a second item shares it: most buckets
        # never do, and a list per band per item would cost about 90 bytes each (3 GiB for 52k seeds x 4)
        self.buckets: list[dict[bytes, int | list[int]]] = [{} for _ in range(bands)]

    def keys(self, signature: np.ndarray) -> list[bytes]:
        """One bytes key per band: the band's values, as one opaque record each."""
        used = np.ascontiguousarray(signature[: len(self.buckets) * self.rows])
        return used.view(f"V{used.itemsize * self.rows}").tolist()

    def query(self, keys: list[bytes]) -> set[int]:
        found: set[int] = set()
        for bucket, key in zip(self.buckets, keys):
            hit = bucket.get(key)
            if hit is not None:
                if isinstance(hit, int):
                    found.add(hit)
                else:
                    found.update(hit)
        return found

    def insert(self, item: int, keys: list[bytes]) -> None:
        for bucket, key in zip(self.buckets, keys):
            held = bucket.get(key)
            if held is None:
                bucket[key] = item
            elif isinstance(held, int):
                bucket[key] = [held, item]
            else:
                held.append(item)


@dataclass(frozen=True)
class Duplicates:
    """One entry per input item, in input order."""

    duplicate_of: list[int | None]    # index of the kept item it duplicates, None when kept
    similarity: list[float | None]    # exact Jaccard with that item
    reason: list[str | None]          # exact_duplicate | near_duplicate | None


def survival_order(rounds: Sequence[int], ids: Sequence[str], usable: Sequence[bool]) -> list[int]:
    """Indices in the order they claim a cluster: usable first, then latest round, then smallest id."""
    return sorted(range(len(ids)), key=lambda i: (not usable[i], -int(rounds[i]), ids[i]))


def find_duplicates(texts: Sequence[str], order: Sequence[int], config: DedupSettings = DedupSettings()) -> Duplicates:
    """Greedy near-duplicate removal over normalised ``texts``, walking them in ``order``.

    Empty texts take no part (nothing to compare; selection's guards drop them). Time is linear in the
    number of items plus the candidate pairs LSH proposes.
    """
    n = len(texts)
    duplicate_of: list[int | None] = [None] * n
    similarity: list[float | None] = [None] * n
    reason: list[str | None] = [None] * n
    lsh = BandIndex(*lsh_bands(config.threshold, config.num_perm))
    template = MinHash(num_perm=config.num_perm, seed=config.seed, hashfunc=_identity)
    kept_hashes: dict[int, np.ndarray] = {}
    rank = {i: r for r, i in enumerate(order)}
    exact_owner: dict[str, int] = {}
    for i in order:
        text = texts[i]
        if not text:
            continue
        if text in exact_owner:  # the common case costs a dict lookup, not a sketch
            duplicate_of[i], similarity[i], reason[i] = exact_owner[text], 1.0, EXACT
            continue
        hashes = shingle_hashes(text, config.shingle_size)
        sketch = template.copy()
        sketch.update_batch(hashes)
        keys = lsh.keys(sketch.hashvalues)
        best, best_j = None, -1.0
        for j in lsh.query(keys):
            score = jaccard(hashes, kept_hashes[j])
            if score > best_j or (score == best_j and rank[j] < rank[best]):
                best, best_j = j, score
        if best is not None and best_j >= config.threshold:
            duplicate_of[i], similarity[i] = best, best_j
            reason[i] = EXACT if best_j == 1.0 and texts[best] == text else NEAR
            continue
        lsh.insert(i, keys)
        kept_hashes[i] = hashes
        exact_owner[text] = i
    return Duplicates(duplicate_of, similarity, reason)


def dedup_table(table: pl.DataFrame, usable: Sequence[bool], config: DedupSettings = DedupSettings()) -> tuple[pl.DataFrame, dict]:
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
