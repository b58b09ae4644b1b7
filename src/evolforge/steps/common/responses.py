"""The response call: an (instruction, input) answered with the response template in one user turn.

The respond step answers every kept item with it; the evolve step's response check and Auto Evol-Instruct's
development runs ask the same, with the same sampling. A round table keeps each check answer with its request's
cache key (``check_response``, ``check_request_key``): the respond step takes an answer from there when its own
request has that key, and asks the responder for the others.
"""

from __future__ import annotations

from evolforge.steps.respond.settings import RespondSettings
from evolforge.core.prompts import PromptLibrary
from evolforge.llm.cached import LLM
from evolforge.llm.types import ChatRequest, Completion

RESPONSE_TEMPLATE = "respond/response.j2"


def response_sampling(settings: RespondSettings) -> dict[str, float | int | None]:
    """The sampling the respond stage asks the responder for (None = the role's default). The evolve stage's
    response check asks with the same, so respond can take those answers from the round tables."""
    return {"temperature": settings.temperature, "max_tokens": settings.max_tokens}


def response_requests(llm: LLM, prompts: PromptLibrary, instructions: list[str], inputs: list[str],
                      **sampling) -> list[ChatRequest]:
    """One chat turn per (instruction, input), rendered from the response template."""
    return [llm.request([{"role": "user",
                          "content": prompts.render(RESPONSE_TEMPLATE, instruction=q, input=x)}], **sampling)
            for q, x in zip(instructions, inputs)]


def respond(llm: LLM, prompts: PromptLibrary, instructions: list[str], inputs: list[str],
            desc: str = "respond", **sampling) -> list[Completion]:
    """Answer each (instruction, input) (:func:`response_requests`); a failed call is a failed completion
    (``Completion.failed``)."""
    return llm.generate(response_requests(llm, prompts, instructions, inputs, **sampling), desc=desc)
