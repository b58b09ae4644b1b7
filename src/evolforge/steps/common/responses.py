"""The response call: an (instruction, input) answered with the response template in one user turn.

The respond step answers every kept item with it; the evolve step's response check and Auto Evol-Instruct's
development runs ask the same, with the same sampling, so the respond step finds their answers in the cache.
"""

from __future__ import annotations

from evolforge.steps.respond.settings import RespondSettings
from evolforge.core.prompts import PromptLibrary
from evolforge.llm.cached import LLM
from evolforge.llm.types import Completion

RESPONSE_TEMPLATE = "respond/response.j2"


def response_sampling(settings: RespondSettings) -> dict[str, float | int | None]:
    """The sampling the respond stage asks the responder for (None = the role's default). The evolve stage's
    response check asks with the same, so respond finds those answers in the cache."""
    return {"temperature": settings.temperature, "max_tokens": settings.max_tokens}


def respond(llm: LLM, prompts: PromptLibrary, instructions: list[str], inputs: list[str],
            desc: str = "respond", **sampling) -> list[Completion]:
    """Answer each (instruction, input) with one chat turn rendered from the response template; a failed
    call is a failed completion (``Completion.failed``)."""
    requests = [llm.request([{"role": "user", "content": prompts.render(RESPONSE_TEMPLATE, instruction=q, input=x)}], **sampling)
                for q, x in zip(instructions, inputs)]
    return llm.generate(requests, desc=desc)
