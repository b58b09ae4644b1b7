"""A fake backend for tests: scripted replies, a record of what was sent, no model, no network.

>>> fake = FakeBackend(["first", "second"])
>>> fake.generate([ChatRequest.chat([{"role": "user", "content": "hi"}])])[0].text
'first'
>>> fake.sent[0].messages
(('user', 'hi'),)

``replies`` may also be a function ``request -> str`` for replies that depend on the prompt. A reply
given as a :class:`Completion` is returned as it is, so a script can end a reply at ``max_tokens``
or fail an item (``Completion.failure(...)``). Tokens are counted as whitespace-separated words:

>>> FakeBackend([Completion("A tale of", "length")]).generate([ChatRequest.chat([])])[0].finish_reason
'length'

A fake that stands in for a step's model answers by the template that rendered the prompt, never by its
wording: :class:`TemplateReplies` watches the step's prompt library and routes each request by the template
name and the variables its last message was rendered from, so rewording a template breaks no test:

>>> from evolforge.core.prompts import PromptLibrary
>>> replies = TemplateReplies({"respond/response.j2": lambda v, request: f"An answer to {v['instruction']}"})
>>> prompts = replies.watch(PromptLibrary())
>>> content = prompts.render("respond/response.j2", instruction="Add 2 and 3.", input="")
>>> request = ChatRequest.chat([{"role": "user", "content": content}])
>>> FakeBackend(replies).generate([request])[0].text, replies.template_of(request)
('An answer to Add 2 and 3.', 'respond/response.j2')
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Iterable, Sequence, Union

from evolforge.core.prompts import PromptLibrary
from evolforge.llm.requests import ChatRequest
from evolforge.llm.types import Capabilities, Completion


Reply = Union[str, Completion]
Route = Callable[[dict[str, Any], ChatRequest], Reply]  # (the template's variables, the request) -> reply


class FakeBackend:
    name = "fake"
    capabilities = Capabilities()

    def __init__(self, replies: Iterable[Reply] | Callable[[ChatRequest], Reply] = (), model: str = "fake-model"):
        self.reply_fn = replies if callable(replies) else None
        self.queue = deque([] if callable(replies) else replies)
        self.model = model
        self.sent: list[ChatRequest] = []
        self.batches: list[int] = []

    def identity(self) -> dict:
        return {"name": self.model}

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        self.batches.append(len(requests))
        out = []
        for r in requests:
            self.sent.append(r)
            if self.reply_fn is not None:
                text = self.reply_fn(r)
            elif self.queue:
                text = self.queue.popleft()
            else:
                raise AssertionError(f"FakeBackend ran out of scripted replies at request {len(self.sent)}")
            if isinstance(text, Completion):
                out.append(text)
                continue
            prompt_words = sum(len(content.split()) for _, content in r.messages)
            out.append(Completion(text, "stop", prompt_tokens=prompt_words, completion_tokens=len(text.split())))
        return out


class TemplateReplies:
    """A :class:`FakeBackend` reply function that answers each request by the template its last message was
    rendered from: ``routes[template name](variables, request)``.

    The names come from the prompt libraries it watches (:meth:`watch`, or :meth:`note` from a wrapped
    ``render``): each records the texts it renders with their template and variables. A request whose last
    message no watched library rendered, or whose template has no route, is an error naming it."""

    def __init__(self, routes: dict[str, Route]):
        self.routes = dict(routes)
        self.rendered: dict[str, tuple[str, dict[str, Any]]] = {}

    def note(self, name: str, variables: dict[str, Any], text: str) -> str:
        """Record that template ``name`` rendered ``text`` from ``variables``; returns ``text``."""
        self.rendered[text] = (name, dict(variables))
        return text

    def watch(self, library: PromptLibrary) -> PromptLibrary:
        """``library``, recording from now on every text it renders."""
        render = library.render
        library.render = (  # type: ignore[method-assign]
            lambda name, /, **variables: self.note(name, variables, render(name, **variables)))
        return library

    def source(self, request: ChatRequest) -> tuple[str, dict[str, Any]]:
        """The template name and variables that rendered the request's last message."""
        text = request.messages[-1][1] if request.messages else ""
        if text not in self.rendered:
            raise AssertionError(f"TemplateReplies: no watched prompt library rendered this message: {text[:120]!r}")
        return self.rendered[text]

    def template_of(self, request: ChatRequest) -> str:
        return self.source(request)[0]

    def __call__(self, request: ChatRequest) -> Reply:
        name, variables = self.source(request)
        if name not in self.routes:
            raise AssertionError(f"TemplateReplies: no reply scripted for template {name} (routes: "
                                 f"{sorted(self.routes)})")
        return self.routes[name](variables, request)
