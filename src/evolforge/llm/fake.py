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
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Iterable, Sequence, Union

from evolforge.core.roles import ChatRequest
from evolforge.llm.types import Completion


Reply = Union[str, Completion]


class FakeBackend:
    name = "fake"

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
