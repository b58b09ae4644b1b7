"""Words of a text as the elimination rules compare them: case, spacing and punctuation aside, and the stop words
that carry no content. Pure functions, shared by the rule families (:mod:`~evolforge.steps.common.elimination`).

>>> plain_words("How long?  Until it's EMPTY.")
'how long until it s empty'
"""

from __future__ import annotations

from evolforge.core.text import plain_words  # noqa: F401 (the rule families read it from here)

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
