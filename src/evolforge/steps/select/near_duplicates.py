"""No two selected items that ask or answer nearly the same: a walk over the ranked items that keeps one only when
its instruction (+ input) and its answer each stay below ``threshold`` Jaccard similarity with those of every item
kept before it.

Dedup removes near-duplicate instructions from the pool before judging (``dedup.threshold``, word 3-grams); two
instructions that differ in wording but share their answer -- a seed and its rewrite answered with the same code --
pass it. Here the answers are compared too, and among the items that could be selected only, the better ranked
one kept. Texts are normalised (:func:`evolforge.core.text.normalize_text`) and compared as sets of word 3-grams
(the whole text under three words), each held as a stable 64-bit hash (:mod:`evolforge.steps.common.shingles`, as
dedup's): an inverted index from 3-gram to the kept items finds the candidates, whose exact Jaccard decides.

>>> texts = {"a": ("Reverse the words of a sentence.", "def f(s): return ' '.join(s.split()[::-1])"),
...          "b": ("Write a function that returns a sentence with its words reversed.",
...                "def f(s): return ' '.join(s.split()[::-1])"),
...          "c": ("Add two numbers.", "def add(a, b): return a + b")}
>>> walk_near_duplicates(["a", "b", "c"], lambda ids: [(i, *texts[i]) for i in ids], 0.7)
['b']
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np

from evolforge.core.text import normalize_text
from evolforge.steps.common.shingles import KeptShingles, shingle_hashes

SHINGLE = 3  # words per shingle (dedup's default)
WINDOW = 4096  # ranked items whose texts are read at a time

# ids -> (id, question text, answer) for each of them, in any order
TextReader = Callable[[Sequence[str]], Iterable[tuple[str, str, str]]]


def _shingled(texts: Iterable[str | None]) -> list[tuple[np.ndarray, set[int]]]:
    """Each text's shingle hashes (of its normalised form) and their set."""
    hashes, offsets = shingle_hashes([normalize_text(t) for t in texts], SHINGLE)
    bounds = offsets.tolist()
    return [(hashes[lo:hi], set(hashes[lo:hi].tolist())) for lo, hi in zip(bounds, bounds[1:])]


def walk_near_duplicates(ranked: Sequence[str], read: TextReader, threshold: float,
                         keep_at_most: int | None = None) -> list[str]:
    """The ids of ``ranked`` (best first) that are near-duplicates of a better ranked item kept by the walk; the
    walk stops once ``keep_at_most`` items are kept (the rest are neither kept nor counted)."""
    questions, answers = KeptShingles(indexed=True), KeptShingles(indexed=True)
    dropped, kept = [], 0
    for start in range(0, len(ranked), WINDOW):
        window = ranked[start:start + WINDOW]
        texts = {i: (q, a) for i, q, a in read(window)}
        shingled = zip(window, _shingled(texts[i][0] for i in window), _shingled(texts[i][1] for i in window))
        for item, (q, q_set), (a, a_set) in shingled:
            if keep_at_most is not None and kept >= keep_at_most:
                return dropped
            if ((q_set and questions.closest(q_set)[1] >= threshold)
                    or (a_set and answers.closest(a_set)[1] >= threshold)):
                dropped.append(item)
                continue
            questions.add(q, q_set)
            answers.add(a, a_set)
            kept += 1
    return dropped
