"""Every other answer judged for correctness by the judge role, with its reason.

With ``probabilities`` the two labels are scored by likelihood (:mod:`evolforge.llm.ranking`, as the judge step's
``judge.probabilities``): the confidence is P(right), renormalised over the two labels, and the verdict is
``right`` at or above ``right_at``, ``wrong`` at or below ``wrong_at``, ``unsure`` between; with ``right_at`` None
the judge never says ``right``: it cannot vouch for an answer. Without it the label is decoded, held to the two
labels (confidence 1 or 0). The reason is a separate short free-text call (:data:`REASON_TEMPLATE`) whose first word
is read too; where the labels cannot be scored, it gives the verdict (``right`` only where ``right_at`` is set).

>>> verdict, p, _ = label_verdict("[-0.105360516, -2.302585093]", True, 0.65, 0.35)  # ln 0.9, ln 0.1
>>> verdict, round(p, 6)
('right', 0.9)
>>> label_verdict("[-0.105360516, -2.302585093]", True, None, 0.35)[0]  # a judge that cannot vouch
'unsure'
>>> parse_reason("Wrong: 38 - 12 is 26, not 12.")
('wrong', '38 - 12 is 26, not 12.')
"""

from __future__ import annotations

import re

from evolforge.llm.ranking import choice_probabilities

CORRECTNESS_TEMPLATE = "verify/correctness.j2"
REASON_TEMPLATE = "verify/reason.j2"
LABELS = ("right", "wrong")
_REASON = re.compile(r"^\W*(right|wrong|correct|incorrect)\b\W*", re.I)


def label_verdict(text: str | None, probabilities: bool, right_at: float | None,
                  wrong_at: float) -> tuple[str, float | None, str | None]:
    """(verdict, P(right), failure) from the label call's text: log-probabilities of LABELS, or the label."""
    if text is None:
        return "unsure", None, "call failed"
    if probabilities:
        try:
            probs = choice_probabilities(text)
        except ValueError:
            return "unsure", None, "not log-probabilities"
        if len(probs) != len(LABELS):
            return "unsure", None, "not log-probabilities"
        p = probs[0]
    else:
        label = text.strip().strip(".'\"`").lower()
        if label not in LABELS:
            return "unsure", None, "not a label"
        p = 1.0 if label == "right" else 0.0
    verdict = "right" if right_at is not None and p >= right_at else "wrong" if p <= wrong_at else "unsure"
    return verdict, p, None


def parse_reason(text: str | None) -> tuple[str | None, str | None]:
    """(the verdict its first word gives or None, the reason without it) of the reason call's text."""
    if not text or not text.strip():
        return None, None
    text = text.strip()
    match = _REASON.match(text)
    if match is None:
        return None, text[:300]
    word = match.group(1).lower()
    return ("right" if word in ("right", "correct") else "wrong"), text[match.end():].strip()[:300]
