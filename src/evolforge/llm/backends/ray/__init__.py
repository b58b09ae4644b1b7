"""The ``ray`` backend (a Ray Data pipeline over copies of the model, ray extra):
:mod:`~evolforge.llm.backends.ray.backend`. Documentation only: import each name from the module that defines it.
"""
