"""What evolforge changes in how other packages import, installed by importing the package (before any of them).

One hook: transformers' generation module imports ``sklearn.metrics`` whenever scikit-learn is installed, for one
feature (assisted generation's adaptive confidence threshold, which needs ``roc_curve``); lm-eval requires
scikit-learn, so every process that loads a transformers model paid the import: about 2.5 s on two AVX2 cores,
about a dozen times in ``make run`` (``bench/import_cost.py``). evolforge never runs assisted generation, so once
transformers' import utilities are loaded, its answer to "is scikit-learn available" is no. Nothing else in
transformers asks; lm-eval and every other package import scikit-learn themselves as before. The hook costs nothing
in a process that never imports transformers. ``EVOLFORGE_TRANSFORMERS_SKLEARN=1`` leaves transformers as it is.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys

TARGET = "transformers.utils.import_utils"
KEEP_VAR = "EVOLFORGE_TRANSFORMERS_SKLEARN"


def _no_sklearn() -> bool:
    """transformers' ``is_sklearn_available`` under the hook."""
    return False


class _SklearnProbeOff(importlib.abc.MetaPathFinder):
    """Finds transformers' import utilities as the path finder does, and after they run sets their
    ``is_sklearn_available`` to :func:`_no_sklearn` (``transformers.utils`` re-exports that name from them)."""

    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            module.is_sklearn_available = _no_sklearn

        spec.loader.exec_module = exec_module  # this spec's loader object only
        return spec


def install() -> None:
    """Put the hook first on ``sys.meta_path`` (once), unless ``EVOLFORGE_TRANSFORMERS_SKLEARN=1`` or
    transformers' import utilities are loaded already (then they answer as they do)."""
    if os.environ.get(KEEP_VAR) == "1" or TARGET in sys.modules:
        return
    if not any(isinstance(finder, _SklearnProbeOff) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SklearnProbeOff())
