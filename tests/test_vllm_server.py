"""The chat roles on a REAL vLLM server (``make test-vllm``: vLLM's CPU build in .venv-vllm), started as
docs/how-to/servers.md "vLLM's server, step by step" writes it (``python -m vllm.entrypoints.openai.api_server``,
``--dtype float32``, a KV cache of a stated size) on the tests' tiny model, and driven by that page's params block
as the page says to apply it (tests/test_openai_server_docs.py):

- the server's kind is found from ``GET /models`` and recorded in the identity, and the page's settings pass the
  server checks with that kind;
- optimize (candidates under the shipped optimize controls), an evolving round (the shipped evolve controls: banned
  strings as bad_words, stop, repetition_penalty), respond, verify's judge (P(right) from probabilities) and the
  judge with probabilities all run with no failed request;
- the judge's expected values equal the in-process hf backend's on the same weights (ranking by
  ``logprob_token_ids``: tests/test_openai_ranking.py), in one request per level and four per score.

Every wait is bounded; only 127.0.0.1 is used."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import polars as pl
import pytest

pytest.importorskip("vllm")

from evolforge.config.loader import load_section  # noqa: E402
from evolforge.config.roles import Role  # noqa: E402
from evolforge.config.servers import server_problems  # noqa: E402
from evolforge.core.prompts import PromptLibrary  # noqa: E402
from evolforge.llm.backends.openai.served import served_model_identity  # noqa: E402
from evolforge.llm.cache import CallCache  # noqa: E402
from evolforge.schema import asked_of_roles  # noqa: E402
from evolforge.steps.common.difficulty import LEVELS, judge  # noqa: E402
from evolforge.steps.evolve.settings import EvolveSection, EvolveSettings  # noqa: E402
from evolforge.steps.evolve.step import evolve_round  # noqa: E402
from evolforge.steps.common.responses import response_sampling  # noqa: E402
from evolforge.steps.respond.settings import RespondSettings  # noqa: E402
from test_llamacpp_server import _free_port, role_llm, seeds, serving  # noqa: E402
from test_openai_server_docs import CHAT_ROLES, docs_params, docs_server_command  # noqa: E402
from test_vllm_pipeline import build_tiny  # noqa: E402

pytestmark = [pytest.mark.server, pytest.mark.usefixtures("no_proxy"), pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[1]
START_S = 300  # the server's start, at most (imports and the CPU engine on two shared cores)
CONTEXT = 2048  # the tiny model's positions
# the judge's expected values against the hf backend's in this process (float32 both): vLLM's kernels and
# transformers' sum in other orders, as tests/test_vllm_backend.py states for the in-process engine
SCORE_TOLERANCE, LEVEL_TOLERANCE = 0.05, 0.005


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """The tiny model with heads vLLM's CPU attention takes, briefly trained (tests/test_vllm_pipeline.py)."""
    out = tmp_path_factory.mktemp("vllm-server") / "tiny"
    build_tiny(out, REPO, steps=60)
    return out


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    """The page's command, on the tiny model and a free port, eager (no compile step: a test's start)."""
    words = docs_server_command()
    port = _free_port()
    values = {"--model": str(tiny), "--served-model-name": "tiny", "--port": str(port),
              "--max-model-len": str(CONTEXT), "--kv-cache-memory-bytes": str(256 * 2**20)}
    command = [sys.executable, *words[1:]]
    for option, value in values.items():
        command[command.index(option) + 1] = value
    command.append("--enforce-eager")
    # the server's engine in a process of its own (make test-vllm keeps the in-process engines' core in pytest's)
    env = {**os.environ, "VLLM_NO_USAGE_STATS": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    log_path = tmp_path_factory.mktemp("vllm-server-log") / "server.log"
    with serving(command, log_path, port, START_S, 30, env) as base_url:
        yield base_url, log_path


def served_params(base_url: str, tiny: Path) -> dict:
    """The page's params, on the test's server and model."""
    params = docs_params(REPO)
    params["evolve"]["strategy"] = "evol"  # the hand-written methods: their calls carry evolve.controls
    for name in CHAT_ROLES:
        params["roles"][name].update(model="tiny", base_url=base_url, tokenizer=str(tiny), max_model_len=CONTEXT,
                                     timeout_s=120, max_retries=1)
    return params


def test_the_server_kind_is_found_and_the_pages_settings_pass_its_checks(server, tiny):
    base_url, _ = server
    params = served_params(base_url, tiny)
    role = Role.from_params("judge", {**params["roles"]["judge"], "server": "auto"})
    assert served_model_identity(role) == {"served_model": "tiny", "server": "vllm"}
    params["judge"]["probabilities"] = True
    assert server_problems(params, asked_of_roles(params), {name: "vllm" for name in CHAT_ROLES}) == []


def test_the_chat_stages_run_on_the_server(server, tiny, tmp_path):
    from evolforge.steps.optimize.candidates import propose_methods
    from evolforge.steps.respond.step import _kept, answer
    from evolforge.steps.verify.methods import Item, verify_judged
    from evolforge.steps.verify.settings import VerifySettings

    base_url, log = server
    params = served_params(base_url, tiny)
    cache = CallCache(tmp_path / "cache.sqlite")
    prompts = PromptLibrary(REPO / "prompts")

    optimizer = role_llm(params, "optimizer", cache)
    trajectory = [{"id": 0, "stage0": "Name a colour.", "stage1": "Name a colour and say why."},
                  {"id": 1, "stage0": "Add two numbers.", "stage1": "Add two numbers."}]
    candidates = propose_methods(optimizer, prompts, trajectory, "Step 1: list methods.\nStep 2: rewrite it.",
                                 candidates=2, controls=params["optimize"]["controls"])
    assert len(candidates) == 2 and optimizer.stats["failures"] == 0
    # the prefix put back before the continuation; the text is stripped as on every backend, so a continuation
    # the tiny model ends at once (its first token a stop) leaves the prefix without its newline
    assert all(c.answer.startswith("```Optimized Method") for c in candidates)

    evolver = role_llm(params, "evolver", cache)
    section = load_section(params, "evolve", EvolveSection)
    settings = EvolveSettings(**{f.name: getattr(section, f.name) for f in dataclasses.fields(EvolveSettings)})
    # the response rules' answers come from the responder, with respond's sampling (evolve.check_role)
    respond = load_section(params, "respond", RespondSettings)
    table, _, _ = evolve_round(seeds(4), round_index=1, settings=settings, prompts=prompts, evolver=evolver,
                               responder=role_llm(params, "responder", cache), respond_sampling=response_sampling(respond))
    assert table.height == 4 and evolver.stats["failures"] == 0 and evolver.stats["calls"] > 0
    banned = params["evolve"]["controls"]["banned_strings"]
    assert all(not any(b in raw for b in banned) for raw in table["raw_output"].drop_nulls())

    responder = role_llm(params, "responder", cache)
    items = _kept(seeds(3).with_columns(pl.lit("seed").alias("status")), is_round=False)
    answered = answer(items, responder, prompts)
    assert answered["output"].null_count() == 0 and responder.stats["failures"] == 0

    judge_llm = role_llm(params, "judge", cache)
    checked = [Item(task=t, instruction=t, input="", answer=a)
               for t, a in zip(answered["instruction"].to_list(), answered["output"].to_list())]
    verdicts = verify_judged(checked, judge_llm, prompts, VerifySettings(probabilities=True, reason_max_tokens=8))
    assert all(0.0 <= r.confidence <= 1.0 for r in verdicts)  # P(right), from the ranked labels

    judged = judge(answered.select("id", "round", "instruction", "input"), judge_llm, prompts, constrain=True,
                   probabilities=True)
    assert judged["difficulty_expected"].null_count() == 0 and judged["difficulty_expected"].is_between(0, 100).all()
    assert set(judged["difficulty_level"].to_list()) <= set(LEVELS)
    assert judge_llm.stats["failures"] == 0
    assert "Traceback" not in log.read_text(errors="replace")  # the server met nothing it could not answer


def test_the_judges_expected_values_equal_the_in_process_ones(server, tiny, tmp_path):
    from evolforge.llm.backends.hf.backend import HFBackend
    from evolforge.llm.backends.openai import ranking
    from evolforge.llm.cached import LLM

    base_url, _ = server
    params = served_params(base_url, tiny)
    served = role_llm(params, "judge", None)
    local = LLM(HFBackend(str(tiny), dtype="float32", device="cpu", threads=1), None,
                role=Role(name="judge", backend="hf", model=str(tiny)))
    items = pl.DataFrame({"id": ["a", "b", "c"], "round": [1, 1, 2], "input": ["", "", ""],
                          "instruction": ["Name a colour.", "Explain what a leap year is.",
                                          "Write a function that reverses a list."]})
    prompts = PromptLibrary(REPO / "prompts")
    ours = judge(items, served, prompts, constrain=True, probabilities=True)
    theirs = judge(items, local, prompts, constrain=True, probabilities=True)
    assert ours["difficulty_expected"].to_list() == pytest.approx(theirs["difficulty_expected"].to_list(),
                                                                  abs=SCORE_TOLERANCE)
    assert ours["level_expected"].to_list() == pytest.approx(theirs["level_expected"].to_list(), abs=LEVEL_TOLERANCE)
    # one request for an item's level, four for its score (the echo sent 5 and 101)
    score = served.request([{"role": "user", "content": "Score it."}], choices=tuple(str(n) for n in range(101)),
                           rank=True)
    assert ranking.server_requests(served.backend.tokenizer, score) == 4
