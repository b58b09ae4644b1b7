"""The ``hf`` backend (transformers in-process): :mod:`~evolforge.llm.backends.hf.backend`. Documentation only:
import each name from the module that defines it.
"""
