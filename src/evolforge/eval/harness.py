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
configs, versions and shots; nothing in it changes between two runs of the same evaluation), written by
:mod:`evolforge.eval.harness_results`. Which harness tasks run, and the checks before any model loads:
:mod:`evolforge.eval.harness_tasks`.

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

import gc
import json
import logging
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from evolforge.config.training import BENCHMARKS, EvaluateSettings
from evolforge.core.heap import keep_model_memory
from evolforge.core.models import is_local_model, pick_device, pick_dtype
from evolforge.eval.harness_results import flatten_metrics, results_record, write_samples
from evolforge.eval.harness_tasks import check_nltk, check_sandboxed, needs_harness_index, resolve_tasks, task_manager
from evolforge.eval.tasks import CODE_BENCHMARKS
from evolforge.eval.tasks.code_scoring import ALLOW_ENV, MEMORY_ENV, TIMEOUT_ENV
from evolforge.io.records import replace_dir

log = logging.getLogger(__name__)

DEFAULT_TASKS = BENCHMARKS


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
    check_nltk(list(benchmarks.values()))
    keep_model_memory()
    with _code_execution_env(s.allow_code_execution, s.sandbox_timeout_s, s.sandbox_memory_mb):
        # indexing the harness's own few thousand task files takes ~20 s: only when a task needs them
        manager = task_manager(include_defaults=any(needs_harness_index(t) for t in benchmarks.values()))
        check_sandboxed(manager, list(benchmarks.values()))
        report: dict[str, dict] = {}
        out_dir = Path(out_dir)
        staging = out_dir.with_name(out_dir.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for label, model in models.items():
            report[label] = _evaluate_one(label, model, benchmarks,
                                          manager, staging, s, revision) if benchmarks else {}
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


def _evaluate_one(label: str, model: str | Mapping[str, Any], benchmarks: dict[str, str], manager, staging: Path,
                  s: EvaluateSettings, revision: str | None) -> dict[str, Any]:
    """One model through the harness: its samples and results.json under ``staging/label``, its flat metrics
    returned; the model's memory freed before the next one loads."""
    import lm_eval
    import lm_eval.models  # noqa: F401  (registers the built-in backends even when a test registered its own first)

    args = model_args(model, s.backend, dtype=s.dtype, device=s.device, revision=revision, backend_args=s.backend_args)
    log.info("evaluating %s (%s, %s) on %s", label, s.backend, args, ", ".join(benchmarks.values()))
    device = pick_device(s.device) if s.backend == "hf" else None
    results = lm_eval.simple_evaluate(
        model=_harness_model(s, args, device), model_args=args, tasks=list(benchmarks.values()), task_manager=manager,
        limit=s.limit, batch_size=s.batch_size, device=device,
        apply_chat_template=s.apply_chat_template, fewshot_as_multiturn=bool(s.apply_chat_template),
        system_instruction=s.system_instruction, num_fewshot=s.num_fewshot,
        gen_kwargs=dict(s.gen_kwargs) if s.gen_kwargs else None, log_samples=True,
        bootstrap_iters=s.bootstrap_iters, confirm_run_unsafe_code=s.allow_code_execution,
        random_seed=s.seed, numpy_random_seed=s.seed, torch_random_seed=s.seed, fewshot_random_seed=s.seed,
    )
    if "config" in results:  # the harness names a model it was handed by its path: the backend, as before
        results["config"]["model"] = s.backend
    label_dir = staging / label
    label_dir.mkdir()
    counts = write_samples(results, benchmarks, label_dir)
    with open(label_dir / "results.json", "w", encoding="utf-8") as f:
        json.dump(results_record(results), f, indent=2, ensure_ascii=False)
    metrics: dict[str, Any] = {}
    for benchmark, harness_task in benchmarks.items():
        metrics.update(flatten_metrics(results, benchmark, harness_task))
        metrics[f"{benchmark}/n"] = counts[benchmark]
    del results
    gc.collect()
    _free_accelerator_memory()
    return metrics


def _harness_model(s: EvaluateSettings, args: dict[str, Any], device: str | None):
    """The harness's model for ``s.backend``, made as ``simple_evaluate`` makes it from a name, so that an hf
    model's linear layers decode on the CPU in the form it multiplies fastest (core/cpu_linear.py)."""
    from lm_eval.api.registry import get_model

    from evolforge.core.cpu_linear import fit_small_batch_linears

    lm = get_model(s.backend).create_from_arg_obj(args, {"batch_size": s.batch_size, "max_batch_size": None,
                                                         "device": device})
    if s.backend == "hf":
        fit_small_batch_linears(lm.model)
    return lm


def _free_accelerator_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
