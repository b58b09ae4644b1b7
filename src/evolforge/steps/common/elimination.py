"""Elimination rules: when an evolution failed, and why. Pure functions over text.

Each rule returns a reason string (recorded per item as ``failure_reason``) or None. The rules follow
Evol-Instruct's elimination (WizardLM section 3.3) and Auto Evol-Instruct's failure function F
(its reference code's exact rule set); see ``docs/reference/algorithms.md`` sections 3.5 and 4.4.
Rules of this project catch what small real evolvers write and the papers' large models do not:
output cut at ``max_tokens``, loops, answers in place of rewrites, and chatter that asks the user for
input. ``docs/explanation/elimination.md`` lists every rule, its reason string, source and thresholds.

>>> auto_evol_failure("Sure, which city do you mean?")
True
>>> instruction_failure("Add 2 and 3", "#Rewritten Prompt#: Add 2 and 3 twice")
'copied_template_words'
"""

from __future__ import annotations

import re
import string
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from evolforge.core.text import FENCED_CODE
from evolforge.steps.common.asking import drops_a_given, reads_as_request, states_its_answer

if TYPE_CHECKING:
    from evolforge.steps.evolve.settings import MissingMarker

# reasons, as recorded in ``failure_reason``
EMPTY = "empty"
UNCHANGED = "unchanged"
TEMPLATE_WORDS = "copied_template_words"
MISSING_MARKER = "missing_final_marker"
SORRY_SHORT = "sorry_short_response"
STOPWORDS_ONLY = "stopwords_only_response"
AUTO_FAILURE = "response_fails_rule_f"
NO_INFO_GAIN = "no_information_gain"
EMPTY_RESPONSE = "empty_response"
TRUNCATED = "truncated_at_max_tokens"
REPETITIVE = "repetitive"
COPIED_EXAMPLE = "copied_worked_example"
COPIED_METHOD = "copied_method_text"
CHATTER = "asks_user_for_input"
NOT_AN_INSTRUCTION = "not_an_instruction"
JUDGED_NOT_AN_INSTRUCTION = "judged_not_an_instruction"
STATED_ANSWER = "states_its_answer"
DROPPED_GIVEN = "dropped_a_given"

# response_status values (responses table): only "complete" responses are training material; "failed" is a
# call that got no answer (its reason in response_failure_reason)
COMPLETE, TRUNCATED_STATUS, REPETITIVE_STATUS, EMPTY_STATUS = "complete", "truncated", "repetitive", "empty"
FAILED_RESPONSE = "failed"
RESPONSE_STATUSES = (COMPLETE, TRUNCATED_STATUS, REPETITIVE_STATUS, EMPTY_STATUS, FAILED_RESPONSE)

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

# Auto Evol-Instruct F: a response that starts like one of these and ends with "?" asks back instead of answering.
ASK_BACK_OPENINGS = (
    "Understood", "What", "That is correct", "Thank you", "Sure", "Great", "I'm sorry",
    "Is there anything else", "As an AI assistant", "I understand",
)
GIVE_UP_PHRASES = ("please provide", "not possible")

# Chatter (this project): an "evolved instruction" that talks to the user about the task instead of
# being one -- "I'm ready to create a new prompt. What would you like to create?". Lower-case regexes.
CHATTER_PATTERNS = tuple(re.compile(p) for p in (
    r"\bwhat would you like\b",
    r"\bwhat do you want me to\b",
    r"\b(i'?m|i am) ready\b",
    r"\blet me know\b",
    r"\bhow (can|may) i (help|assist)\b",
    r"\bi('d| would) be (happy|glad) to\b",
    r"\bis there anything else\b",
    r"\b(as an ai|as a language model|i'?m an ai)\b",
    r"^(sure|certainly|of course|okay|ok|absolutely)\b\s*[,!.]",
    r"\bhere(?:'s| is) (?:the|a|an|my|your) (?:new|rewritten|revised|created|updated|modified|more complex)\b",
))
_ANY_CHATTER = re.compile("|".join(f"(?:{p.pattern})" for p in CHATTER_PATTERNS))  # one scan, not ten
# Every pattern but the one anchored at the start contains one of these words: a text with none of them
# can only match at its start. Ten substring searches cost a tenth of the regex scanning every position.
_CHATTER_HINTS = ("what would you like", "what do you want me to", "ready", "let me know", "how can i",
                  "how may i", "be happy to", "be glad to", "anything else", "an ai", "language model",
                  "here's", "here is")

# A compact English stop-word list (articles, pronouns, auxiliaries, prepositions, conjunctions).
STOP_WORDS = frozenset("""
a an the and or but if then else so than that this these those there here of to in on at by for with
from as into onto about over under up down out off again further once is are was were be been being am
do does did doing have has had having i me my we our you your he him his she her it its they them their
what which who whom whose when where why how all any both each few more most other some such no nor not
only own same too very can will just should would could may might must shall s t don now ok okay yes
""".split())

FINAL_MARKERS = ("#Finally Rewritten Instruction#:", "#Final Rewritten Instruction#:", "#Final Evolved Instruction#:",
                 "#Final Refined Instruction#:", "Final Rewritten Instruction:", "Finally Rewritten Instruction:")


def _normalise(text: str) -> str:
    return " ".join(text.split()).lower()


_NOT_WORDS = re.compile(r"[^\w\s]+")


def _words(text: str) -> str:
    """``text``'s words alone: case, spacing and punctuation aside ("How long?" and "how long." are one)."""
    return " ".join(_NOT_WORDS.sub(" ", text).split()).lower()


def adds_nothing(parent: str, evolved: str) -> bool:
    """Whether ``evolved`` is ``parent`` again, at most one content word (outside :data:`STOP_WORDS`) swapped in
    and two dropped, no longer than it: "A recipe requires 3 eggs" for "needs". A word added is a new condition; a
    word swapped for a narrower one fails too ("a sonnet" for "a poem"), as the methods ask for words added.

    >>> adds_nothing("Write a Python function f(n).", "Define a function f(n).")
    True
    >>> adds_nothing("Sort the list.", "Sort the list by age."), adds_nothing("Write a poem.", "Write a sonnet.")
    (False, True)
    """
    before, after = _words(parent).split(), _words(evolved).split()
    new, dropped = set(after) - set(before) - STOP_WORDS, set(before) - set(after) - STOP_WORDS
    return len(after) <= len(before) and len(new) <= 1 and len(dropped) <= 2


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
    found = _words(FENCED_CODE.sub(" ", text)).split()
    return max(Counter(zip(*(found[i:] for i in range(words)))).values(), default=0)


def is_chatter(text: str) -> bool:
    """The text talks to the user about the task ("What would you like ...?", "I'm ready ...")."""
    text = _normalise(text)
    if any(hint in text for hint in _CHATTER_HINTS):
        return _ANY_CHATTER.search(text) is not None
    return _ANY_CHATTER.match(text) is not None


EXAMPLE_NGRAM = 5  # words of a phrase that counts as copied from a worked example


def _phrases(text: str, n: int = EXAMPLE_NGRAM) -> set[tuple[str, ...]]:
    """``text``'s word n-grams (case and punctuation aside) that hold at least two words outside the stop words."""
    words = _words(text).split()
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


def instruction_failure(parent: str, evolved: str | None, *, finish_reason: str | None = None,
                        empty: bool = True, truncated: bool = True, unchanged: bool = True,
                        template_words: bool = True, copied_example: bool = True, copied_method: bool = True,
                        chatter: bool = True, repetitive: bool = True, not_an_instruction: bool = True,
                        stated_answer: bool = True, dropped_given: bool = True, breadth: bool = False,
                        repetition: RepetitionTest = RepetitionTest(),
                        example_additions: frozenset[tuple[str, ...]] = frozenset(),
                        method_phrases: frozenset[tuple[str, ...]] = frozenset()) -> str | None:
    """Checks on the evolved instruction itself, first match wins (switches as in ``params.yaml
    evolve.elimination``). ``finish_reason`` is the evolver's: "length" means it stopped at ``max_tokens``.
    ``example_additions``: what the worked examples shown to the evolver added (:func:`example_additions`; none
    without ``evolve.few_shot``); ``method_phrases``: the Auto Evol-Instruct method text's (:func:`method_phrases`;
    none for Evol-Instruct's templates); ``breadth``: the rewrite is a new instruction of the parent's domain
    (Evol-Instruct's in-breadth), not the parent made harder, so ``unchanged`` fails only the parent's own words
    again ("Name a fruit." for "Name a color." is a new instruction) and ``dropped_given`` is not asked."""
    if evolved is None or not evolved.strip():
        return EMPTY if empty else None
    if truncated and finish_reason == "length":
        return TRUNCATED
    if unchanged and (_words(parent) == _words(evolved) if breadth else adds_nothing(parent, evolved)):
        return UNCHANGED
    if template_words:
        low = evolved.lower()
        if any(p in low for p in TEMPLATE_PHRASES) or TEMPLATE_LABEL.search(evolved):
            return TEMPLATE_WORDS
    if copied_example and copies_example(parent, evolved, example_additions):
        return COPIED_EXAMPLE
    if copied_method and copies_method(parent, evolved, method_phrases):
        return COPIED_METHOD
    if chatter and is_chatter(evolved):
        return CHATTER
    if repetitive and is_repetitive(evolved, repetition):
        return REPETITIVE
    if not_an_instruction and not reads_as_request(evolved):
        return NOT_AN_INSTRUCTION
    if stated_answer and states_its_answer(parent, evolved):
        return STATED_ANSWER
    if dropped_given and not breadth and drops_a_given(parent, evolved):
        return DROPPED_GIVEN
    return None


def auto_evol_failure(response: str) -> bool:
    """Auto Evol-Instruct's failure function F on the evolver's response to an evolved instruction."""
    text = response.strip()
    if text.endswith("?") and text.startswith(ASK_BACK_OPENINGS):
        return True
    low = text.lower()
    return any(p in low for p in GIVE_UP_PHRASES)


_PUNCTUATION = string.punctuation + "“”‘’"


def is_stopwords_only(response: str) -> bool:
    # a generator: the first word that is not a stop word ends the walk (most responses: the first few)
    return all(w == "" or w in STOP_WORDS for w in (w.strip(_PUNCTUATION) for w in response.lower().split()))


def response_failure(response: str | None, *, sorry_short: bool = True, stopwords_only: bool = True,
                     rule_f: bool = True) -> str | None:
    """Checks on the response to an evolved instruction: a failed evolution is hard or impossible to answer."""
    if response is None or not response.strip():
        return EMPTY_RESPONSE
    if sorry_short and "sorry" in response.lower() and len(response.split()) < 80:
        return SORRY_SHORT
    if stopwords_only and is_stopwords_only(response):
        return STOPWORDS_ONLY
    if rule_f and auto_evol_failure(response):
        return AUTO_FAILURE
    return None


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


def parse_final_instruction(text: str, missing: MissingMarker = "fail") -> str | None:
    """The text after the last ``#Finally Rewritten Instruction#:`` (or a known variant). Without a marker:
    None with ``missing="fail"`` (the SLM paper's code drops the item), the whole answer with
    ``missing="whole_output"`` (the Auto Evol-Instruct code keeps it); None for an empty text either way.

    >>> parse_final_instruction("Step 3 #Rewritten Instruction#: a\\n"
    ...                         "Step 4 #Finally Rewritten Instruction#:\\n Add 2 and 3. ")
    'Add 2 and 3.'
    >>> parse_final_instruction(" Add 2 and 3."), parse_final_instruction(" Add 2 and 3.", missing="whole_output")
    (None, 'Add 2 and 3.')
    """
    for marker in FINAL_MARKERS:
        at = text.rfind(marker)
        if at >= 0:
            found = text[at + len(marker):].lstrip("\n").strip()
            return found or None
    if missing == "whole_output":
        return text.strip() or None
    return None

