"""The ``vllm`` backend (vLLM's offline engine, GPU extra): :mod:`~evolforge.llm.backends.vllm.backend`.
Documentation only: import each name from the module that defines it.
"""
