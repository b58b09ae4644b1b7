"""When a text loops, and the status of a response: the ``repetitive`` elimination rule's measures
(``evolve.repetition``) and ``response_status`` (``respond.repetition``). Pure functions over text.

>>> is_repetitive("the tide comes in and the tide goes out " * 6)
True
"""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass

from evolforge.core.text import FENCED_CODE, plain_words

# response_status values (responses table): only "complete" responses are training material; "failed" is a
# call that got no answer (its reason in response_failure_reason)
COMPLETE, TRUNCATED_STATUS, REPETITIVE_STATUS, EMPTY_STATUS = "complete", "truncated", "repetitive", "empty"
FAILED_RESPONSE = "failed"
RESPONSE_STATUSES = (COMPLETE, TRUNCATED_STATUS, REPETITIVE_STATUS, EMPTY_STATUS, FAILED_RESPONSE)


@dataclass(frozen=True)
class RepetitionTest:
    """Thresholds of the ``repetitive`` rule and of ``response_status`` (``params.yaml evolve.repetition``,
    ``respond.repetition``). A text loops when, among its word n-grams, the share that repeat an earlier
    one exceeds ``max_repeated_ngram_fraction``, or when its UTF-8 length over its zlib-compressed length
    exceeds ``max_compression_ratio`` (Whisper's hallucination test uses 2.4 with gzip). Texts under
    ``min_words`` words are never called repetitive (a short list of numbers repeats by nature).

    With ``max_phrase_repeats``, a text also loops when one phrase of ``phrase_words`` words (case and punctuation
    aside, fenced code left out) comes back more than that many times: a list whose every item says the same
    sentence, which markdown's own repetition hides from the two measures above.

    The trigram and ratio thresholds were set on SmolLM2-135M-Instruct's outputs (docs/results/elimination.md), the
    shipped phrase test on Qwen2.5-Coder-1.5B's answers (tests/data/responder_loops.json).
    """

    ngram: int = 3  # words per n-gram
    max_repeated_ngram_fraction: float = 0.3
    max_compression_ratio: float = 2.4
    min_words: int = 10
    phrase_words: int = 10
    max_phrase_repeats: int | None = None  # None: no phrase test


def repetition_test(repetition: dict) -> RepetitionTest:
    """The thresholds of ``evolve.repetition`` / ``respond.repetition`` (defaults where params say nothing)."""
    return RepetitionTest(**repetition)


def repeated_ngram_fraction(text: str, n: int = 3) -> float:
    """Share of the word n-grams (lower-case) that repeat an earlier n-gram of ``text``; 0 without n-grams.

    >>> repeated_ngram_fraction("a tale of leaves, a tale of leaves, a tale of leaves")
    0.5
    """
    return _repeated_fraction(text.lower().split(), n)


def _repeated_fraction(words: list[str], n: int) -> float:
    if n < 1:
        raise ValueError(f"n-grams of {n} words")
    grams = len(words) - n + 1
    if grams <= 0:
        return 0.0
    return 1.0 - len(set(zip(*(words[i:] for i in range(n))))) / grams


def compression_ratio(text: str) -> float:
    """UTF-8 bytes over zlib-compressed bytes (level 9): about 1-2 for prose, higher for loops.

    The same length as ``zlib.compress(data, 9)``, which sets up a 32 KiB window for every call: most of
    its cost for a text of a few hundred bytes. Deflate's matches reach back at most the window less 262
    bytes, so a text within that limit of a smaller window is compressed to the same bytes (only the
    header's window field differs), at a third of the cost."""
    data = text.encode("utf-8")
    if not data:
        return 0.0
    wbits = max(9, (len(data) + _MIN_LOOKAHEAD).bit_length())
    if wbits > zlib.MAX_WBITS:
        return len(data) / len(zlib.compress(data, 9))
    deflate = zlib.compressobj(9, zlib.DEFLATED, wbits, _MEM_LEVEL)
    return len(data) / (len(deflate.compress(data)) + len(deflate.flush()))


_MIN_LOOKAHEAD = 262  # zlib: MAX_MATCH + MIN_MATCH + 1; a match reaches back at most 2**wbits - 262 bytes
_MEM_LEVEL = 8  # zlib.compress's (DEF_MEM_LEVEL): the hash table, and so the matches found, stay the same


def is_repetitive(text: str, test: RepetitionTest = RepetitionTest()) -> bool:
    """True when ``text`` loops by any measure of ``test``."""
    words = text.lower().split()  # as many words as text.split(): lower-casing adds or removes no space
    if len(words) < test.min_words:
        return False
    return (_repeated_fraction(words, int(test.ngram)) > test.max_repeated_ngram_fraction
            or compression_ratio(text) > test.max_compression_ratio
            or (test.max_phrase_repeats is not None
                and phrase_repeats(text, int(test.phrase_words)) > test.max_phrase_repeats))


def phrase_repeats(text: str, words: int) -> int:
    """How often the most frequent phrase of ``words`` words comes in ``text`` (case and punctuation aside, fenced
    code left out: a test file repeats its lines by nature).

    >>> phrase_repeats("1. At work, it helps people relax. 2. At home, it helps people relax.", 4)
    2
    """
    found = plain_words(FENCED_CODE.sub(" ", text)).split()
    return max(Counter(zip(*(found[i:] for i in range(words)))).values(), default=0)



def response_status(text: str | None, finish_reason: str | None,
                    repetition: RepetitionTest = RepetitionTest()) -> str:
    """``empty``, ``repetitive`` (loops; usually also cut off, and a larger ``max_tokens`` would not help),
    ``truncated`` (stopped at ``max_tokens``) or ``complete``, checked in that order."""
    if text is None or not text.strip():
        return EMPTY_STATUS
    if is_repetitive(text, repetition):
        return REPETITIVE_STATUS
    if finish_reason == "length":
        return TRUNCATED_STATUS
    return COMPLETE

