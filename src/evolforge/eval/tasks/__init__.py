"""lm-evaluation-harness task configs: the sandboxed code tasks and an offline suite of all five benchmarks.

``tasks/*.yaml`` are templates; :func:`write_suite` materialises them, with the offline data, into a folder
that ``lm_eval.tasks.TaskManager(include_path=...)`` (or ``lm_eval --include_path``) reads:

- ``evolforge_humaneval``, ``evolforge_mbpp``: the hub datasets with the prompts of the harness's
  ``humaneval_instruct`` / ``mbpp_instruct`` and pass@1 scored in :mod:`evolforge.eval.sandbox`
  (see :mod:`evolforge.eval.tasks.code_scoring`);
- ``evolforge_offline_{ifeval,gsm8k,math,humaneval,mbpp}`` (tag ``evolforge_offline``): the items of
  :mod:`evolforge.eval.tasks.offline_data`, written as JSONL and read through ``dataset_path: json``.
  The ifeval, gsm8k and math configs ``include:`` the installed harness's own ``ifeval.yaml``,
  ``gsm8k.yaml`` and ``minerva_math_algebra.yaml`` and override only the dataset and the number of shots,
  so the prompts, filters and scoring functions are the real benchmarks' own.

``SUITES`` maps the benchmark names used in ``params.yaml`` to harness task names per suite: ``offline``
runs anywhere; ``hub`` is the real benchmarks (datasets download on first use).
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

from evolforge.config.training import BENCHMARKS  # the names params may use
from evolforge.eval.tasks.offline_data import OFFLINE_ITEMS

CODE_BENCHMARKS = ("humaneval", "mbpp")  # scored by executing model-written code

SUITES: dict[str, dict[str, str]] = {
    "offline": {b: f"evolforge_offline_{b}" for b in BENCHMARKS},
    "hub": {"ifeval": "ifeval", "gsm8k": "gsm8k", "math": "evolforge_math", "humaneval": "evolforge_humaneval",
            "mbpp": "evolforge_mbpp"},
}


def lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def write_suite(dest: str | Path) -> Path:
    """Write every task config (``*.yaml``) and the offline data (``data/<benchmark>.jsonl``) into ``dest``."""
    dest = Path(dest).resolve()
    data_dir = dest / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    for benchmark, items in OFFLINE_ITEMS.items():
        with open(data_dir / f"{benchmark}.jsonl", "w", encoding="utf-8") as f:
            for item in items:
                f.write(json.dumps(item.row, ensure_ascii=False) + "\n")
    # substituted inside double-quoted YAML strings, so JSON string escaping is YAML-safe
    values = {"@DATA_DIR@": json.dumps(str(data_dir))[1:-1],
              "@LM_EVAL_TASKS@": json.dumps(str(lm_eval_tasks_dir()))[1:-1]}
    for template in files("evolforge.eval.tasks").joinpath("configs").iterdir():
        if not template.name.endswith(".yaml"):
            continue
        text = template.read_text(encoding="utf-8")
        for key, value in values.items():
            text = text.replace(key, value)
        (dest / template.name).write_text(text, encoding="utf-8")
    return dest
