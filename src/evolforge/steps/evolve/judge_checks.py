"""The evolve stage's optional judge checks (``evolve.elimination.not_an_instruction_judge`` and ``info_gain``):
their requests, held to the prompt's two verdicts, and the parse of each verdict. A verdict that does not parse,
or a call that failed, is None: the item is not eliminated on no evidence."""

from __future__ import annotations

import re

from evolforge.core.prompts import PromptLibrary
from evolforge.llm.cached import LLM

IS_INSTRUCTION_TEMPLATE = "judge/is_instruction.j2"
EQUAL_TEMPLATE = "judge/equal.j2"
JUDGE_TEMPLATES = (EQUAL_TEMPLATE, IS_INSTRUCTION_TEMPLATE)  # the judge checks' prompts

_EQUAL = re.compile(r"^\W*(not\s+equal|equal)\W*$", re.IGNORECASE)


def parse_equal(text: str) -> bool | None:
    """'Equal' -> True, 'Not Equal' -> False, anything else -> None."""
    m = _EQUAL.match(text.strip())
    if not m:
        return None
    return not m.group(1).lower().startswith("not")


_IS_INSTRUCTION = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)


def parse_is_instruction(text: str) -> bool | None:
    """The judge's verdict on prompts/judge/is_instruction.j2: 'Yes' -> True, 'No' -> False, else None."""
    m = _IS_INSTRUCTION.match(text.strip())
    return None if not m else m.group(1).lower() == "yes"


def is_instruction_verdicts(llm: LLM, prompts: PromptLibrary, texts: list[str]) -> list[bool | None]:
    """LLM check: True when the judge reads ``text`` as an instruction, False when not, None unparsed (or failed).
    The answer is held to Yes / No (see ``ChatRequest.choices``)."""
    requests = [llm.request([{"role": "user", "content": prompts.render(IS_INSTRUCTION_TEMPLATE, text=t)}],
                            choices=("Yes", "No")) for t in texts]
    return [None if t is None else parse_is_instruction(t)
            for t in llm.complete(requests, desc="instruction check")]


def info_gain_verdicts(llm: LLM, prompts: PromptLibrary, parents: list[str], children: list[str]) -> list[bool | None]:
    """LLM check: True when the evolved instruction equals its parent (no information gain); the answer is
    held to the prompt's two verdicts."""
    requests = [llm.request([{"role": "user", "content": prompts.render(EQUAL_TEMPLATE, first=p, second=c)}],
                            choices=("Equal", "Not Equal")) for p, c in zip(parents, children)]
    # a failed call is an unparsed verdict: the item is not eliminated on no evidence
    return [None if t is None else parse_equal(t) for t in llm.complete(requests, desc="equal check")]
