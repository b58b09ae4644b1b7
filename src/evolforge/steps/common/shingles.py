"""Word shingles, their stable 64-bit hashes, and the exact Jaccard of a text with those a greedy walk kept.

Dedup (MinHash LSH over the pool's instructions) and select's near-duplicate filter (over the ranked items'
instructions and answers) both walk texts best first and keep one only when its shingle set stays below a
Jaccard threshold with every set kept before it. They share the shingles, the hashes and the exact check here;
how candidates are found differs: LSH buckets propose them in dedup, an inverted index from shingle to the kept
sets in select (:class:`KeptShingles` with ``indexed=True``).

A shingle is ``size`` consecutive words of an already normalised text (:func:`evolforge.core.text.normalize_text`);
a text of fewer words is one shingle, an empty text has none. Each shingle is hashed to 64 bits from a fixed
value per word (blake2b of its UTF-8), so a hash is the same on every run, process and machine: never Python's
``hash()``, which PYTHONHASHSEED salts per process.

>>> shingles("sort a list of numbers.", 3)
['sort a list', 'a list of', 'list of numbers.']
>>> hashes, offsets = shingle_hashes(["sort a list of numbers.", "", "sort a list"], 3)
>>> offsets.tolist(), bool(hashes[0] == hashes[3])
([0, 3, 3, 4], True)
>>> kept = KeptShingles(indexed=True)
>>> kept.add(hashes[0:3], set(hashes[0:3].tolist()))
0
>>> kept.closest(set(hashes[3:4].tolist()))  # 1 shingle in common of 3
(0, 0.3333333333333333)
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

import numpy as np
import polars as pl

MULTIPLIER = np.uint64(0x100000001B3)  # the polynomial hashes' multiplier (odd, so no word's value is lost mod 2^64)


def shingles(text: str, size: int) -> list[str]:
    """Word ``size``-grams of an already normalised text (the whole text when it has fewer words)."""
    words = text.split()
    if len(words) <= size:
        return [" ".join(words)] if words else []
    return [" ".join(words[i:i + size]) for i in range(len(words) - size + 1)]


def polynomial(values: np.ndarray, size: int) -> np.ndarray:
    """``sum_j values[i + j] * MULTIPLIER^(size-1-j) mod 2^64`` for every window start i."""
    count = values.size - size + 1
    h = np.zeros(max(count, 0), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(size):
            h = h * MULTIPLIER + values[j:j + count]
    return h


def _word_values(words: pl.Series) -> np.ndarray:
    """A fixed 64-bit value per word (blake2b of its UTF-8: the same on every run and machine), hashed
    once per distinct word."""
    distinct = words.unique(maintain_order=True)
    table = np.fromiter((int.from_bytes(hashlib.blake2b(w.encode("utf-8"), digest_size=8).digest(), "little")
                         for w in distinct.to_list()), dtype=np.uint64, count=len(distinct))
    index = words.replace_strict(distinct, np.arange(len(distinct)), return_dtype=pl.Int64)
    return table[index.to_numpy()]


def shingle_hashes(texts: Sequence[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every text's word shingles (:func:`shingles`), concatenated, with each text's slice
    ``[offsets[k], offsets[k + 1])`` of them (empty for an empty text).

    A shingle's hash is the polynomial of its words' values (one fixed 64-bit value per word, see
    :func:`polynomial`): two different shingles share one with probability about 2^-64, so set sizes and
    Jaccard are the shingle sets' own. Texts split at single spaces and at newlines (:func:`item_text
    <evolforge.core.text.item_text>` joins instruction and input with one), which is all the whitespace
    ``normalize_text`` leaves (empty pieces are dropped).
    """
    words = pl.Series(texts, dtype=pl.String).str.replace_all("\n", " ", literal=True).str.split(" ")
    words = words.list.eval(pl.element().filter(pl.element() != ""))
    lengths = words.list.len().to_numpy().astype(np.int64)
    flat = words.explode().drop_nulls()
    values = _word_values(flat) if len(flat) else np.zeros(0, np.uint64)
    starts = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    counts = np.where(lengths > size, lengths - size + 1, np.minimum(lengths, 1))  # shingles per text
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    windows = polynomial(values, size)
    # shingle t of a text of >= size words is the window starting at its word t
    source = np.arange(int(offsets[-1])) + np.repeat(starts[:-1] - offsets[:-1], counts)
    out = windows[np.minimum(source, windows.size - 1)] if windows.size else np.zeros(source.size, np.uint64)
    for k in np.flatnonzero((lengths > 0) & (lengths < size)):  # a shorter text is one shingle: all its words
        out[offsets[k]] = polynomial(values[starts[k]:starts[k + 1]], int(lengths[k]))[0]
    return out, offsets


class KeptShingles:
    """The shingle sets a greedy walk has kept, numbered 0, 1, ... in the order kept, and the exact Jaccard of a
    new set with them. A kept set is held as its hash array (a view of :func:`shingle_hashes`' output is fine:
    8 bytes a shingle, where a Python set costs several times that) with its count of distinct hashes.

    ``indexed``: also keep an inverted index from hash to the kept sets that hold it, so :meth:`closest` can
    find its own candidates (every kept set sharing a shingle) when the caller has none to propose.
    """

    def __init__(self, indexed: bool = False) -> None:
        self._sets: list[tuple[np.ndarray, int]] = []  # kept set k: its hashes (repeats allowed), how many distinct
        self._postings: dict[int, list[int]] | None = {} if indexed else None

    def add(self, hashes: np.ndarray, mine: set[int]) -> int:
        """Keep a text with shingle hashes ``hashes`` (``mine``: their set, as :meth:`closest` took it); returns
        its number."""
        k = len(self._sets)
        self._sets.append((hashes, len(mine)))
        if self._postings is not None:
            for s in mine:
                self._postings.setdefault(s, []).append(k)
        return k

    def closest(self, mine: set[int], candidates: Iterable[int] | None = None) -> tuple[int | None, float]:
        """The kept set with the highest exact Jaccard with ``mine`` among ``candidates`` (kept numbers; None:
        every kept set sharing a shingle with ``mine``, from the index), ties to the first kept, and that Jaccard;
        (None, 0.0) without a candidate."""
        if candidates is None:
            if self._postings is None:
                raise ValueError("KeptShingles.closest: no candidates given and no index kept (indexed=False)")
            common: dict[int, int] = {}  # kept number -> shingles it shares with mine
            for s in mine:
                for k in self._postings.get(s, ()):
                    common[k] = common.get(k, 0) + 1
        else:
            common = {k: len(mine.intersection(self._sets[k][0].tolist())) for k in candidates}
        best, best_j = None, 0.0
        for k, n in common.items():
            score = n / (len(mine) + self._sets[k][1] - n)
            if best is None or score > best_j or (score == best_j and k < best):
                best, best_j = k, score
        return best, best_j
