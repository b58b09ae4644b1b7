"""The harness's results as an evaluation writes them: flat metrics, every scored sample, a stable record.

:func:`flatten_metrics` names each metric ``<benchmark>/<metric>`` (a filter that splits one metric in two
adds a suffix: ``gsm8k/exact_match_strict``); :func:`write_samples` writes one JSONL per benchmark; and
:func:`results_record` keeps the harness's results without samples and without what changes between two runs
of the same evaluation.

    >>> flatten_metrics({"results": {"gsm8k": {"exact_match,strict-match": 0.5, "exact_match,flexible-extract": 0.75,
    ...                                        "alias": "gsm8k"}}}, "gsm8k", "gsm8k")
    {'gsm8k/exact_match_strict': 0.5, 'gsm8k/exact_match_flexible': 0.75}
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Mapping

from evolforge.eval.harness_tasks import suite_dir

# Shorter metric names for filters that split one metric in two; other filters are dropped from the name.
FILTER_SUFFIX = {"strict-match": "strict", "flexible-extract": "flexible"}
# Results fields that are bookkeeping, not metrics.
_NOT_METRICS = {"alias", "name", "sample_len", "samples"}
SUITE_PLACEHOLDER = "<evolforge-tasks>"  # results.json's name for the run's temporary task folder
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+>")  # a function's repr: "<function f at 0x7f...>"


def flatten_metrics(results: dict, benchmark: str, harness_task: str) -> dict[str, float]:
    """``{"exact_match,strict-match": 0.5, ...}`` of one task (or group) -> ``{"gsm8k/exact_match_strict": 0.5}``."""
    entry = results["results"][harness_task]
    keys = [k for k in entry if "," in k and k.split(",")[0] not in _NOT_METRICS]
    filters = {k.split(",", 1)[1] for k in keys if not k.split(",")[0].endswith("_stderr")}
    flat = {}
    for key in keys:
        metric, filt = key.split(",", 1)
        value = entry[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue  # "N/A" stderr when no bootstrap was run
        suffix = ""
        if filt != "none" and len(filters) > 1:
            suffix = "_" + FILTER_SUFFIX.get(filt, filt)
        if metric.endswith("_stderr"):
            name = f"{benchmark}/{metric.removesuffix('_stderr')}{suffix}_stderr"
        else:
            name = f"{benchmark}/{metric}{suffix}"
        flat[name] = float(value)
    return flat


def _leaf_tasks(results: dict, name: str) -> list[str]:
    children = results.get("group_subtasks", {}).get(name)
    if not children:
        return [name]
    return [leaf for child in children for leaf in _leaf_tasks(results, child)]


def write_samples(results: dict, benchmarks: Mapping[str, str], label_dir: Path) -> dict[str, int]:
    """One JSONL per benchmark (all its subtasks); returns the number of problems scored per benchmark."""
    from lm_eval.utils import handle_non_serializable

    counts = {}
    for benchmark, harness_task in benchmarks.items():
        problems = set()
        with open(label_dir / f"{benchmark}.jsonl", "w", encoding="utf-8") as f:
            for leaf in _leaf_tasks(results, harness_task):
                for sample in results.get("samples", {}).get(leaf, []):
                    problems.add((leaf, sample["doc_id"]))
                    line = {"task": leaf, **sample}
                    f.write(json.dumps(line, default=handle_non_serializable, ensure_ascii=False) + "\n")
        counts[benchmark] = len(problems)
    return counts


def results_record(results: dict) -> dict:
    """The harness's results without samples and without run-to-run noise: no dates, hosts or git, and
    in the task configs neither the temporary folder the tasks were written to nor functions' memory
    addresses, so the same evaluation writes the same bytes."""
    from lm_eval.utils import handle_non_serializable

    keep = ("results", "groups", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better", "n-samples",
            "config", "lm_eval_version", "transformers_version")
    text = json.dumps({k: results[k] for k in keep if k in results},
                      default=handle_non_serializable, ensure_ascii=False)
    text = text.replace(json.dumps(str(suite_dir()), ensure_ascii=False)[1:-1], SUITE_PLACEHOLDER)
    return json.loads(_ADDRESS.sub(">", text))
