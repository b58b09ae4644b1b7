"""Elimination rules: when an evolution failed, and why. Pure functions over text.

Each rule returns a reason string (recorded per item as ``failure_reason``) or None. The rules follow
Evol-Instruct's elimination (WizardLM section 3.3) and Auto Evol-Instruct's failure function F
(its reference code's exact rule set); see ``shared/reference/ALGORITHMS.md`` sections 3.5 and 4.4.

>>> auto_evol_failure("Sure, which city do you mean?")
True
>>> instruction_failure("Add 2 and 3", "#Rewritten Prompt#: Add 2 and 3 twice")
'copied_template_words'
"""

from __future__ import annotations

import re
import string

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

# Words of the evolving prompts that must not leak into an evolved instruction (lower-case match).
TEMPLATE_PHRASES = (
    "#rewritten prompt#", "#the given prompt#", "#given prompt#", "#created prompt#",
    "given prompt", "rewritten prompt", "created prompt",
    "#finally rewritten instruction#", "#rewritten instruction#", "#methods list#",
)

# Auto Evol-Instruct F: a response that starts like one of these and ends with "?" asks back instead of answering.
ASK_BACK_OPENINGS = (
    "Understood", "What", "That is correct", "Thank you", "Sure", "Great", "I'm sorry",
    "Is there anything else", "As an AI assistant", "I understand",
)
GIVE_UP_PHRASES = ("please provide", "not possible")

# A compact English stop-word list (articles, pronouns, auxiliaries, prepositions, conjunctions).
STOP_WORDS = frozenset("""
a an the and or but if then else so than that this these those there here of to in on at by for with
from as into onto about over under up down out off again further once is are was were be been being am
do does did doing have has had having i me my we our you your he him his she her it its they them their
what which who whom whose when where why how all any both each few more most other some such no nor not
only own same too very can will just should would could may might must shall s t don now ok okay yes
""".split())

FINAL_MARKERS = (
    "#Finally Rewritten Instruction#:",
    "#Final Rewritten Instruction#:",
    "#Final Evolved Instruction#:",
    "#Final Refined Instruction#:",
    "Final Rewritten Instruction:",
    "Finally Rewritten Instruction:",
)


def _normalise(text: str) -> str:
    return " ".join(text.split()).lower()


def instruction_failure(parent: str, evolved: str | None, *, empty: bool = True, unchanged: bool = True,
                        template_words: bool = True) -> str | None:
    """Checks on the evolved instruction itself (switches as in ``params.yaml evolve.elimination``)."""
    if evolved is None or not evolved.strip():
        return EMPTY if empty else None
    if unchanged and _normalise(evolved) == _normalise(parent):
        return UNCHANGED
    if template_words:
        low = evolved.lower()
        if any(p in low for p in TEMPLATE_PHRASES):
            return TEMPLATE_WORDS
    return None


def auto_evol_failure(response: str) -> bool:
    """Auto Evol-Instruct's failure function F on the evolver's response to an evolved instruction."""
    text = response.strip()
    if text.endswith("?") and text.startswith(ASK_BACK_OPENINGS):
        return True
    low = text.lower()
    return any(p in low for p in GIVE_UP_PHRASES)


def is_stopwords_only(response: str) -> bool:
    words = [w.strip(string.punctuation + "“”‘’") for w in response.lower().split()]
    return all(w == "" or w in STOP_WORDS for w in words)


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


def parse_final_instruction(text: str) -> str | None:
    """The text after the last ``#Finally Rewritten Instruction#:`` (or a known variant); None if absent.

    >>> parse_final_instruction("Step 3 #Rewritten Instruction#: a\\nStep 4 #Finally Rewritten Instruction#:\\n Add 2 and 3. ")
    'Add 2 and 3.'
    """
    for marker in FINAL_MARKERS:
        at = text.rfind(marker)
        if at >= 0:
            found = text[at + len(marker):].lstrip("\n").strip()
            return found or None
    return None


_EQUAL = re.compile(r"^\W*(not\s+equal|equal)\W*$", re.IGNORECASE)


def parse_equal(text: str) -> bool | None:
    """'Equal' -> True, 'Not Equal' -> False, anything else -> None."""
    m = _EQUAL.match(text.strip())
    if not m:
        return None
    return not m.group(1).lower().startswith("not")
