"""The LLM backends, one package each, named as a role's ``backend`` names them: :mod:`~evolforge.llm.backends.hf`
(transformers in-process), :mod:`~evolforge.llm.backends.llamacpp` (llama.cpp on a GGUF file),
:mod:`~evolforge.llm.backends.vllm` (vLLM offline engine), :mod:`~evolforge.llm.backends.openai` (any
OpenAI-compatible server), :mod:`~evolforge.llm.backends.ray` (a Ray Data pipeline over several copies of the
model). :mod:`evolforge.llm.registry` imports a role's package only when a role uses it, and a stage's
``dvc.yaml`` deps name each of its roles' packages through params
(``src/evolforge/llm/backends/${roles.<name>.backend}``, tools/stage_deps.py), so editing one backend reruns
only the stages whose roles use it.

:mod:`~evolforge.llm.backends.dryrun` answers the cache's misses during a dry run without any backend, and
:mod:`~evolforge.llm.backends.fake` is the scripted test double for tests and demos. The package's ``__init__`` is
documentation only: import each name from the module that defines it.
"""
