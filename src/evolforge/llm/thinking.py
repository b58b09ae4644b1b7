"""Reasoning models' thinking, kept apart from their answers.

A model that thinks before it answers writes its thinking between markers (``<think>`` ... ``</think>`` for
Qwen3, DeepSeek-R1 and most open models; a role's ``thinking_tags`` names others), or a server hands it back
in a field of its own (``reasoning_content``: vLLM's and SGLang's reasoning parsers, llama.cpp's
``--reasoning-format``, DeepSeek's API; ``reasoning``: some others). :func:`separate` moves it out of the
answer before anything else reads the answer -- a stage's rules, parsers, scores and outputs see the answer
only -- into :attr:`Completion.thinking`, which the call cache keeps beside the answer and the stages write to
their ``*_thinking`` columns (null where the model did not think).

Where the thinking starts before the answer's first token (a chat template that opens ``<think>`` itself, as
Qwen3's and DeepSeek-R1's do), the text has the closing marker only: what comes before it is the thinking.
A thinking that never closes (``max_tokens`` ran out mid-thought) leaves an empty answer, finish ``length``.

>>> from evolforge.llm.types import Completion
>>> c = separate(Completion("<think>Two plus two.</think>\\n4", "stop"))
>>> c.text, c.thinking
('4', 'Two plus two.')
>>> separate(Completion("Counting first.</think> 4", "stop")).thinking
'Counting first.'
>>> separate(Completion("<think>Still thinking", "length")).text
''
>>> separate(Completion("4", "stop")).thinking is None
True
>>> c = separate(Completion("<think>  </think>  4", "stop"))  # a thinking model told not to think
>>> c.text, c.thinking
('4', None)
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from evolforge.llm.types import Completion

DEFAULT_TAGS = ("<think>", "</think>")


def split(text: str, tags: Sequence[str] = DEFAULT_TAGS) -> tuple[str, str | None, bool]:
    """(answer, thinking or None, closed): the text with its thinking cut out. ``closed`` is False when a
    thinking opened and never closed (the answer is then empty)."""
    if not tags:
        return text, None, True
    start, end = tags[0], tags[1]
    thoughts: list[str] = []
    answer = text
    close = answer.rfind(end)
    if close >= 0:  # everything before the last closing marker is thinking (with or without its opening)
        head, answer = answer[:close], answer[close + len(end):]
        thoughts.append(head.replace(start, "").replace(end, "\n"))
    opened = answer.find(start)
    if opened >= 0 and not answer[:opened].strip():  # a thinking that opens and never closes
        thoughts.append(answer[opened + len(start):])
        thinking = "\n".join(t.strip() for t in thoughts if t.strip())
        return "", thinking or None, False
    thinking = "\n".join(t.strip() for t in thoughts if t.strip())
    return (answer.strip() if thoughts else answer), (thinking or None) if close >= 0 else None, True


def separate(completion: Completion, tags: Sequence[str] = DEFAULT_TAGS) -> Completion:
    """``completion`` with the thinking in its text moved to ``thinking`` (after any the server sent apart)."""
    if completion.failed:
        return completion
    answer, thinking, closed = split(completion.text, tags)
    if thinking is None and closed and answer == completion.text:
        return completion
    kept = "\n".join(t for t in (completion.thinking, thinking) if t) or None
    finish = completion.finish_reason if closed else "length"
    return dataclasses.replace(completion, text=answer, thinking=kept, finish_reason=finish)
