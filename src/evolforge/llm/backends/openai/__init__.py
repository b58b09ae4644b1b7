"""The ``openai`` backend: any OpenAI-compatible ``/v1/chat/completions`` server.

:mod:`~evolforge.llm.backends.openai.client` (the backend: what each request sends, pacing, the ranking paths),
with :mod:`~evolforge.llm.backends.openai.transport` (sessions, retries, what an HTTP answer means),
:mod:`~evolforge.llm.backends.openai.http` (statuses, bodies, the key, the event loop),
:mod:`~evolforge.llm.backends.openai.request` (request bodies), :mod:`~evolforge.llm.backends.openai.replicas`
(several servers of one model), :mod:`~evolforge.llm.backends.openai.batch` (a provider's batch API),
:mod:`~evolforge.llm.backends.openai.ranking` and :mod:`~evolforge.llm.backends.openai.walk` (scores from
probabilities) and :mod:`~evolforge.llm.backends.openai.served` (the model a server serves, for its identity).
Documentation only: import each name from the module that defines it.
"""
