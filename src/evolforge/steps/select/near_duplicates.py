"""No two selected items that ask or answer nearly the same: a walk over the ranked items that keeps one only when
its instruction (+ input) and its answer each stay below ``threshold`` Jaccard similarity with those of every item
kept before it.

Dedup removes near-duplicate instructions from the pool before judging (``dedup.threshold``, word 3-grams); two
instructions that differ in wording but share their answer -- a seed and its rewrite answered with the same code --
pass it. Here the answers are compared too, and among the items that could be selected only, the better ranked
one kept. Texts are normalised (:func:`evolforge.core.text.normalize_text`) and compared as sets of word 3-grams
(the whole text under three words), each held as a 64-bit hash: an inverted index from 3-gram to the kept items
finds the candidates, whose exact Jaccard decides.

>>> texts = {"a": ("Reverse the words of a sentence.", "def f(s): return ' '.join(s.split()[::-1])"),
...          "b": ("Write a function that returns a sentence with its words reversed.",
...                "def f(s): return ' '.join(s.split()[::-1])"),
...          "c": ("Add two numbers.", "def add(a, b): return a + b")}
>>> walk_near_duplicates(["a", "b", "c"], lambda ids: [(i, *texts[i]) for i in ids], 0.7)
['b']
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

from evolforge.core.text import normalize_text

SHINGLE = 3  # words per shingle (dedup's default)
WINDOW = 4096  # ranked items whose texts are read at a time

# ids -> (id, question text, answer) for each of them, in any order
TextReader = Callable[[Sequence[str]], Iterable[tuple[str, str, str]]]


def shingle_set(text: str | None, size: int = SHINGLE) -> frozenset[int]:
    """The hashed word ``size``-grams of the normalised text (one for a shorter text; none for an empty one)."""
    words = normalize_text(text).split()
    if len(words) < size:
        return frozenset([hash(tuple(words))]) if words else frozenset()
    return frozenset(hash(tuple(words[i:i + size])) for i in range(len(words) - size + 1))


class _Index:
    """The kept items' shingle sets of one text kind, and an inverted index from shingle to them."""

    def __init__(self) -> None:
        self.sets: list[frozenset[int]] = []
        self.postings: dict[int, list[int]] = {}

    def closest(self, mine: frozenset[int]) -> float:
        """The highest Jaccard of ``mine`` with a kept set (0.0 when none shares a shingle)."""
        shared: dict[int, int] = {}
        for s in mine:
            for k in self.postings.get(s, ()):
                shared[k] = shared.get(k, 0) + 1
        return max((n / (len(mine) + len(self.sets[k]) - n) for k, n in shared.items()), default=0.0)

    def add(self, mine: frozenset[int]) -> None:
        for s in mine:
            self.postings.setdefault(s, []).append(len(self.sets))
        self.sets.append(mine)


def walk_near_duplicates(ranked: Sequence[str], read: TextReader, threshold: float,
                         keep_at_most: int | None = None) -> list[str]:
    """The ids of ``ranked`` (best first) that are near-duplicates of a better ranked item kept by the walk; the
    walk stops once ``keep_at_most`` items are kept (the rest are neither kept nor counted)."""
    questions, answers, dropped, kept = _Index(), _Index(), [], 0
    for start in range(0, len(ranked), WINDOW):
        window = ranked[start:start + WINDOW]
        texts = {i: (q, a) for i, q, a in read(window)}
        for item in window:
            if keep_at_most is not None and kept >= keep_at_most:
                return dropped
            q, a = (shingle_set(t) for t in texts[item])
            if (q and questions.closest(q) >= threshold) or (a and answers.closest(a) >= threshold):
                dropped.append(item)
                continue
            questions.add(q)
            answers.add(a)
            kept += 1
    return dropped
