"""The shipped params with every chat role on a REAL llama.cpp server: ``python -m llama_cpp.server`` (the
``server`` extra of llama-cpp-python) on 127.0.0.1, serving the tests' tiny GGUF model (tests/tiny_gguf.py).

- the server's kind is found from ``GET /models`` and recorded in the identity;
- the one shipped setting no server can honour (``evolve.controls.no_repeat_ngram_size``: no server offers an
  n-gram ban) is named where it is written, before any request; without it, the shipped evolve controls
  (banned strings and the assistant prefix as a grammar, stop, repetition_penalty as repeat_penalty) hold,
  the judge's labels are held to the five levels (a grammar) and judge.probabilities scores every allowed
  answer from a walk of the chat API's top_logprobs (evolforge.llm.backends.openai.walk), whose expected values
  are the in-process ranking's within the tolerance stated below;
- greedy answers, one sequence at a time, are the llamacpp backend's on the same file wherever the server's
  tokenizer (llama.cpp's own) splits the prompt as the model's tokenizer.json does (the backend's);
- the shipped optimize controls write candidates that parse.

Every wait is bounded; only 127.0.0.1 is used."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import socket
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from evolforge.config.loader import load_section
from evolforge.config.roles import Role
from evolforge.config.runtime import LLMSettings
from evolforge.llm.backends.openai.client import OpenAIBackend
from evolforge.llm.backends.openai.served import wait_until_serving
from evolforge.llm.requests import ChatRequest
from evolforge.schema import load_params
from evolforge.steps.evolve.settings import EvolveSection, EvolveSettings
from evolforge.config.servers import server_problems
from evolforge.schema import asked_of_roles
from evolforge.llm.cache import CallCache
from evolforge.core.prompts import PromptLibrary
from evolforge.io.records import LINEAGE
from evolforge.llm.backends.openai.served import served_model_identity
from evolforge.llm.cached import open_llm
from evolforge.steps.evolve.step import evolve_round
from evolforge.steps.common.responses import response_sampling
from evolforge.steps.respond.settings import RespondSettings
from evolforge.steps.common.difficulty import LEVELS, judge

pytestmark = [pytest.mark.server, pytest.mark.usefixtures("no_proxy")]

REPO = Path(__file__).resolve().parents[1]
CHAT_ROLES = ("evolver", "optimizer", "responder", "judge")
START_S = 180  # the server's start, at most


@pytest.fixture(scope="module")
def gguf_folder(tiny_model, tmp_path_factory):
    from tiny_gguf import write_tiny_gguf

    return write_tiny_gguf(tiny_model, tmp_path_factory.mktemp("tiny-gguf-server"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(command: list[str], log_path: Path, port: int, start_s: float, stop_s: float,
            env: dict[str, str] | None = None):
    """A server started by ``command`` (its output in ``log_path``), its base URL while it answers; terminated
    (killed after ``stop_s``) on exit. Shared with tests/test_vllm_server.py."""
    log = open(log_path, "w")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until_serving(base_url, proc, log_path, start_s)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(stop_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(stop_s)
        log.close()


@pytest.fixture(scope="module")
def server(gguf_folder, tmp_path_factory):
    """``llama_cpp.server`` on 127.0.0.1 with the tiny model (``--logits_all``: prompt log-probabilities)."""
    port = _free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_folder / "model.gguf"),
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--model_alias", "tiny",
               "--logits_all", "true", "--n_threads", "1", "--verbose", "false"]
    with serving(command, tmp_path_factory.mktemp("server") / "server.log", port, START_S, 10) as base_url:
        yield base_url


def served_params(base_url: str, gguf_folder: Path) -> dict:
    """The shipped params.yaml with every chat role on the server (the role keeps its sampling and controls)."""
    params = copy.deepcopy(load_params(REPO / "params.yaml"))
    params["evolve"]["strategy"] = "evol"  # the hand-written methods: their calls carry evolve.controls (auto's carry
    #                                      evolve.method_controls, none shipped)
    for name in CHAT_ROLES:
        role = params["roles"][name]
        for local in ("model", "batch_size", "threads"):
            role.pop(local, None)
        role.update(backend="openai", model="tiny", base_url=base_url, concurrency=2, timeout_s=60, max_retries=1,
                    tokenizer=str(gguf_folder), max_model_len=4096)
    return params


def role_llm(params: dict, name: str, cache: CallCache):
    role = Role.from_params(name, params["roles"][name])
    return open_llm(role, cache, served_model_identity(role), settings=load_section(params, "llm", LLMSettings))


def seeds(n: int) -> pl.DataFrame:
    texts = [json.loads(line)["instruction"] for line in (REPO / "data/seeds/demo.jsonl").read_text().splitlines()[:n]]
    rows = [{"id": f"s{i}", "root_id": f"s{i}", "parent_id": None, "round": 0, "method": "seed", "status": "seed",
             "failure_reason": None, "instruction": t, "input": "", "output": ""} for i, t in enumerate(texts)]
    return pl.DataFrame(rows, schema={c: (pl.Int32 if c == "round" else pl.String) for c in LINEAGE + ["instruction", "input", "output"]})


def test_the_server_kind_is_found_and_what_it_cannot_honour_is_named_where_written(server, gguf_folder):
    params = served_params(server, gguf_folder)
    role = Role.from_params("judge", params["roles"]["judge"])
    assert served_model_identity(role) == {"served_model": "tiny", "server": "llamacpp"}
    # llama-cpp-python's server decodes one request at a time (no GET /props): one in flight, not concurrency
    assert role.settings.concurrency > 1 and OpenAIBackend.from_role(role).concurrency == 1
    kinds = {name: "llamacpp" for name in CHAT_ROLES}
    why = ("cannot honour this generation control (llama.cpp's server has no n-gram ban among its request "
           "parameters; use repetition_penalty); remove it or use a backend that can (docs/explanation/controls.md)")
    assert server_problems(params, asked_of_roles(params), kinds) == [
        f"evolve.controls.no_repeat_ngram_size: llamacpp's server (roles.evolver) {why}",
        f"optimize.controls.no_repeat_ngram_size: llamacpp's server (roles.optimizer) {why}"]
    params["evolve"]["controls"]["no_repeat_ngram_size"] = None
    params["optimize"]["controls"]["no_repeat_ngram_size"] = None
    assert server_problems(params, asked_of_roles(params), kinds) == []


def test_the_shipped_stages_run_on_the_server(server, gguf_folder, tmp_path):
    params = served_params(server, gguf_folder)
    params["evolve"]["controls"]["no_repeat_ngram_size"] = None  # no server offers it (the test above)
    cache = CallCache(tmp_path / "cache.sqlite")
    prompts = PromptLibrary(REPO / "prompts")
    evolver = role_llm(params, "evolver", cache)
    section = load_section(params, "evolve", EvolveSection)  # the shipped section, its rounds aside
    settings = EvolveSettings(**{f.name: getattr(section, f.name) for f in dataclasses.fields(EvolveSettings)})
    # the response rules' answers come from the responder, with respond's sampling (evolve.check_role)
    respond = load_section(params, "respond", RespondSettings)
    table, _, _ = evolve_round(seeds(4), round_index=1, settings=settings, prompts=prompts, evolver=evolver,
                               responder=role_llm(params, "responder", cache), respond_sampling=response_sampling(respond))
    assert table.height == 4 and evolver.stats["failures"] == 0 and evolver.stats["calls"] > 0
    banned = params["evolve"]["controls"]["banned_strings"]
    for raw in table["raw_output"].drop_nulls():
        assert not any(b in raw for b in banned) and "\n\n" not in raw  # the grammar and stop held

    judged_items = table.select("id", "round", "instruction", "input").with_columns(
        pl.when(pl.col("instruction") == "").then(pl.lit("Name a colour.")).otherwise(pl.col("instruction")).alias("instruction"))
    labels = role_llm(params, "judge", cache)
    held = judge(judged_items, labels, prompts, constrain=True, probabilities=False)
    assert set(held["difficulty_level"].to_list()) <= set(LEVELS) and held["difficulty_level"].null_count() == 0
    assert held["difficulty_score"].null_count() == 0  # 0-100, held by the grammar too
    assert labels.stats["failures"] == 0

    ranked = judge(judged_items, role_llm(params, "judge", cache), prompts, constrain=True, probabilities=True)
    assert ranked["difficulty_expected"].null_count() == 0 and ranked["level_expected"].null_count() == 0
    assert ranked["difficulty_expected"].is_between(0, 100).all()
    assert set(ranked["difficulty_level"].to_list()) <= set(LEVELS)


def test_greedy_answers_are_the_llamacpp_backends(server, gguf_folder, tmp_path):
    from evolforge.llm.backends.llamacpp.backend import LlamaCppBackend
    from evolforge.llm.backends.openai.client import OpenAIBackend

    local = LlamaCppBackend(str(gguf_folder), threads=1)
    role = Role.from_params("judge", served_params(server, gguf_folder)["roles"]["judge"])
    remote = OpenAIBackend.from_role(role)
    prompts = ["Rewrite: name a colour.", "Name three colours.", "Explain step 3 of making bread.",
               "Give three tips for writing tests."]
    alike = []
    for prompt in prompts:  # one sequence at a time, greedy
        ask = ChatRequest.chat([{"role": "user", "content": prompt}], temperature=0.0, max_tokens=24)
        [mine], [theirs] = local.generate([ask]), remote.generate([ask])
        # The server tokenizes the rendered prompt with llama.cpp's own tokenizer (the GGUF's pre-tokenizer),
        # the backend with the model's tokenizer.json: where the two split a prompt differently (the tiny
        # GGUF's "default" pre-tokenizer splits some digit runs otherwise), the model reads other tokens and
        # the answers may differ. Where they split it alike, the greedy answers are the same.
        if theirs.prompt_tokens == mine.prompt_tokens:
            assert theirs.text == mine.text, prompt
            alike.append(prompt)
    assert len(alike) >= 2, alike


# How close the server's expected values come to the in-process ranking's on the tiny model: levels within
# 0.1 of the 0-4 scale; scores within 6 of 100, because the tiny GGUF's llama.cpp tokenizer (a "default"
# pre-tokenizer) writes digit runs as one token ("44") that the in-process ranking, with the model's tokenizer.json
# (digits one by one), never scores: the walk counts every tokenization of an answer. Qwen's tokenizers split digits
# alike in both, where the two methods read the same paths.
LEVEL_TOLERANCE, SCORE_TOLERANCE = 0.1, 6.0


def test_judge_expected_values_are_the_in_process_ones(server, gguf_folder):
    from evolforge.llm.backends.llamacpp.backend import LlamaCppBackend
    from evolforge.llm.backends.openai.client import OpenAIBackend
    from evolforge.llm.ranking import choice_probabilities, expected_value
    from evolforge.steps.common.difficulty import LEVEL_TEMPLATE, SCORE_TEMPLATES, SCORES

    local = LlamaCppBackend(str(gguf_folder), threads=1)
    fields = served_params(server, gguf_folder)["roles"]["judge"]
    # the walk sees every allowed token when the server lists the whole vocabulary (llama-cpp-python allows it)
    remote = OpenAIBackend.from_role(Role.from_params("judge", {**fields, "top_logprobs": 2100}))
    prompts = PromptLibrary(REPO / "prompts")
    for query in ("Name a colour.", "Explain step 3 of making bread.", "Write a poem about the sea in four lines."):
        for template, choices, values, tolerance in (
                (LEVEL_TEMPLATE, tuple(LEVELS), [float(v) for v in range(5)], LEVEL_TOLERANCE),
                (SCORE_TEMPLATES["paper"], SCORES, [float(s) for s in SCORES], SCORE_TOLERANCE)):
            ask = ChatRequest.chat([{"role": "user", "content": prompts.render(template, query=query)}],
                                   choices=choices, rank=True)
            [mine], [theirs] = local.generate([ask]), remote.generate([ask])
            assert not theirs.failed, theirs.error
            here, served = choice_probabilities(mine.text), choice_probabilities(theirs.text)
            assert abs(expected_value(served, values) - expected_value(here, values)) <= tolerance, (query, choices[:2])
            assert max(range(len(served)), key=served.__getitem__) == max(range(len(here)), key=here.__getitem__)
            assert theirs.completion_tokens <= 20  # a few short generations, against 5 or 101 echoed prompts


def test_optimize_writes_candidates_on_the_server(server, gguf_folder, tmp_path):
    """The shipped optimize controls (assistant_prefix "```Optimized Method\\n", stop "```") on the server.
    Sent as its `stop`, the stop string ends every answer at the prefix's own opening fence (the grammar writes the
    prefix): every candidate is empty. Held in the grammar after the prefix, the candidates are written."""
    import urllib.request

    from evolforge.llm.backends.openai.request import chat_body, text_grammar
    from evolforge.steps.optimize.candidates import parse_optimized_method, propose_methods

    params = served_params(server, gguf_folder)
    controls = params["optimize"]["controls"]
    assert controls == {"assistant_prefix": "```Optimized Method\n", "stop": ["```"], "no_repeat_ngram_size": 8}
    controls = {k: v for k, v in controls.items() if k != "no_repeat_ngram_size"}  # no server offers it (above)
    optimizer = role_llm(params, "optimizer", CallCache(tmp_path / "cache.sqlite"))
    trajectory = [{"id": 0, "stage0": "Name a colour.", "stage1": "Name a colour and say why."},
                  {"id": 1, "stage0": "Add two numbers.", "stage1": "Add two numbers."}]
    method = "Step 1: list methods.\nStep 2: rewrite the instruction."
    candidates = propose_methods(optimizer, PromptLibrary(REPO / "prompts"), trajectory, method, candidates=3,
                                 controls=controls)
    parsed = [c for c in candidates if c.method is not None]
    assert parsed, [(c.parse_error, c.answer) for c in candidates]  # at least one (the tiny model: every one)
    assert all(c.answer.startswith("```Optimized Method\n") and "```" not in c.answer[3:] for c in parsed)

    # what the server does with the stop string as its own `stop` parameter: the answer ends at the prefix
    request = optimizer.request([{"role": "user", "content": "Improve the method."}],
                                controls=optimizer.role.controls.merged(controls, "optimize.controls"))
    body = chat_body(request, "tiny", "response_format", "llamacpp")
    assert "stop" not in body and body["grammar"] == text_grammar((), controls["assistant_prefix"], ("```",))
    body.update(stop=["```"], grammar=text_grammar((), controls["assistant_prefix"]))
    ask = urllib.request.Request(f"{server}/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(ask, timeout=60) as reply:
        text = json.loads(reply.read())["choices"][0]["message"]["content"]
    assert text.strip() in ("", "```Optimized Method")  # llama-cpp-python 0.3.36: "" (cut at the first fence)
    assert parse_optimized_method(text, "stop")[0] is None
