"""The optimizer's side of an Auto Evol-Instruct step: m analysis + optimization conversations over a trajectory,
each answer parsed into a candidate method (docs/reference/algorithms.md section 4.4).

>>> parse_optimized_method("Sure.\\n```Optimized Method\\nStep 1: list methods.\\n```")
('Step 1: list methods.', None)
>>> parse_optimized_method("I have improved the method.")
(None, 'no ```Optimized Method``` block')
>>> with_reply_format("Rewrite it. Add one constraint.\\nFinally Rewritten Instruction#:",
...                   "Rewrite it.\\n\\nReply strictly in this format:\\n#Finally Rewritten Instruction#:")
'Rewrite it. Add one constraint.\\n\\nReply strictly in this format:\\n#Finally Rewritten Instruction#:'
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, Mapping

from evolforge.config.optimize_answer import OPENER
from evolforge.config.roles import Controls
from evolforge.core.prompts import PromptLibrary
from evolforge.llm.cached import LLM
from evolforge.llm.requests import ChatRequest
from evolforge.llm.types import Completion
from evolforge.steps.common.copying import METHOD_COPY_PHRASES
from evolforge.steps.optimize.result import Candidate
from evolforge.steps.optimize.settings import OptimizationPrompt
from evolforge.steps.optimize.trajectory import copy_stop_phrases

ANALYSIS_TEMPLATE = "optimize/analysis.j2"
# optimize.optimization_prompt -> the optimization turn's template: the paper's prompt, or the same with what a small
# optimizer misses said outright (that the method is a rewriter's prompt about no topic, ending in its reply format)
OPTIMIZATION_TEMPLATES = {"paper": "optimize/optimization.j2", "guided": "optimize/optimization_guided.j2",
                          "amend": "optimize/optimization_amend.j2"}
_PLACEHOLDER = "<Optimized Method Here>"  # the optimization prompt's format line, echoed back
_RULES_PLACEHOLDER = "<the new rules, one per line>"  # the amend prompt's (prompts/optimize/optimization_amend.j2)


def parse_optimized_method(text: str, finish_reason: str | None = None) -> tuple[str | None, str | None]:
    """The first non-empty ```` ```Optimized Method ``` ```` block -> (method, None), or (None, reason).

    A block is the text from its opening fence (any case: ```` ```optimized method````) to the next fence. The
    last block may be open: its answer ended there (a stop string at the closing fence, ``optimize.controls``, or
    the end of the turn) and it runs to the end of the text, unless the answer was cut at ``max_tokens``
    (``finish_reason`` "length"): a method cut mid-way is refused, never completed.

    >>> parse_optimized_method("```Optimized Method\\nStep 1: list methods.", "stop")
    ('Step 1: list methods.', None)
    >>> parse_optimized_method("```Optimized Method\\nStep 1: list", "length")
    (None, 'the ```Optimized Method``` block was cut at max_tokens')
    """
    openers = list(OPENER.finditer(text))
    if not openers:
        return None, "no ```Optimized Method``` block"
    cut = False
    for opener in openers:
        end = text.find("```", opener.end())
        if end < 0 and finish_reason == "length":
            cut = True
            continue
        block = (text[opener.end():] if end < 0 else text[opener.end():end]).strip()
        if block and block != _PLACEHOLDER:
            return block, None
    if cut:
        return None, "the ```Optimized Method``` block was cut at max_tokens"
    return None, "empty ```Optimized Method``` block"


# A method's reply format opens at a line such as "Reply strictly in this format:" (its last such line) and runs to
# its end; a line that is only a label ("Step 4 #Finally Rewritten Instruction#:", "#Finally Rewritten Instruction#",
# "Finally Rewritten Instruction#:") is a format line too
REPLY_FORMAT = re.compile(r"^[ \t]*reply\b[^\n]*\bformat\b[^\n]*$", re.I | re.M)
FORMAT_LABEL = re.compile(r"^[ \t]*(?:step \d+[ \t]*)?(?:#[a-z][a-z ]*#:?|#?[a-z][a-z ]*#?:)[ \t]*$", re.I)


def reply_format(method: str) -> str | None:
    """The reply format ``method`` ends in (from its last "Reply ... format" line on), or None."""
    found = list(REPLY_FORMAT.finditer(method))
    return method[found[-1].start():].strip() if found else None


def with_reply_format(candidate: str, current: str) -> str:
    """``candidate`` ending in ``current``'s reply format (``optimize.keep_reply_format``): the candidate's own
    format (from its last "Reply ... format" line, and the bare label lines it ends in) replaced by the current
    method's, so a small optimizer that damages the format ("Finally Rewritten Instruction#:") or drops it is
    measured on what it changed in the method. A current method without a reply format leaves it as written."""
    keep = reply_format(current)
    if keep is None:
        return candidate
    found = list(REPLY_FORMAT.finditer(candidate))
    lines = (candidate[:found[-1].start()] if found else candidate).rstrip().splitlines()
    while lines and FORMAT_LABEL.match(lines[-1]):
        lines.pop()
    head = "\n".join(lines).rstrip()
    return f"{head}\n\n{keep}" if head else keep


_LIST_MARK = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)]|rule \d+:)\s*", re.I)


def amended(method: str, rules: str) -> str:
    """``method`` with the optimizer's new ``rules`` (``optimize.optimization_prompt: amend``) as lines before its
    reply format (at its end when it has none). A rule is a line of the block, its list mark dropped; format lines,
    the prompt's placeholder echoed back and lines the method holds already are left out, so rules that add nothing
    give the method back unchanged.

    >>> amended("Rewrite it.\\n\\nReply in this format:\\n#Finally Rewritten Instruction#:",
    ...         "1. Do not answer the instruction.\\n2. Rewrite it.\\n#Finally Rewritten Instruction#:")
    'Rewrite it.\\nDo not answer the instruction.\\n\\nReply in this format:\\n#Finally Rewritten Instruction#:'
    """
    known = {line.strip() for line in method.splitlines()}
    lines = [_LIST_MARK.sub("", line).strip() for line in rules.splitlines()]
    new = [line for line in dict.fromkeys(lines) if line and line not in known and line != _RULES_PLACEHOLDER
           and not REPLY_FORMAT.match(line) and not FORMAT_LABEL.match(line)]
    if not new:
        return method
    found = list(REPLY_FORMAT.finditer(method))
    head, tail = (method[:found[-1].start()], method[found[-1].start():]) if found else (method, "")
    return "\n".join([head.rstrip(), *new]) + (f"\n\n{tail}" if tail else "")


CHARS_PER_TOKEN = 3.5  # a conservative estimate for English prose (BPE vocabularies average about 4)


def answer_budget(optimizer: LLM, method: str, factor: float) -> int:
    """The optimization turn's max_tokens: ``factor`` times the current method's estimated tokens, never below
    the role's own ``max_tokens``. A rewrite of a 300-token method must fit, whatever the role's short default
    for its free-text turns (a method cut mid-way is refused, and on some CPUs every sample ran past 320)."""
    return max(int(optimizer.role.max_tokens or 0), math.ceil(factor * len(method) / CHARS_PER_TOKEN))


def analysis_turn(prompts: PromptLibrary, trajectory: list[dict], verdicts: bool = False) -> dict[str, str]:
    """The first user turn of :func:`propose_methods`' conversations: the analysis prompt showing ``trajectory``."""
    return {"role": "user", "content": prompts.render(
        ANALYSIS_TEMPLATE, trajectory=json.dumps(trajectory, ensure_ascii=False), verdicts=verdicts)}


def analysis_requests(optimizer: LLM, analysis: dict[str, str], candidates: int) -> list[ChatRequest]:
    """The m analysis requests: sample j with ``sample_index=j``, the role's own controls (the answer is free text)."""
    return [optimizer.request([analysis], sample_index=j) for j in range(candidates)]


def answer_is_the_block(controls: Controls) -> bool:
    """Whether the optimization turn's answer is its method and nothing else: the assistant prefix opens the
    ```` ```Optimized Method ```` block (and ends there) and the closing fence is a stop string, as the shipped
    ``optimize.controls`` have it.

    >>> answer_is_the_block(Controls(assistant_prefix="```Optimized Method\\n", stop=("```",)))
    True
    >>> answer_is_the_block(Controls(stop=("```",)))
    False
    """
    prefix = controls.assistant_prefix or ""
    opener = OPENER.search(prefix)
    return opener is not None and not prefix[opener.end():].strip() and "```" in controls.stop


def propose_methods(optimizer: LLM, prompts: PromptLibrary, trajectory: list[dict], method: str,
                    *, candidates: int, controls: Mapping[str, Any] | None = None,
                    max_tokens: int | None = None, prompt: OptimizationPrompt = "paper",
                    verdicts: bool = False, feedbacks: list[Completion] | None = None,
                    copy_stop: bool = False) -> list[Candidate]:
    """m independent analysis + optimization conversations; sample j uses ``sample_index=j`` in both turns.
    ``max_tokens``: the optimization turn's (:func:`answer_budget`); None = the role's. ``prompt``: the
    optimization turn's (:data:`OPTIMIZATION_TEMPLATES`; with ``amend`` each block is rules added to ``method``).
    ``verdicts``: the trajectory's stages carry the failure function's verdicts (``optimize.trajectory_verdicts``),
    and the analysis prompt says so. ``feedbacks``: the answers to :func:`analysis_requests`, asked already (beside
    the development set's answers: evolforge.steps.optimize.step); None: asked here. ``copy_stop``: a candidate
    holding its trajectory's phrases is not measured (racing with copy_cut, its method not made over by
    keep_reply_format), so an answer may stop once it holds them (:func:`~evolforge.steps.optimize.trajectory.
    copy_stop_phrases`); asked only where the answer is the method itself (:func:`answer_is_the_block`) and the block
    holds it as written (``prompt`` not amend)."""
    analysis = analysis_turn(prompts, trajectory, verdicts)
    # optimize.controls (over roles.optimizer's) shape the optimization turn, whose answer has a fixed form
    # (the fenced method); the analysis is free text with the role's own controls
    merged = optimizer.role.controls.merged(controls, "optimize.controls")
    if copy_stop and prompt != "amend" and answer_is_the_block(merged):
        merged = dataclasses.replace(merged, stop_phrases=copy_stop_phrases(trajectory, method),
                                     stop_phrases_at_least=METHOD_COPY_PHRASES)
    if feedbacks is None:
        feedbacks = optimizer.generate(analysis_requests(optimizer, analysis, candidates), desc="optimizer: analysis")
    optimization = {"role": "user", "content": prompts.render(OPTIMIZATION_TEMPLATES[prompt], method=method)}
    asked = [j for j, f in enumerate(feedbacks) if not f.failed]  # no feedback, no second turn
    answers = dict(zip(asked, optimizer.generate(
        [optimizer.request([analysis,
                            {"role": "assistant", "content": feedbacks[j].text}, optimization], sample_index=j,
                           controls=merged, max_tokens=max_tokens)
         for j in asked], desc="optimizer: optimization")))
    out = []
    for j, feedback in enumerate(feedbacks):
        answer = answers.get(j)
        if feedback.failed or answer.failed:
            failed = feedback if feedback.failed else answer
            out.append(Candidate(index=j, feedback=None if feedback.failed else feedback.text, answer=None,
                                 method=None, parse_error=f"call failed: {failed.failure_reason}: {failed.error}"))
            continue
        parsed, error = parse_optimized_method(answer.text, answer.finish_reason)
        if parsed is not None and prompt == "amend":  # the block holds the rules to add
            parsed = amended(method, parsed)
        out.append(Candidate(index=j, feedback=feedback.text, answer=answer.text, method=parsed, parse_error=error))
    return out
