"""The ``llamacpp`` backend (a GGUF file on the CPU or a GPU through llama-cpp-python):
:mod:`~evolforge.llm.backends.llamacpp.backend` (requests, sampling, controls),
:mod:`~evolforge.llm.backends.llamacpp.context` (the llama.cpp context and what each sequence holds),
:mod:`~evolforge.llm.backends.llamacpp.speculative` (prompt-lookup drafting) and
:mod:`~evolforge.llm.backends.llamacpp.probe` (whether llama.cpp's extra buffer types run a model on this CPU,
found once in a child process). Documentation only: import each
name from the module that defines it.
"""
