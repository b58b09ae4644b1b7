"""The ``hf`` backend (transformers in-process): :mod:`~evolforge.llm.backends.hf.backend`, over the rows in
flight of :mod:`~evolforge.llm.backends.hf.batch`. Documentation only: import each name from the module that
defines it.
"""
