"""The shingles dedup and select share: stable hashes, the kept sets' exact Jaccard, and select's near-duplicate walk
against a brute-force reference on plain string shingles."""

from __future__ import annotations

import os
import random
import subprocess
import sys

from evolforge.core.text import normalize_text
from evolforge.steps.common.shingles import KeptShingles, shingle_hashes, shingles
from evolforge.steps.select import near_duplicates
from evolforge.steps.select.near_duplicates import walk_near_duplicates


def test_shingle_hashes_are_the_same_in_every_process():
    """A hash is a function of the text alone (blake2b word values), never of the process's PYTHONHASHSEED: the
    value here is pinned, and two processes with different seeds agree with it."""
    hashes, offsets = shingle_hashes(["sort a list of numbers.", "add two"], 3)
    assert offsets.tolist() == [0, 3, 4]
    pinned = hashes.tolist()
    code = ("from evolforge.steps.common.shingles import shingle_hashes;"
            "print(shingle_hashes(['sort a list of numbers.', 'add two'], 3)[0].tolist())")
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed},
                             capture_output=True, text=True, check=True).stdout
        assert out.strip() == str(pinned)
    assert pinned[0] == 9376543315953674044  # "sort a list"; dedup's MinHash sketches are drawn from these values


def test_kept_shingles_index_finds_what_the_candidates_give():
    """The closest kept set and its Jaccard are the same whether the candidates come from the inverted index or
    are all kept sets; ties go to the first kept."""
    rng = random.Random(5)
    vocab = [f"w{k}" for k in range(30)]
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 12))) for _ in range(200)]
    hashes, offsets = shingle_hashes(texts, 2)
    indexed, plain = KeptShingles(indexed=True), KeptShingles()
    compared = 0
    for k, text in enumerate(texts):
        mine_hashes = hashes[offsets[k]:offsets[k + 1]]
        mine = set(mine_hashes.tolist())
        by_index = indexed.closest(mine)
        best, score = plain.closest(mine, range(k))
        if best is not None and score > 0:  # the index proposes only sets that share a shingle
            assert by_index == (best, score)
            theirs = set(shingles(texts[best], 2))
            assert score == len(set(shingles(text, 2)) & theirs) / len(set(shingles(text, 2)) | theirs)
            compared += 1
        else:
            assert by_index == (None, 0.0)
        indexed.add(mine_hashes, mine)
        plain.add(mine_hashes, mine)
    assert compared > 100
    twin = set(hashes[offsets[0]:offsets[1]].tolist())
    assert plain.closest(twin, [150, 0, 70])[0] == 0  # text 0 is its own twin: Jaccard 1 with itself


def reference_walk(ranked: list[str], texts: dict[str, tuple[str, str]], threshold: float,
                   keep_at_most: int | None = None) -> list[str]:
    """The walk as its docstring says it, on plain string 3-grams compared with every kept item."""
    def grams(text: str) -> set[str]:
        return set(shingles(normalize_text(text), 3))

    def jaccard(a: set[str], b: set[str]) -> float:
        return len(a & b) / len(a | b)

    kept, dropped = [], []
    for item in ranked:
        if keep_at_most is not None and len(kept) >= keep_at_most:
            break
        q, a = (grams(t) for t in texts[item])
        if any((q and jaccard(q, kq) >= threshold) or (a and jaccard(a, ka) >= threshold) for kq, ka in kept):
            dropped.append(item)
        else:
            kept.append((q, a))
    return dropped


def test_select_walk_matches_the_reference(monkeypatch):
    """Questions and answers with planted rewrites (a word changed, in other case), shared answers and empty ones,
    over several windows of texts."""
    monkeypatch.setattr(near_duplicates, "WINDOW", 64)
    rng = random.Random(11)
    vocab = [f"word{k}" for k in range(300)]
    sentence = lambda: " ".join(rng.choice(vocab) for _ in range(rng.randint(2, 25)))  # noqa: E731
    texts: dict[str, tuple[str, str]] = {}
    for k in range(300):
        q, a = sentence(), sentence() if rng.random() < 0.9 else ""
        texts[f"i{k}"] = (q, a)
        if rng.random() < 0.5:
            words = q.split()
            words[rng.randrange(len(words))] = rng.choice(vocab)
            variant = " ".join(words)
            texts[f"v{k}"] = (variant.upper() if rng.random() < 0.5 else variant,
                              a if rng.random() < 0.5 else sentence())
    ranked = list(texts)
    rng.shuffle(ranked)
    read = lambda ids: [(i, *texts[i]) for i in ids]  # noqa: E731
    for threshold in (0.5, 0.7):
        expected = reference_walk(ranked, texts, threshold)
        assert len(expected) > 60  # the planted variants are there to be found
        assert walk_near_duplicates(ranked, read, threshold) == expected
    budget = 200
    expected = reference_walk(ranked, texts, 0.7, budget)
    assert len(ranked) - len(expected) > budget  # the walk stops before the end
    assert walk_near_duplicates(ranked, read, 0.7, budget) == expected
