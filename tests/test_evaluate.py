"""Evaluation through lm-evaluation-harness on the offline suite.

A scripted model that answers every item correctly must score 1.0 on every metric, and one that answers
wrongly 0.0, through the same scoring code the real benchmarks use (the harness's IFEval checkers, GSM8K
filters, MATH scorer; our sandboxed pass@1). A tiny random Llama runs end to end (plain and as a LoRA
adapter) to exercise the hf backend, the metrics and the per-sample logs.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from lm_eval.api.model import LM  # noqa: E402
from lm_eval.api.registry import register_model  # noqa: E402

from evolforge.eval.tasks import SUITES, lm_eval_tasks_dir, write_suite  # noqa: E402
from evolforge.eval.tasks.code_scoring import _code_in_open_fence, mbpp_fewshot_samples, score_program  # noqa: E402
from evolforge.eval.tasks.offline_data import OFFLINE_ITEMS, reference_response  # noqa: E402
from evolforge.eval.harness import DEFAULT_TASKS, EvaluateSettings, evaluate, model_args  # noqa: E402
from evolforge.eval.harness_results import flatten_metrics  # noqa: E402

BENCHMARK_OF = {task: bench for bench, task in SUITES["offline"].items()}
WRONG = {  # a wrong answer in each benchmark's format
    "ifeval": "",  # an empty response follows no instruction, strict or loose
    "gsm8k": "The numbers add up.\n#### 99999",
    "math": "Final Answer: The final answer is $99999$. I hope it is correct.",
    "humaneval": "    return None\n```\n",
    "mbpp": "def nothing():\n    return None\n```\n",
}
EXPECTED_METRICS = {
    "ifeval/prompt_level_strict_acc", "ifeval/inst_level_strict_acc", "ifeval/prompt_level_loose_acc",
    "ifeval/inst_level_loose_acc", "gsm8k/exact_match_strict", "gsm8k/exact_match_flexible", "math/exact_match",
    "math/exact_match_original", "humaneval/pass@1", "mbpp/pass@1",
}


@register_model("evolforge-scripted")
class ScriptedLM(LM):
    """Answers each request from the offline items: ``pretrained=correct`` or ``pretrained=wrong``."""

    prompts: list[str] = []

    def __init__(self, pretrained: str = "correct", **kwargs):
        super().__init__()
        self.mode = pretrained

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for request in requests:
            ScriptedLM.prompts.append(request.args[0])
            benchmark = BENCHMARK_OF[request.task_name]
            out.append(reference_response(benchmark, request.doc) if self.mode == "correct" else WRONG[benchmark])
        return out

    def loglikelihood(self, requests):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError

    def apply_chat_template(self, chat_history, add_generation_prompt=True) -> str:
        text = "".join(f"<|{m['role']}|>{m['content']}" for m in chat_history)
        return text + ("<|assistant|>" if add_generation_prompt else "")

    @property
    def tokenizer_name(self) -> str:
        return "scripted"


@pytest.fixture(scope="module")
def scripted_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("scripted") / "samples"
    ScriptedLM.prompts.clear()
    report = evaluate({"right": "correct", "wrong": "wrong"}, out, EvaluateSettings(
        suite="offline", backend="evolforge-scripted", allow_code_execution=True, sandbox_timeout_s=10))
    return report, out, list(ScriptedLM.prompts)


def test_correct_answers_score_one_and_wrong_answers_zero_on_every_metric(scripted_report):
    report, _, _ = scripted_report
    assert report["skipped"] == {}
    for label, expected in (("right", 1.0), ("wrong", 0.0)):
        scores = {k: v for k, v in report[label].items() if not k.endswith("/n")}
        assert set(scores) == EXPECTED_METRICS
        assert scores == {k: expected for k in EXPECTED_METRICS}, label
        assert {b: report[label][f"{b}/n"] for b in DEFAULT_TASKS} == {b: len(OFFLINE_ITEMS[b]) for b in DEFAULT_TASKS}


def test_prompts_go_through_the_chat_template_and_the_code_prefix(scripted_report):
    _, _, prompts = scripted_report
    assert len(prompts) == 2 * sum(len(items) for items in OFFLINE_ITEMS.values())
    assert all(p.startswith("<|user|>") for p in prompts)
    # code tasks prefill the assistant turn with an open python fence (the *_instruct prompts)
    assert any(p.endswith("<|assistant|>\n```python\n") for p in prompts)


def test_per_sample_logs(scripted_report):
    _, out, _ = scripted_report
    for label in ("right", "wrong"):
        for benchmark in DEFAULT_TASKS:
            lines = [json.loads(x) for x in (out / label / f"{benchmark}.jsonl").read_text().splitlines()]
            docs = {x["doc_id"] for x in lines}
            assert len(docs) == len(OFFLINE_ITEMS[benchmark])
            assert all({"task", "doc", "resps", "filtered_resps", "target"} <= set(x) for x in lines)
        text = (out / label / "results.json").read_text()
        assert "evolforge_offline_gsm8k" in json.loads(text)["configs"]
        # nothing that changes from run to run: the temporary task folder, a function's address
        assert "evolforge-tasks-" not in text and " at 0x" not in text and '"<evolforge-tasks>/' in text


def test_code_tasks_are_skipped_not_scored_when_execution_is_off(tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise AssertionError("model code ran although allow_code_execution is false")

    monkeypatch.setattr("evolforge.eval.tasks.code_scoring.run_untrusted", explode)
    report = evaluate({"m": "correct"}, tmp_path / "out", EvaluateSettings(
        tasks=["gsm8k", "humaneval", "mbpp"], backend="evolforge-scripted", allow_code_execution=False))
    assert set(report["skipped"]) == {"humaneval", "mbpp"}
    assert not any(k.startswith(("humaneval/", "mbpp/")) for k in report["m"])
    assert report["m"]["gsm8k/exact_match_strict"] == 1.0
    assert sorted(p.name for p in (tmp_path / "out" / "m").iterdir()) == ["gsm8k.jsonl", "results.json"]


def test_scoring_refuses_to_run_code_without_the_switch(monkeypatch):
    monkeypatch.delenv("EVOLFORGE_ALLOW_CODE_EXECUTION", raising=False)
    with pytest.raises(RuntimeError, match="refusing"):
        score_program("assert True")


def test_sandbox_setup_failure_is_retried_and_shown(monkeypatch, caplog):
    from evolforge.eval.sandbox import SandboxResult
    from evolforge.eval.tasks import code_scoring

    def scripted(*statuses):
        runs = iter(statuses)

        def run(program, tests=None, timeout_s=10.0, memory_mb=512, **checks):
            status = next(runs)
            return SandboxResult(status == "passed", status, "unshare: Operation not permitted" if status == "error" else "",
                                 None if status == "timeout" else 0, 10.0 if status == "timeout" else 0.1)
        return run

    monkeypatch.setenv("EVOLFORGE_ALLOW_CODE_EXECUTION", "1")
    with caplog.at_level("WARNING", logger=code_scoring.__name__):
        monkeypatch.setattr(code_scoring, "run_untrusted", scripted("error", "passed"))
        assert score_program("x = 1") == 1.0  # the set-up failed once: tried again, and it passed
        assert "sandbox could not run a program (unshare: Operation not permitted); trying once more" in caplog.text
        caplog.clear()
        monkeypatch.setattr(code_scoring, "run_untrusted", scripted("error", "error"))
        assert score_program("x = 1") == 0.0
        assert "sandbox error after 0.1 s: the program scores 0 (unshare: Operation not permitted)" in caplog.text
        caplog.clear()
        monkeypatch.setattr(code_scoring, "run_untrusted", scripted("timeout"))  # never retried: it may loop forever
        assert score_program("while True: pass") == 0.0
        assert "sandbox timeout after 10.0 s: the program scores 0 (no output)" in caplog.text
        caplog.clear()
        monkeypatch.setattr(code_scoring, "run_untrusted", scripted("failed"))
        assert score_program("assert False") == 0.0 and not caplog.text  # the program's own verdict: no warning


def test_harness_code_tasks_outside_the_sandbox_are_refused(tmp_path):
    # a task that would run model code through the harness's own code_eval, given as a YAML path
    task = tmp_path / "my_code_task.yaml"
    task.write_text("task: my_code_task\ndataset_path: json\nunsafe_code: true\noutput_type: generate_until\n"
                    "doc_to_text: x\ndoc_to_target: y\n")
    with pytest.raises(ValueError, match="outside evolforge's sandbox"):
        evaluate({"m": "correct"}, tmp_path / "out", EvaluateSettings(
            tasks=["gsm8k", str(task)], backend="evolforge-scripted", allow_code_execution=True))


def test_hub_ifeval_without_nltk_data_stops_before_generating(tmp_path, monkeypatch):
    import nltk

    def missing(resource, *args, **kwargs):
        raise LookupError(resource)

    monkeypatch.setattr(nltk.data, "find", missing)
    monkeypatch.setattr(nltk, "download", lambda *args, **kwargs: False)
    ScriptedLM.prompts.clear()
    with pytest.raises(RuntimeError, match="punkt_tab"):
        evaluate({"m": "correct"}, tmp_path / "out", EvaluateSettings(suite="hub", tasks=["ifeval"], backend="evolforge-scripted"))
    assert ScriptedLM.prompts == []


def test_offline_ifeval_without_nltk_data_tries_no_download():
    # a fresh process: the harness's IFEval module tries its download (and prints) when first imported
    code = textwrap.dedent("""
        import importlib, nltk
        tried = []
        def missing(resource, *args, **kwargs):
            raise LookupError(resource)
        nltk.data.find = missing
        nltk.download = lambda *args, **kwargs: tried.append(args) or False
        from evolforge.eval.harness_tasks import check_nltk
        check_nltk(["evolforge_offline_ifeval", "evolforge_offline_gsm8k"])
        importlib.import_module("lm_eval.tasks.ifeval.instructions_util")  # as the harness's task loading does
        assert tried == [], tried
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "punkt_tab" not in run.stdout


def test_unknown_suite_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="suite"):
        evaluate({"m": "correct"}, tmp_path / "out", EvaluateSettings(suite="online", backend="evolforge-scripted"))


# --- the task configs reuse the real benchmarks' scoring ------------------------------------------------


def test_offline_configs_keep_the_real_scoring(tmp_path):
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    names = ["evolforge_offline_gsm8k", "evolforge_offline_ifeval", "evolforge_offline_math"]
    manager = TaskManager(include_path=str(write_suite(tmp_path)), include_defaults=False)
    gsm8k, ifeval, math = (manager.load(names)["tasks"][n] for n in names)
    real_gsm8k = load_yaml(lm_eval_tasks_dir() / "gsm8k" / "gsm8k.yaml", resolve_func=False)
    assert gsm8k.config.filter_list == real_gsm8k["filter_list"]
    assert gsm8k.config.metric_list == real_gsm8k["metric_list"]
    assert gsm8k.config.doc_to_text == real_gsm8k["doc_to_text"]
    assert ifeval.config.process_results.__module__ == "lm_eval.tasks.ifeval.utils"
    assert math.config.process_results.__module__ == "lm_eval.tasks.leaderboard.math.utils"
    first = json.loads((tmp_path / "data" / "gsm8k.jsonl").read_text().splitlines()[0])
    assert first["answer"].endswith("#### 26")


def test_mbpp_shots_match_the_harness():
    # read the harness's list without importing its module (that import downloads the code_eval metric)
    tree = ast.parse((lm_eval_tasks_dir() / "mbpp" / "utils.py").read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "list_fewshot_samples")
    ret = next(n for n in ast.walk(fn) if isinstance(n, ast.Return))
    assert mbpp_fewshot_samples() == ast.literal_eval(ret.value)


@pytest.mark.parametrize(
    "response, code",
    [
        ("def f():\n    return 1\n```\nThis works.", "def f():\n    return 1\n"),  # keeps the leading "def"
        ("import re\ndef f():\n    pass\n```", "import re\ndef f():\n    pass\n"),
        ("```python\ndef f():\n    pass\n```", "def f():\n    pass\n"),  # the model opened a fence of its own
        ("    return a + b\n", "    return a + b\n"),  # no closing fence: everything
    ],
)
def test_code_after_the_prefilled_fence(response, code):
    assert _code_in_open_fence(response) == code


def test_flatten_metrics_names():
    results = {"results": {
        "gsm8k": {"alias": "gsm8k", "exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": 0.1,
                  "exact_match,flexible-extract": 0.5, "exact_match_stderr,flexible-extract": "N/A"},
        "humaneval": {"pass@1,create_test": 0.75, "pass@1_stderr,create_test": "N/A", "sample_len": 4},
    }}
    assert flatten_metrics(results, "gsm8k", "gsm8k") == {
        "gsm8k/exact_match_strict": 0.25, "gsm8k/exact_match_strict_stderr": 0.1, "gsm8k/exact_match_flexible": 0.5}
    assert flatten_metrics(results, "humaneval", "humaneval") == {"humaneval/pass@1": 0.75}


def test_model_args_for_each_backend(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/base", "r": 32}))
    assert model_args(str(adapter), "hf", device="cpu") == {
        "pretrained": "org/base", "dtype": "float32", "peft": str(adapter)}
    assert model_args("org/m", "hf", device="cpu", revision="abc") == {
        "pretrained": "org/m", "revision": "abc", "dtype": "float32"}
    vllm = model_args(str(adapter), "vllm", device="cpu", backend_args={"gpu_memory_utilization": 0.8})
    assert (vllm["lora_local_path"], vllm["max_lora_rank"], vllm["gpu_memory_utilization"]) == (str(adapter), 32, 0.8)
    served = model_args("finetuned", "local-chat-completions",
                        backend_args={"base_url": "http://127.0.0.1:8000/v1/chat/completions"})
    assert served["model"] == "finetuned" and served["base_url"].endswith("/chat/completions")
    with pytest.raises(ValueError, match="adapter"):
        model_args(str(adapter), "local-chat-completions")


# --- a tiny real model, end to end ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random-weight Llama (hidden 64, 2 layers) with a BPE tokenizer and a chat template."""
    from tiny import build_random_llama

    texts = [item.row.get("prompt") or item.row.get("question") or item.row.get("problem") or item.row.get("text")
             for items in OFFLINE_ITEMS.values() for item in items] + [
             item.reference_response for items in OFFLINE_ITEMS.values() for item in items]
    return build_random_llama(tmp_path_factory.mktemp("tiny"), texts=texts * 4, vocab_size=400, hidden_size=64,
                              num_layers=2, intermediate_size=128, max_position_embeddings=1024)


def test_tiny_hf_model_and_lora_adapter_end_to_end(tiny_model, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapter = tmp_path / "adapter"
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")).save_pretrained(adapter)

    out = tmp_path / "eval"
    report = evaluate({"base": str(tiny_model), "finetuned": str(adapter)}, out, EvaluateSettings(
        suite="offline", backend="hf", device="cpu", limit=2, gen_kwargs={"max_gen_toks": 8}, allow_code_execution=True,
        sandbox_timeout_s=5))
    for label in ("base", "finetuned"):
        assert set(report[label]) == EXPECTED_METRICS | {f"{b}/n" for b in DEFAULT_TASKS}
        assert all(0.0 <= v <= 1.0 for k, v in report[label].items() if not k.endswith("/n"))
        assert all(report[label][f"{b}/n"] == 2 for b in DEFAULT_TASKS)
        for benchmark in DEFAULT_TASKS:
            lines = (out / label / f"{benchmark}.jsonl").read_text().splitlines()
            assert lines and all(json.loads(x)["resps"] for x in lines)
    config = json.loads((out / "finetuned" / "results.json").read_text())["config"]
    assert config["model_args"]["peft"] == str(adapter)
    assert not (tmp_path / "eval.tmp").exists()
