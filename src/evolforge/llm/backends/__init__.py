"""The LLM backends, one module (or package) each; :mod:`evolforge.llm.registry` maps a role's ``backend`` to one
and imports it only when a role uses it.

:mod:`~evolforge.llm.backends.hf` (transformers in-process), :mod:`~evolforge.llm.backends.llamacpp` (llama.cpp on
a GGUF file), :mod:`~evolforge.llm.backends.vllm` (vLLM offline engine), :mod:`~evolforge.llm.backends.openai` (any
OpenAI-compatible server), :mod:`~evolforge.llm.backends.ray` (a Ray Data pipeline over several copies of the
model); :mod:`~evolforge.llm.backends.dryrun` answers the cache's misses during a dry run without any backend, and
:mod:`~evolforge.llm.backends.fake` is the scripted test double for tests and demos. The package's ``__init__`` is
documentation only: import each name from the module that defines it.
"""
