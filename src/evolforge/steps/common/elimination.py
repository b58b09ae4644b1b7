"""Elimination rules: when an evolution failed, and why. Pure functions over text.

Each rule returns a reason string (recorded per item as ``failure_reason``) or None. The rules follow
Evol-Instruct's elimination (WizardLM section 3.3) and Auto Evol-Instruct's failure function F
(its reference code's exact rule set); see ``docs/reference/algorithms.md`` sections 3.5 and 4.4.
Rules of this project catch what small real evolvers write and the papers' large models do not:
output cut at ``max_tokens``, loops, answers in place of rewrites, chatter that asks the user for
input, and rewrites that add nothing (the same problem again, the method handed over, the same answer).
``docs/explanation/elimination.md`` lists every rule, its reason string, source, thresholds and cost.

This module holds the reasons and runs the rules in order; the families live beside it: :mod:`.wording` (words
as the rules compare them), :mod:`.repetition` (loops, response status), :mod:`.copying` (template words, worked
examples, the method's text), :mod:`.asking` (request or answer, chatter, stated results, dropped givens),
:mod:`.giveaway` (the method handed over) and :mod:`.sameness` (the same words, problem or answer).

>>> auto_evol_failure("Sure, which city do you mean?")
True
>>> instruction_failure("Add 2 and 3", "#Rewritten Prompt#: Add 2 and 3 twice")
'copied_template_words'
"""

from __future__ import annotations

import string
from typing import TYPE_CHECKING

from evolforge.steps.common.asking import drops_a_given, is_chatter, reads_as_request, states_its_answer
from evolforge.steps.common.copying import copies_example, copies_method, has_template_words
from evolforge.steps.common.giveaway import hands_over_method as giveaway
from evolforge.steps.common.repetition import RepetitionTest, is_repetitive
from evolforge.steps.common.sameness import adds_nothing, same_answer as answers_alike
from evolforge.core.text import plain_words
from evolforge.steps.common.wording import STOP_WORDS

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
HANDS_OVER_METHOD = "hands_over_method"
SAME_PROBLEM = "same_problem"
SAME_ANSWER = "same_answer"

# Auto Evol-Instruct F: a response that starts like one of these and ends with "?" asks back instead of answering.
ASK_BACK_OPENINGS = (
    "Understood", "What", "That is correct", "Thank you", "Sure", "Great", "I'm sorry",
    "Is there anything else", "As an AI assistant", "I understand",
)
GIVE_UP_PHRASES = ("please provide", "not possible")

FINAL_MARKERS = ("#Finally Rewritten Instruction#:", "#Final Rewritten Instruction#:", "#Final Evolved Instruction#:",
                 "#Final Refined Instruction#:", "Final Rewritten Instruction:", "Finally Rewritten Instruction:")


def instruction_failure(parent: str, evolved: str | None, *, finish_reason: str | None = None,
                        empty: bool = True, truncated: bool = True, unchanged: bool = True,
                        template_words: bool = True, copied_example: bool = True, copied_method: bool = True,
                        chatter: bool = True, repetitive: bool = True, not_an_instruction: bool = True,
                        stated_answer: bool = True, dropped_given: bool = True, hands_over_method: bool = True,
                        breadth: bool = False,
                        repetition: RepetitionTest = RepetitionTest(),
                        example_additions: frozenset[tuple[str, ...]] = frozenset(),
                        method_phrases: frozenset[tuple[str, ...]] = frozenset()) -> str | None:
    """Checks on the evolved instruction itself, first match wins (switches as in ``params.yaml
    evolve.elimination``). ``finish_reason`` is the evolver's: "length" means it stopped at ``max_tokens``.
    ``example_additions``: what the worked examples shown to the evolver added (:func:`.copying.example_additions`;
    none without ``evolve.few_shot``); ``method_phrases``: the Auto Evol-Instruct method text's
    (:func:`.copying.method_phrases`;
    none for Evol-Instruct's templates); ``breadth``: the rewrite is a new instruction of the parent's domain
    (Evol-Instruct's in-breadth), not the parent made harder, so ``unchanged`` fails only the parent's own words
    again ("Name a fruit." for "Name a color." is a new instruction) and ``dropped_given`` is not asked."""
    if evolved is None or not evolved.strip():
        return EMPTY if empty else None
    if truncated and finish_reason == "length":
        return TRUNCATED
    if unchanged and (plain_words(parent) == plain_words(evolved) if breadth else adds_nothing(parent, evolved)):
        return UNCHANGED
    if template_words and has_template_words(evolved):
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
    if hands_over_method and giveaway(parent, evolved):
        return HANDS_OVER_METHOD
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
                     rule_f: bool = True, same_answer: bool = True, parent_answer: str | None = None) -> str | None:
    """Checks on the response to an evolved instruction: a failed evolution is hard or impossible to answer, or
    (``same_answer``) its answer gives the result ``parent_answer`` gave: nothing was added to find (not asked
    without a parent answer)."""
    if response is None or not response.strip():
        return EMPTY_RESPONSE
    if sorry_short and "sorry" in response.lower() and len(response.split()) < 80:
        return SORRY_SHORT
    if stopwords_only and is_stopwords_only(response):
        return STOPWORDS_ONLY
    if rule_f and auto_evol_failure(response):
        return AUTO_FAILURE
    if same_answer and parent_answer and answers_alike(parent_answer, response):
        return SAME_ANSWER
    return None


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

