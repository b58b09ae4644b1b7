"""Whether a rewrite asks its parent's question again: the rules of the "adds nothing" family. ``unchanged`` reads
the words (:func:`adds_nothing`), ``same_problem`` the meaning (:func:`same_problem`, on the embedder's
similarity of the two texts) and ``same_answer`` the result (:func:`same_answer`, on the answers of the two).
Pure functions: the similarities and the answers come from the caller.

>>> adds_nothing("Write a Python function f(n).", "Define a function f(n).")
True
>>> same_answer("The volume over the rate: 500 / 25 = 20 minutes.", "It takes 20 minutes.")
True
"""

from __future__ import annotations

from evolforge.core.text import numbers, plain_words
from evolforge.steps.common.answer_check import final_number
from evolforge.steps.common.asking import adds_a_restriction
from evolforge.steps.common.wording import STOP_WORDS


def adds_nothing(parent: str, evolved: str) -> bool:
    """Whether ``evolved`` is ``parent`` again, at most one content word (outside :data:`STOP_WORDS`) swapped in
    and two dropped, no longer than it: "A recipe requires 3 eggs" for "needs". A word added is a new condition; a
    word swapped for a narrower one fails too ("a sonnet" for "a poem"), as the methods ask for words added.

    >>> adds_nothing("Write a Python function f(n).", "Define a function f(n).")
    True
    >>> adds_nothing("Sort the list.", "Sort the list by age."), adds_nothing("Write a poem.", "Write a sonnet.")
    (False, True)
    """
    before, after = plain_words(parent).split(), plain_words(evolved).split()
    new, dropped = set(after) - set(before) - STOP_WORDS, set(before) - set(after) - STOP_WORDS
    return len(after) <= len(before) and len(new) <= 1 and len(dropped) <= 2


def adds_a_number(parent: str, evolved: str) -> bool:
    """Whether ``evolved`` holds a number that ``parent`` does not: a new given or a changed value.

    >>> adds_a_number("A tank holds 500 litres.", "A 700-litre tank holds 500 litres.")
    True
    >>> adds_a_number("Add 2 and 3.", "What is 3 plus 2?")
    False
    """
    return bool(set(numbers(evolved)) - set(numbers(parent)))


def same_problem(parent: str, evolved: str, similarity: float, threshold: float) -> bool:
    """Whether ``evolved`` asks ``parent``'s problem again in other words: their embeddings' cosine
    ``similarity`` (roles.embedder) is at least ``threshold`` and ``evolved`` brings no number of its own (a new
    given or a changed value makes a new problem however close the wording stays) and no restriction of its own
    (:func:`~evolforge.steps.common.asking.adds_a_restriction`: "without any built-in function" is a constraint
    added to a long task that moves its embedding little).

    >>> tank = "A tank holds 500 litres and drains at 25 litres per minute. How long until it is empty?"
    >>> same_problem(tank, "Calculate the total time required to drain a tank that holds 500 litres and drains at a "
    ...              "rate of 25 litres per minute.", similarity=0.86, threshold=0.8)
    True
    >>> same_problem(tank, "A 700-litre tank holds 500 litres and drains at 30 litres per minute. When is it empty?",
    ...              similarity=0.86, threshold=0.8)
    False
    """
    return similarity >= threshold and not adds_a_number(parent, evolved) and not adds_a_restriction(parent, evolved)


ANSWER_TOLERANCE = 1e-6  # relative: two results this close are one


def same_answer(parent_answer: str | None, answer: str | None) -> bool:
    """Whether the answer to a rewrite gives the result the answer to its parent gave (their final numbers,
    :func:`~evolforge.steps.common.answer_check.final_number`): the rewrite added nothing to find. False when
    either answer is missing or gives no number (code, prose: not compared).

    >>> same_answer("#### 35", "So Grade 6 has 35 students."), same_answer("20 minutes", "16.67 minutes")
    (True, False)
    """
    found = final_number(parent_answer or ""), final_number(answer or "")
    if None in found:
        return False
    before, after = found
    return abs(before - after) <= ANSWER_TOLERANCE * max(1.0, abs(before), abs(after))

