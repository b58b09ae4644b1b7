"""Text a rewrite copied instead of writing its own: the evolving prompt's labels (``template_words``), a phrase a
worked example added (``copied_example``) and the Auto Evol-Instruct method's own words (``copied_method``). Pure
functions over text.

>>> has_template_words("#Rewritten Prompt#: Add 2 and 3 twice")
True
"""

from __future__ import annotations

import re
from typing import Iterable

from evolforge.core.text import plain_words
from evolforge.steps.common.wording import STOP_WORDS

# Words of the evolving prompts that must not leak into an evolved instruction (lower-case match).
TEMPLATE_PHRASES = (
    "#rewritten prompt#", "#the given prompt#", "#given prompt#", "#created prompt#",
    "given prompt", "rewritten prompt", "created prompt",
    "#finally rewritten instruction#", "#rewritten instruction#", "#methods list#", "#instruction#", "#plan#",
    "rewritten instruction",  # the initial method's labels, and its "rewritten prompt" (a label left on the rewrite)
)
# ... and the labels' form in any spelling a small evolver copies them with ("#Rewriten Prompt#:", "#The given
# Instruction#"): a '#'-delimited label that ends in prompt or instruction
TEMPLATE_LABEL = re.compile(r"#[^#\n]{0,40}\b(?:prompt|instruction)s?\s*#", re.IGNORECASE)


def has_template_words(evolved: str) -> bool:
    """Whether ``evolved`` carries a word or label of the evolving prompts (:data:`TEMPLATE_PHRASES`,
    :data:`TEMPLATE_LABEL`)."""
    low = evolved.lower()
    return any(p in low for p in TEMPLATE_PHRASES) or TEMPLATE_LABEL.search(evolved) is not None


EXAMPLE_NGRAM = 5  # words of a phrase that counts as copied from a worked example


def _phrases(text: str, n: int = EXAMPLE_NGRAM) -> set[tuple[str, ...]]:
    """``text``'s word n-grams (case and punctuation aside) that hold at least two words outside the stop words."""
    words = plain_words(text).split()
    return {g for g in zip(*(words[i:] for i in range(n))) if sum(w not in STOP_WORDS for w in g) >= 2}


def example_additions(examples: Iterable[tuple[str, str]]) -> frozenset[tuple[str, ...]]:
    """The phrases each worked example's rewrite added to its instruction, from ``(instruction, rewrite)`` pairs.

    >>> sorted(example_additions([("Write a poem.", "Write a poem in exactly four lines.")]))[0]
    ('a', 'poem', 'in', 'exactly', 'four')
    """
    return frozenset(p for instruction, rewrite in examples for p in _phrases(rewrite) - _phrases(instruction))


def copies_example(parent: str, evolved: str, additions: frozenset[tuple[str, ...]]) -> bool:
    """Whether ``evolved`` holds a phrase that a worked example added and ``parent`` does not have: the evolver
    copied the example's rewrite instead of applying the method (a small evolver's habit under evolve.few_shot).

    >>> added = example_additions([("Write a poem.", "Write a poem in exactly four lines, told by a sailor.")])
    >>> copies_example("Explain tides.", "Explain tides in exactly four lines, told by a fisherman.", added)
    True
    >>> copies_example("Explain tides.", "Explain tides to a child in four short sentences.", added)
    False
    """
    return _copies(parent, evolved, additions, at_least=1)


def _copies(parent: str, evolved: str, phrases: frozenset[tuple[str, ...]], at_least: int) -> bool:
    """Whether ``evolved`` holds ``at_least`` of ``phrases`` that ``parent`` lacks (the parent read only then)."""
    copied = _phrases(evolved) & phrases if phrases else set()
    return len(copied) >= at_least and len(copied - _phrases(parent)) >= at_least


METHOD_COPY_PHRASES = 4  # phrases of the method text in a rewrite, not in its parent, that make it a copy


def method_phrases(method_text: str | None) -> frozenset[tuple[str, ...]]:
    """The phrases of an evolving method's text (none without one), for :func:`copies_method`."""
    return frozenset(_phrases(method_text)) if method_text else frozenset()


def copies_method(parent: str, evolved: str, phrases: frozenset[tuple[str, ...]]) -> bool:
    """Whether ``evolved`` holds :data:`METHOD_COPY_PHRASES` or more phrases of the method text (``phrases``:
    :func:`method_phrases`) that ``parent`` does not: the evolver pasted the method's own words (most often a
    sentence or an instruction the method carries) instead of applying them. A rewrite that names one of the
    method's ideas in its words ("such as time limits") holds one or two.

    >>> method = method_phrases("Rewrite it. Write a JavaScript function that sums an array of numbers, minding "
    ...                         "negative numbers and floating-point precision issues.")
    >>> copies_method("Find the price.", "Find the price, minding negative numbers and floating-point precision "
    ...               "issues.", method), copies_method("Find the price.", "Find the price of each step.", method)
    (True, False)
    """
    return _copies(parent, evolved, phrases, at_least=METHOD_COPY_PHRASES)

