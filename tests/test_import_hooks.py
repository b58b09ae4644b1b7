"""evolforge's import hook (:mod:`evolforge.import_hooks`): once evolforge is imported, transformers reports
scikit-learn missing, so loading a model class imports no ``sklearn``; scikit-learn itself still imports for
whoever asks (lm-eval), and ``EVOLFORGE_TRANSFORMERS_SKLEARN=1`` leaves transformers as it is. Each case runs in
a fresh interpreter: the hook acts on the first import of transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROBE = """
import json, sys
import evolforge
import transformers.utils
from transformers import AutoModelForCausalLM
AutoModelForCausalLM.from_pretrained  # what a model load imports: transformers' generation module among it
found = {"available": transformers.utils.is_sklearn_available(), "imported": "sklearn" in sys.modules,
         "generation": "transformers.generation.utils" in sys.modules}
import sklearn.metrics
found["roc_curve"] = callable(sklearn.metrics.roc_curve)
print(json.dumps(found))
"""


def probe(**env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != "EVOLFORGE_TRANSFORMERS_SKLEARN"}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), environ.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", PROBE], env={**environ, **env}, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_model_load_imports_no_sklearn_and_sklearn_still_imports():
    assert probe() == {"available": False, "imported": False, "generation": True, "roc_curve": True}


def test_the_variable_leaves_transformers_as_it_is():
    assert probe(EVOLFORGE_TRANSFORMERS_SKLEARN="1") == {"available": True, "imported": True, "generation": True,
                                                         "roc_curve": True}


def test_install_is_idempotent_and_finds_only_its_module():
    from evolforge import import_hooks

    def hooks() -> int:
        return sum(isinstance(f, import_hooks._SklearnProbeOff) for f in sys.meta_path)

    import_hooks.install()
    installed = hooks()  # 1; 0 where this process imported transformers before evolforge
    import_hooks.install()
    assert hooks() == installed <= 1
    assert import_hooks._SklearnProbeOff().find_spec("json", None) is None
