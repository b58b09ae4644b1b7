"""Benchmark a base and a fine-tuned model with lm-evaluation-harness; one flat metrics dict per model.

    >>> report = evaluate({"base": "Qwen/Qwen2.5-0.5B-Instruct", "finetuned": "models/finetuned"},
    ...                   "eval/samples", EvaluateSettings(suite="hub", limit=50))   # doctest: +SKIP
    >>> report["finetuned"]["gsm8k/exact_match_flexible"]                 # doctest: +SKIP
    0.42

Benchmarks (``tasks``) are named ``ifeval``, ``gsm8k``, ``math``, ``humaneval``, ``mbpp``; ``suite`` picks
which harness tasks they mean (:data:`evolforge.eval.tasks.SUITES`): ``offline`` (the project's own few
items in each benchmark's format, scored by the same code; runs with no network) or ``hub`` (the real
benchmarks). Any other name in ``tasks`` is passed to the harness as a task name as it is.

Metrics, as ``<benchmark>/<metric>``: ``ifeval/{prompt,inst}_level_{strict,loose}_acc``,
``gsm8k/exact_match_{strict,flexible}``, ``math/exact_match`` (math_verify) and
``math/exact_match_original`` (Minerva normaliser), ``humaneval/pass@1``, ``mbpp/pass@1``, and
``<benchmark>/n`` (problems scored). HumanEval and MBPP run model-written code only with
``allow_code_execution=True``, each program in :mod:`evolforge.eval.sandbox`; otherwise they are skipped and
listed under ``"skipped"`` (never scored 0).

Models: a hub id, a local model folder, or a LoRA adapter folder (``adapter_config.json``; evaluated as
``pretrained=<its base model>,peft=<folder>``, or ``lora_local_path`` with vLLM). Backends: ``hf``,
``vllm`` (GPU extra), ``local-chat-completions`` (an OpenAI-compatible server: each model value is the
served model name, ``backend_args={"base_url": "http://host:port/v1/chat/completions"}``), or any model
name registered with ``lm_eval.api.registry.register_model``.

Outputs under ``out_dir``: ``<label>/<benchmark>.jsonl`` (every scored sample: prompt, raw and filtered
responses, target, per-sample metrics) and ``<label>/results.json`` (the harness's results with task
configs, versions and shots; nothing in it changes between two runs of the same evaluation).

What downloads on first use (``suite: hub``; the offline suite downloads nothing):

- datasets: ``google/IFEval``, ``openai/gsm8k`` (main), ``HuggingFaceH4/MATH-500``,
  ``openai/openai_humaneval``, ``google-research-datasets/mbpp`` (full), into the Hugging Face cache;
- the base model (hub id) into the Hugging Face cache;
- NLTK ``punkt_tab`` (IFEval's sentence-count and capital-word checkers), into ``~/nltk_data``: the
  harness tries to download it when IFEval is imported; a hub run stops before generating if it is missing
  (an offline run does not need it, and switches that download off);
- nothing else: the code tasks do not use the ``code_eval`` metric script.

Pre-fetch on a connected machine, then copy ``~/.cache/huggingface`` and ``~/nltk_data`` (or point
``HF_HOME`` / ``NLTK_DATA`` at the copies) to the offline GPU box and run with ``HF_HUB_OFFLINE=1
HF_DATASETS_OFFLINE=1``::

    hf download --repo-type dataset google/IFEval
    hf download --repo-type dataset openai/gsm8k
    hf download --repo-type dataset HuggingFaceH4/MATH-500
    hf download --repo-type dataset openai/openai_humaneval
    hf download --repo-type dataset google-research-datasets/mbpp
    hf download Qwen/Qwen2.5-0.5B-Instruct            # the base model named in params.yaml
    python -m nltk.downloader punkt_tab
"""

from __future__ import annotations

import atexit
import functools
import gc
import importlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence



from evolforge.config.training import BENCHMARKS
from evolforge.eval.tasks import CODE_BENCHMARKS, SUITES, write_suite
from evolforge.eval.tasks.code_scoring import ALLOW_ENV, MEMORY_ENV, TIMEOUT_ENV
from evolforge.core.models import is_local_model, pick_device, pick_dtype
from evolforge.io.records import replace_dir
from evolforge.config.training import EvaluateSettings

log = logging.getLogger(__name__)

DEFAULT_TASKS = BENCHMARKS
# Shorter metric names for filters that split one metric in two; other filters are dropped from the name.
FILTER_SUFFIX = {"strict-match": "strict", "flexible-extract": "flexible"}
# Results fields that are bookkeeping, not metrics.
_NOT_METRICS = {"alias", "name", "sample_len", "samples"}


def resolve_tasks(tasks: Sequence[str], suite: str,
                  allow_code_execution: bool) -> tuple[dict[str, str], dict[str, str]]:
    """Benchmark names -> harness task names for ``suite``, and the benchmarks skipped (with the reason)."""
    if suite not in SUITES:
        raise ValueError(f"evaluate.suite must be one of {', '.join(SUITES)}, got {suite!r}")
    selected, skipped = {}, {}
    for name in tasks:
        if name in CODE_BENCHMARKS and not allow_code_execution:
            skipped[name] = "allow_code_execution is false: model-written code is not run"
            log.warning("skipping %s: it scores by running model-written code, and evaluate.allow_code_execution "
                        "is false (set it to true to run each program in the sandbox)", name)
            continue
        selected[name] = SUITES[suite].get(name, name)
    return selected, skipped


def adapter_base(path: str) -> str | None:
    """The base model of a LoRA adapter folder, or None when ``path`` is not one."""
    config = Path(path) / "adapter_config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text(encoding="utf-8"))["base_model_name_or_path"]


def model_args(model: str | Mapping[str, Any], backend: str, *, dtype: str = "auto", device: str = "auto",
               revision: str | None = None, backend_args: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The harness's ``model_args`` for one model. A mapping is taken as the full model_args as it is."""
    if isinstance(model, Mapping):
        return {**(backend_args or {}), **model}
    args: dict[str, Any] = {}
    base = adapter_base(model)
    if backend in ("hf", "vllm"):
        args["pretrained"] = base or model
        if revision and not is_local_model(base or model):
            args["revision"] = revision
        args["dtype"] = str(pick_dtype(dtype, pick_device(device))).removeprefix("torch.")
        if base and backend == "hf":
            args["peft"] = model
        elif base:
            args["lora_local_path"] = model
            rank = json.loads((Path(model) / "adapter_config.json").read_text(encoding="utf-8")).get("r", 16)
            args["max_lora_rank"] = max(16, int(rank))
    elif backend == "local-chat-completions":
        if base:
            raise ValueError(f"{model} is a LoRA adapter; serve it (e.g. vllm serve --lora-modules) and name the "
                             "served model instead")
        args = {"model": model, "tokenized_requests": False, "num_concurrent": 1, "max_retries": 3}
    else:  # any other registered harness model
        args["pretrained"] = model
    return {**args, **(backend_args or {})}


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


def _check_nltk(harness_tasks: Sequence[str]) -> None:
    """The hub IFEval checkers need NLTK's punkt_tab; fail before hours of generation, not after. The offline
    IFEval items use none of the checkers that need it: without it they run, and nothing is downloaded."""
    ifeval = [t for t in harness_tasks if "ifeval" in t]
    if not ifeval:
        return
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab")
        return
    except LookupError:
        pass
    if all(t.startswith("evolforge_offline") for t in ifeval):
        _import_ifeval_without_download()
    elif not nltk.download("punkt_tab", quiet=True):  # what the harness would try; offline it fails
        raise RuntimeError("IFEval needs the NLTK data package punkt_tab, which is not installed: run "
                           "`python -m nltk.downloader punkt_tab` on a connected machine (copy ~/nltk_data "
                           "to this one, or set NLTK_DATA)")


def _import_ifeval_without_download() -> None:
    """Import lm-eval's IFEval checkers with NLTK's download switched off. On its first import that module
    tries to download punkt_tab and then prints "Downloaded punkt_tab" whether or not it could: offline that
    is a misleading line, and where the network drops packets a long wait."""
    import nltk

    download = nltk.download
    nltk.download = lambda *args, **kwargs: False
    try:
        with redirect_stdout(io.StringIO()):
            importlib.import_module("lm_eval.tasks.ifeval.instructions_util")
    except ImportError:  # another harness layout: it does its own checks
        pass
    finally:
        nltk.download = download
    log.info("NLTK punkt_tab is not installed: not downloaded, the offline IFEval items need none of its checkers")


def _unsafe_tasks(task_manager, name: str) -> list[str]:
    """Leaf tasks under a task, group, tag or YAML path whose configs say they execute model code."""
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = task_manager.task_index.get(name)
    if entry is not None:
        kind, cfg = entry.kind, entry.cfg or {}
    elif Path(name).is_file():  # the harness also takes a YAML file's path as a task
        cfg = load_yaml(Path(name), resolve_func=False)
        kind = Kind.GROUP if "group" in cfg else Kind.TASK
    else:
        return []  # the harness reports unknown names itself
    if kind in (Kind.TASK, Kind.PY_TASK):
        return [cfg.get("task", name)] if cfg.get("unsafe_code") else []
    if kind == Kind.GROUP:
        children = [c if isinstance(c, str) else c.get("task", "") for c in cfg.get("task", [])]
    else:
        children = [n for n, e in task_manager.task_index.items() if name in e.tags]
    return [leaf for child in children for leaf in _unsafe_tasks(task_manager, child)]


def _check_sandboxed(task_manager, harness_tasks: Sequence[str]) -> None:
    """Tasks that execute code must be ours (sandboxed), never the harness's code_eval ones."""
    unsafe = [t for name in harness_tasks for t in _unsafe_tasks(task_manager, name) if not t.startswith("evolforge_")]
    if unsafe:
        raise ValueError(f"tasks {unsafe} would execute model code outside evolforge's sandbox (the harness's "
                         "code_eval); use the benchmarks humaneval / mbpp instead")


def _needs_harness_index(task: str) -> bool:
    return not (task.startswith("evolforge_") or task.endswith((".yaml", ".yml")))


@functools.lru_cache(maxsize=1)
def _suite_dir() -> Path:
    """The task configs and offline data, written once per process (they are constants of the package)."""
    path = Path(tempfile.mkdtemp(prefix="evolforge-tasks-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return write_suite(path)


@functools.lru_cache(maxsize=2)
def _task_manager(include_defaults: bool):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(_suite_dir()), include_defaults=include_defaults)


@contextmanager
def _code_execution_env(allow: bool, timeout_s: float, memory_mb: int) -> Iterator[None]:
    """The switches code_scoring reads, set for the duration of one evaluation and then restored."""
    values = {ALLOW_ENV: "1" if allow else "0", TIMEOUT_ENV: str(timeout_s), MEMORY_ENV: str(memory_mb)}
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _write_samples(results: dict, benchmarks: Mapping[str, str], label_dir: Path) -> dict[str, int]:
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


SUITE_PLACEHOLDER = "<evolforge-tasks>"  # results.json's name for the run's temporary task folder
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+>")  # a function's repr: "<function f at 0x7f...>"


def _results_record(results: dict) -> dict:
    """The harness's results without samples and without run-to-run noise: no dates, hosts or git, and
    in the task configs neither the temporary folder the tasks were written to nor functions' memory
    addresses, so the same evaluation writes the same bytes."""
    from lm_eval.utils import handle_non_serializable

    keep = ("results", "groups", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better", "n-samples",
            "config", "lm_eval_version", "transformers_version")
    text = json.dumps({k: results[k] for k in keep if k in results},
                      default=handle_non_serializable, ensure_ascii=False)
    text = text.replace(json.dumps(str(_suite_dir()), ensure_ascii=False)[1:-1], SUITE_PLACEHOLDER)
    return json.loads(_ADDRESS.sub(">", text))


def evaluate(
    models: Mapping[str, str | Mapping[str, Any]],
    out_dir: str | Path,
    settings: EvaluateSettings | None = None,
    *,
    revision: str | None = None,
) -> dict[str, dict]:
    """Evaluate each model (label -> hub id / folder / adapter) on ``settings.tasks``; return flat metrics per label.

    ``settings`` is the ``evaluate`` section of params.yaml, passed whole (default: its defaults).

    The result is ``{label: {"<benchmark>/<metric>": value, ...}, ..., "skipped": {benchmark: reason}}``.
    ``out_dir`` is rewritten in full (written beside it, then renamed into place).
    ``limit``: problems per task (an int) or a fraction; ``gen_kwargs`` override the tasks' generation
    settings (e.g. ``{"max_gen_toks": 1024}``); ``revision`` pins hub models; ``bootstrap_iters`` > 0 adds
    ``..._stderr`` entries.
    """
    s = settings if settings is not None else EvaluateSettings()
    _check_request(models, s)
    benchmarks, skipped = resolve_tasks(s.tasks, s.suite, s.allow_code_execution)
    if s.allow_code_execution and any(b in CODE_BENCHMARKS for b in benchmarks):
        from evolforge.eval.sandbox import isolation, require_sandbox

        require_sandbox("evaluate (" + ", ".join(b for b in benchmarks if b in CODE_BENCHMARKS) + ")")
        log.info("code benchmarks run in the sandbox, limits %ss / %s MiB, isolation %s",
                 s.sandbox_timeout_s, s.sandbox_memory_mb, isolation())
    _check_nltk(list(benchmarks.values()))
    with _code_execution_env(s.allow_code_execution, s.sandbox_timeout_s, s.sandbox_memory_mb):
        # indexing the harness's own few thousand task files takes ~20 s: only when a task needs them
        task_manager = _task_manager(include_defaults=any(_needs_harness_index(t) for t in benchmarks.values()))
        _check_sandboxed(task_manager, list(benchmarks.values()))
        report: dict[str, dict] = {}
        out_dir = Path(out_dir)
        staging = out_dir.with_name(out_dir.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for label, model in models.items():
            report[label] = _evaluate_one(label, model, benchmarks,
                                          task_manager, staging, s, revision) if benchmarks else {}
    report["skipped"] = skipped
    replace_dir(staging, out_dir)
    return report


def _check_request(models: Mapping[str, Any], s: EvaluateSettings) -> None:
    """Labels that can name a result entry and a folder; a chat backend with the chat template applied."""
    for label in models:
        if label == "skipped" or not re.fullmatch(r"[A-Za-z0-9_.-]+", label):
            raise ValueError(f"model label {label!r} must be a plain name (letters, digits, _ . -) other than "
                             "'skipped': it names the result entry and the samples folder")
    if s.backend == "local-chat-completions" and not s.apply_chat_template:
        raise ValueError("the local-chat-completions backend sends chat messages: apply_chat_template must be true")


def _evaluate_one(label: str, model: str | Mapping[str, Any], benchmarks: dict[str, str], task_manager, staging: Path,
                  s: EvaluateSettings, revision: str | None) -> dict[str, Any]:
    """One model through the harness: its samples and results.json under ``staging/label``, its flat metrics
    returned; the model's memory freed before the next one loads."""
    import lm_eval
    import lm_eval.models  # noqa: F401  (registers the built-in backends even when a test registered its own first)

    args = model_args(model, s.backend, dtype=s.dtype, device=s.device, revision=revision, backend_args=s.backend_args)
    log.info("evaluating %s (%s, %s) on %s", label, s.backend, args, ", ".join(benchmarks.values()))
    results = lm_eval.simple_evaluate(
        model=s.backend, model_args=args, tasks=list(benchmarks.values()), task_manager=task_manager,
        limit=s.limit, batch_size=s.batch_size, device=pick_device(s.device) if s.backend == "hf" else None,
        apply_chat_template=s.apply_chat_template, fewshot_as_multiturn=bool(s.apply_chat_template),
        system_instruction=s.system_instruction, num_fewshot=s.num_fewshot,
        gen_kwargs=dict(s.gen_kwargs) if s.gen_kwargs else None, log_samples=True,
        bootstrap_iters=s.bootstrap_iters, confirm_run_unsafe_code=s.allow_code_execution,
        random_seed=s.seed, numpy_random_seed=s.seed, torch_random_seed=s.seed, fewshot_random_seed=s.seed,
    )
    label_dir = staging / label
    label_dir.mkdir()
    counts = _write_samples(results, benchmarks, label_dir)
    with open(label_dir / "results.json", "w", encoding="utf-8") as f:
        json.dump(_results_record(results), f, indent=2, ensure_ascii=False)
    metrics: dict[str, Any] = {}
    for benchmark, harness_task in benchmarks.items():
        metrics.update(flatten_metrics(results, benchmark, harness_task))
        metrics[f"{benchmark}/n"] = counts[benchmark]
    del results
    gc.collect()
    _free_accelerator_memory()
    return metrics


def _free_accelerator_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
