"""Whether a text asks for something or answers: the ``not_an_instruction`` elimination rule's cheap test (the
judge's ``not_an_instruction_judge`` is the costly one), the ``chatter`` rule's (a text that talks to the user about
the task instead), and what a rewrite's numbers say beside its parent's
(``stated_answer``: a result it states; ``dropped_given``: a given it left out), how many results a question
asks for (:func:`results_asked`, selection's backstop in a lineage) and the restrictions it states
(:func:`restriction_mask`: "without", "not", "only one loop", "O(n)": a rewrite that adds one asks more, however
close its meaning stays). Pure functions over text.

A text reads as a request when its prose (fenced code left out) asks for something -- a question mark, a
sentence that opens with a request word or an imperative verb, a clause after a leading phrase ("Given a list,
find ...") that opens with an imperative verb, or a first-person request ("I need ...") -- and does not speak
in a solver's voice ("To find the price, we need ...", "We can follow these steps"): a small
evolver given a method it cannot follow answers the instruction instead of rewriting it, and an answer's steps
open with imperative verbs too.

>>> reads_as_request("Explain what a leap year is, in two sentences.")
True
>>> reads_as_request("To find the sale price, we need to follow these steps: 1. Calculate the discount.")
False
>>> reads_as_request("```python\\ndef add(a, b):\\n    return a + b\\n```")
False
"""

from __future__ import annotations

import re
from itertools import takewhile

from evolforge.core.text import FENCED_CODE, NUMBER, number, numbers
from evolforge.steps.common.wording import lower_spaced

# Words that open a request (module doc).
# (not when / where / which / who / given: they open statements too -- "When water boils, it turns to steam")
REQUEST_WORDS = frozenset("""
please can could would will should is are am do does did how what why imagine suppose assume pretend let let's
""".split())
IMPERATIVE_VERBS = frozenset("""
act add adapt adjust analyze analyse answer apply argue arrange assess brainstorm break build calculate
categorize categorise change check choose cite clarify classify combine compare compile complete compose
compute condense consider construct contrast convert correct count craft create critique debug decide define
demonstrate derive describe design detail detect determine develop devise diagnose discuss draft draw
edit elaborate enumerate estimate evaluate examine explain explore express extract fill find fix format
formulate generate give guess help highlight identify illustrate implement improve infer insert
interpret introduce invent investigate justify label list locate make map match measure mention modify
name note offer optimize optimise order organize organise outline paraphrase pick plan predict prepare
present produce propose prove provide put rank rate read recommend refactor reformulate remove reorder
rephrase replace reply report research respond restate review revise rewrite say schedule select share
show simplify simulate sketch solve sort specify state suggest summarize summarise take tell test think
trace track transform translate turn use verify walk write
""".split())
REQUEST_PHRASES = re.compile(r"\b(i need|i want|i'?d like|i would like|i'?m looking for|i am looking for|help me|"
                             r"your task|you are asked|you must|you should)\b")


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


def is_chatter(text: str) -> bool:
    """The text talks to the user about the task ("What would you like ...?", "I'm ready ...")."""
    text = lower_spaced(text)
    if any(hint in text for hint in _CHATTER_HINTS):
        return _ANY_CHATTER.search(text) is not None
    return _ANY_CHATTER.match(text) is not None


# A solver's voice at a sentence's start (lower-case text): "To find the price, we need ...", "To determine the eggs
# needed, you can use the proportion ...", "To determine the sale price, follow these steps: 1. ...", "We can follow
# these steps". Not "Explain why we must follow these steps" (a request about steps), "To find the best route, we
# recommend you ..." nor "To find it, you must use recursion" (requests with a lead-in).
SOLVER_VOICE = re.compile(
    r"(?:^|[.!?:]\s+|\n)\s*(?:to [a-z]+\b[^.?!\n]{0,160},\s*"
    r"(?:we (?:need|can|will|must|first|have)|you (?:need|can|could|will|first|have)|follow (?:these|the following))\b"
    r"|we (?:can|will|need to|must) (?:follow|use) (?:these|the following) steps\b)")


def reads_as_request(text: str) -> bool:
    """Whether ``text`` reads as a request, not an answer (module doc): its prose asks something and does not
    solve the task itself.

    >>> reads_as_request("A shirt costs $40. We can use the following steps: 1. Multiply 40 by 0.75.")
    False
    >>> reads_as_request("```python\\nprint(1)\\n```\\nFix the bug in the code above so it prints 2.")
    True
    """
    prose = FENCED_CODE.sub(" ", text)
    return asks_something(prose) and SOLVER_VOICE.search(prose.lower()) is None


_SENTENCES = re.compile(r"[.!;:\n]+")
_LEAD = " \t\"'`*#-–•>([0123456789."


def asks_something(text: str) -> bool:
    """Cheap test that ``text`` is a request (a question, an imperative, a first-person need), not an answer.

    >>> asks_something("Explain what a leap year is, in two sentences.")
    True
    >>> asks_something("A leap year is a natural phenomenon that happens every four years.")
    False
    """
    if "?" in text or REQUEST_PHRASES.search(text.lower()):
        return True
    for sentence in _SENTENCES.split(text):
        clauses = [_first_word(c) for c in sentence.split(",")]
        if clauses[0] in REQUEST_WORDS or clauses[0] in IMPERATIVE_VERBS:
            return True
        # "In a world of leaves, write ..." -- but not "..., when the calendar adds ..."
        if len(clauses) > 1 and clauses[1] in IMPERATIVE_VERBS:
            return True
    return False


def _first_word(clause: str) -> str:
    """The clause's first word, lower-case, past bullets, quotes and markdown."""
    for word in clause.split():
        word = word.lower().strip(_LEAD)
        if word:
            return word
    return ""


# A result stated for the task it ends (lower-case text): "..., which is 36 metres." / "The answer is 42." -- a
# number after "which/that is", "equals", "comes to", "simplifies to" or "the answer/result/solution is", or a
# variable's value there ("..., which simplifies to b = 16."), with at most one word (a unit) before the sentence
# ends. Not "a budget of $50, which is 20% more than last year" (more words follow), nor "a pole, which is 2 metres
# long" (two words follow).
STATED_RESULT = re.compile(
    r"(?:\b(?:which|that)\s+(?:is|equals|comes\s+to|makes|totals|simplifies\s+to)|\bthe\s+(?:final\s+)?"
    r"(?:answer|result|solution)\s+(?:is|will\s+be|would\s+be))\s+(?:[a-z]\s*=\s*)?"
    r"(?:about\s+|approximately\s+|exactly\s+|a\s+total\s+of\s+)?[$€£]?\s?"
    r"(?P<number>\d[\d,]*(?:\.\d+)?)\s*%?(?:\s+[a-z]+)?\s*(?:[.!?]|$)", re.MULTILINE)


def states_its_answer(parent: str, evolved: str) -> bool:
    """Whether ``evolved`` states a result (:data:`STATED_RESULT`) that ``parent`` does not hold: the evolver
    solved its own rewrite, and the data would teach the answer inside the question.

    >>> states_its_answer("Find the perimeter of a square of side 8 m.",
    ...                   "Calculate the perimeter of a square with a side of 9 metres, which is 36 metres.")
    True
    >>> states_its_answer("Two numbers sum to 50; which is larger if one is 30?",
    ...                   "Two numbers sum to 50, and one of them is 30. Which is larger, given the sum, which is 50?")
    False
    >>> states_its_answer("Plan a party.", "Plan a party on a budget of $60, which is 20% more than last year.")
    False
    """
    stated = [m.group("number") for m in STATED_RESULT.finditer(FENCED_CODE.sub(" ", evolved).lower())]
    if not stated:
        return False
    given = set(numbers(parent))
    return any(value not in given for value in numbers(" ".join(stated)))


# a number (as :data:`~evolforge.core.text.NUMBER`) or a word, the tokens of :func:`_givens`
_TOKEN = re.compile(rf"(?<![\w.])({NUMBER})(?!\w)|([^\W\d_]+)")


def _givens(text: str) -> list[tuple[float, tuple[str, ...]]]:
    """Each number of ``text`` (fenced code aside) with the two words after it, its unit and what it measures
    ("25 litres per minute" -> ``("litres", "per")``); fewer where a number or the end comes first."""
    tokens = [(number(n), None) if n else (None, w.lower()) for n, w in _TOKEN.findall(FENCED_CODE.sub(" ", text))]
    return [(value, tuple(word for _, word in takewhile(lambda t: t[1] is not None, tokens[k + 1:k + 3])))
            for k, (value, _) in enumerate(tokens) if value is not None]


def drops_a_given(parent: str, evolved: str) -> bool:
    """Whether ``evolved`` loses a given of ``parent``: it keeps some of the parent's numbers (so it is the same
    problem, not one made general) and leaves out another, whose two following words no number of the rewrite has
    either (so it was not changed for another value: "drains at 30 litres per minute" for "at 25 litres per
    minute"). A rewrite made harder keeps its parent's givens, and a word problem without one cannot be solved.

    >>> tank = "A tank holds 500 litres and drains at 25 litres per minute. How long until it is empty?"
    >>> drops_a_given(tank, "Make a table of the water left each minute, from 500 litres down to 0 litres.")
    True
    >>> drops_a_given(tank, "A 700-litre tank holds 500 litres and drains at 30 litres per minute. When is it empty?")
    False
    >>> drops_a_given(tank, "Write a function that gives the time a tank takes to empty from its volume and rate.")
    False
    """
    given, kept = _givens(parent), _givens(evolved)
    kept_values = {value for value, _ in kept}
    if not kept_values & {value for value, _ in given}:
        return False
    contexts = {after for _, after in kept if after}
    return any(value not in kept_values and not (after and after in contexts) for value, after in given)


# What a question asks for (lower-case prose): one result per question, one more for each further question joined
# to it ("... and how many are left?"), and one per order to find something that opens a sentence or a clause
_WH = r"(?:how (?:many|much|long|far|old|fast|often|tall|big|deep|high|wide)|what|which|who|when|where|why|whether)\b"
_MORE_WH = re.compile(rf"\b(?:and|or)\s+(?:also\s+)?{_WH}")
_ORDER = re.compile(r"(?:^|[,;:]\s+|\b(?:and|then|also|finally|next),?\s+)(?:please\s+)?(?:calculate|compute|find|"
                    r"determine|work out|give|state|list|express|convert|estimate|show|prove|identify|write|explain|"
                    r"describe)\b")
_QUESTION_END = re.compile(r"(?<=[.?!])\s+|\n+")


def results_asked(text: str) -> int:
    """How many results ``text`` asks for: each question (a sentence ending in "?") one, and one more for each
    further question joined to it; each order to find something (calculate, find, determine, ...) that opens a
    sentence or a clause one. Fenced code is left out.

    >>> results_asked("A tank holds 500 litres. How long until it is empty?")
    1
    >>> results_asked("How long until it is empty, and how much has drained after 5 minutes?")
    2
    >>> results_asked("Calculate the time it takes, then find the rate in litres per hour.")
    2
    """
    prose = FENCED_CODE.sub(" ", text).lower()
    asked = 0
    for sentence in _QUESTION_END.split(prose):
        sentence = sentence.strip()
        if sentence.endswith("?"):
            asked += 1 + len(_MORE_WH.findall(sentence))
        elif sentence:
            asked += len(_ORDER.findall(sentence))
    return asked


def asks_nothing_new(ancestor: str, descendant: str) -> bool:
    """Whether ``descendant`` asks for no more results than ``ancestor`` (:func:`results_asked`): with a checked
    answer equal to its ancestor's, it has nothing new to find (selection's ``same_answer_in_lineage``).

    >>> tank = "A tank holds 500 litres and drains at 25 litres per minute. How long until it is empty?"
    >>> asks_nothing_new(tank, "Calculate the total time required to drain a tank that holds 500 litres and drains "
    ...                  "at a rate of 25 litres per minute.")
    True
    >>> asks_nothing_new(tank, tank[:-1] + ", and how much is left after 8 minutes?")
    False
    """
    return results_asked(descendant) <= results_asked(ancestor)


# The words that state a restriction (lower-case, whole words), one bit each in a mask: a rewrite that adds one of
# them ("without any built-in function", "do not use ...", "a single loop", "in O(n) time") adds a constraint, as
# Evol-Instruct's code methods do, while its embedding stays as close to its parent's as a paraphrase's
RESTRICTIONS = ("without", "not", "no", "never", "none", "instead", "except", "unless", "avoid", "single", "neither",
                "nor", "cannot", "o(")
_RESTRICTION = re.compile(r"\b(?:without|not|no|never|none|instead|except|unless|avoid|single|neither|nor|cannot)\b|"
                          r"\bo\(|n't\b")


def restriction_mask(text: str) -> int:
    """A bit per word of :data:`RESTRICTIONS` that ``text`` holds ("n't" counts as "not"), fenced code left out.

    >>> restriction_mask("Sort it.") == 0, restriction_mask("Sort it without sorted(), in O(n log n).") == (1 | 1 << 13)
    (True, True)
    """
    found = {m.group(0) for m in _RESTRICTION.finditer(FENCED_CODE.sub(" ", text).lower())}
    return sum(1 << k for k, word in enumerate(RESTRICTIONS)
               if word in found or (word == "not" and "n't" in found))


def adds_a_restriction(parent: str, evolved: str) -> bool:
    """Whether ``evolved`` states a restriction (:func:`restriction_mask`) that ``parent`` does not.

    >>> adds_a_restriction("Remove the spaces of a string.", "Remove the spaces of a string without replace().")
    True
    >>> adds_a_restriction("Do not use loops.", "Don't use any loop.")
    False
    """
    return bool(restriction_mask(evolved) & ~restriction_mask(parent))
