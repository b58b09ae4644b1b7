"""Constrained decoding's prefix tree: the token sequences of a request's choices (the hf backend holds its
answer to them, see :mod:`evolforge.llm.backends.hf.backend`)."""

from __future__ import annotations

from typing import Sequence


class ChoiceTrie:
    """Token sequences of a request's choices as a prefix tree, for constrained decoding.

    ``allowed(prefix)`` is the set of tokens that keep ``prefix`` on the way to some choice, plus
    ``stop`` once ``prefix`` spells a whole choice (it may also go on: "1" -> "10" -> "100"). A choice is
    written as the tokenizer encodes it at the start of an answer.

    >>> trie = ChoiceTrie([[5], [5, 6], [7]], stop=0)
    >>> sorted(trie.allowed(())), sorted(trie.allowed((5,))), sorted(trie.allowed((5, 6)))
    ([5, 7], [0, 6], [0])
    """

    def __init__(self, sequences: Sequence[Sequence[int]], stop: int):
        self.stop = stop
        self._next: dict[tuple[int, ...], set[int]] = {}
        for seq in sequences:
            seq = tuple(seq)
            if not seq:
                raise ValueError("a choice encodes to no tokens")
            for n in range(len(seq)):
                self._next.setdefault(seq[:n], set()).add(seq[n])
            self._next.setdefault(seq, set()).add(stop)

    def allowed(self, prefix: Sequence[int]) -> set[int]:
        """Tokens that may follow ``prefix``; empty when ``prefix`` is on no choice's way."""
        return self._next.get(tuple(prefix), set())
