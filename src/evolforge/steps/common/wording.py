"""Words of a text as the elimination rules compare them: the stop words that carry no content (a text's words with
case, spacing and punctuation aside are :func:`evolforge.core.text.plain_words`). Pure functions, shared by the rule
families (:mod:`~evolforge.steps.common.elimination`).
"""

from __future__ import annotations

# A compact English stop-word list (articles, pronouns, auxiliaries, prepositions, conjunctions).
STOP_WORDS = frozenset("""
a an the and or but if then else so than that this these those there here of to in on at by for with
from as into onto about over under up down out off again further once is are was were be been being am
do does did doing have has had having i me my we our you your he him his she her it its they them their
what which who whom whose when where why how all any both each few more most other some such no nor not
only own same too very can will just should would could may might must shall s t don now ok okay yes
""".split())


def lower_spaced(text: str) -> str:
    """``text`` lower-case, each run of white space one space."""
    return " ".join(text.split()).lower()
