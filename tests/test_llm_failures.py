"""One bad request fails one item: rejected prompts, exhausted retries and prompts past the context
become that item's recorded failure for every backend, everything served is committed, a rerun retries
only the failures, and a stage stops only past ``llm.max_failure_rate``. Also: 429 backoff, redirects,
served-model identity, token and cost counts, pacing. Loopback servers only."""

from __future__ import annotations

import json
import re
import sys
import time
import types

import polars as pl
import pytest

from evolforge.steps.evolve.step import EvolveSettings, evolve_round
from evolforge.steps.common.difficulty import judge
from evolforge.steps.optimize.candidates import propose_methods
from evolforge.steps.common.evolving import EvolvingCall
from evolforge.steps.optimize.scoring import score_method
from evolforge.steps.respond.step import _kept, answer
from evolforge.llm.cache import CallCache
from evolforge.core.models import ModelError
from evolforge.core.prompts import PromptLibrary
from evolforge.io.records import LINEAGE
from evolforge.config.backend_settings import OpenAISettings
from evolforge.config.roles import Role
from evolforge.llm.requests import ChatRequest
from evolforge.config.runtime import LLMSettings
from evolforge.llm.cached import LLM, open_llm
from evolforge.llm.types import Completion, LLMFailureError
from evolforge.llm.backends.fake import FakeBackend
from evolforge.llm.backends.openai.client import OpenAIBackend
from evolforge.llm.backends.openai.served import served_model_identity
from evolforge.llm.backends.openai.http import LLMRequestError
from fake_openai import FakeOpenAIServer, chat_body

REJECTED = {"task 03", "task 11", "task 17"}
TASK = re.compile(r"task \d\d")


pytestmark = pytest.mark.usefixtures("no_proxy")  # tests/conftest.py


def role(server: FakeOpenAIServer, **kw) -> Role:
    fields = dict(backend="openai", model="test-model", base_url=server.base_url, concurrency=4, timeout_s=5,
                  max_retries=2, backoff_s=0.01)
    fields.update(kw)
    return Role.from_params("evolver", fields)


def evolving_server(body: dict):
    """Rejects the prompts about the three REJECTED tasks (HTTP 400); evolves the others."""
    task = TASK.search(body["messages"][-1]["content"]).group(0)
    if task in REJECTED:
        return 400, {"error": {"message": f"content policy: {task} refused", "type": "invalid_request_error"}}, {}
    return 200, chat_body(f"Solve {task} twice, the second time with a proof of each step.", 50, 12), {}


def pool(n: int) -> pl.DataFrame:
    rows = [{"id": f"s{i:02d}", "root_id": f"s{i:02d}", "parent_id": None, "round": 0, "method": "seed",
             "status": "seed", "failure_reason": None, "instruction": f"Describe task {i:02d} in detail.",
             "input": "", "output": ""} for i in range(n)]
    return pl.DataFrame(rows, schema={c: (pl.Int32 if c == "round" else pl.String) for c in LINEAGE + ["instruction", "input", "output"]})


def test_rejected_prompts_fail_their_items_and_a_rerun_retries_only_them(tmp_path):
    settings = EvolveSettings(elimination={"sorry_short": False, "stopwords_only": False, "rule_f": False,
                                           "same_answer": False})
    lenient = LLMSettings(max_failure_rate=0.2)  # 3 of 20 = 15%
    with FakeOpenAIServer(evolving_server) as server:
        def run():
            evolver = open_llm(role(server), CallCache(tmp_path / "c.sqlite"), settings=lenient)
            return evolve_round(pool(20), round_index=1, settings=settings, prompts=PromptLibrary(), evolver=evolver), evolver

        (table, next_pool, summary), evolver = run()
        failed = table.filter(pl.col("status") == "failed")
        assert sorted(TASK.search(t).group(0) for t in failed["parent_instruction"]) == sorted(REJECTED)
        assert set(failed["failure_reason"]) == {"request_rejected"}
        assert all("HTTP 400" in d and "refused" in d for d in failed["failure_detail"])
        assert failed["raw_output"].is_null().all()  # no invented text
        assert summary["evolved"] == 17 and summary["failed"] == 3 and next_pool.height == 20  # parents kept
        assert evolver.stats["failures"] == 3 and evolver.stats["failed_by_reason"] == {"request_rejected": 3}
        assert server.chats() == 20

        (again, _, _), rerun = run()
        assert server.chats() == 23  # exactly the three failures were asked again
        assert rerun.stats["cache_hits"] == 17 and rerun.stats["calls"] == 3
        assert again.filter(pl.col("status") == "evolved")["instruction"].to_list() == \
            table.filter(pl.col("status") == "evolved")["instruction"].to_list()


def test_past_the_threshold_the_stage_fails_after_committing_what_it_got(tmp_path):
    with FakeOpenAIServer(evolving_server) as server:
        llm = open_llm(role(server), CallCache(tmp_path / "c.sqlite"), settings=LLMSettings(max_failure_rate=0.1))
        requests = [llm.request([{"role": "user", "content": f"Describe task {i:02d}."}]) for i in range(20)]
        with pytest.raises(LLMFailureError, match=r"3 of 20 requests failed \(3 request_rejected\).*llm.max_failure_rate = 0.1"):
            llm.generate(requests)  # stops at the third failure: no outcome of the rest can save the call
        # every completion received is kept; requests still in flight at the stop (at most concurrency) are dropped
        assert len(CallCache(tmp_path / "c.sqlite")) == llm.stats["calls"] - llm.stats["failures"] > 0
        assert llm.stats["failures"] == 3 and server.chats() - llm.stats["calls"] <= 4


def test_retries_exhausted_mid_batch_lose_no_served_completion(tmp_path):
    state = {"healed": False}

    def flaky(body):
        prompt = body["messages"][-1]["content"]
        if prompt in ("p07", "p15") and not state["healed"]:
            return 503, "overloaded", {}
        return 200, chat_body(f"answer {prompt}"), {}

    with FakeOpenAIServer(flaky) as server:
        requests = [ChatRequest.chat([{"role": "user", "content": f"p{i:02d}"}]) for i in range(30)]
        llm = open_llm(role(server, concurrency=8), CallCache(tmp_path / "c.sqlite"), settings=LLMSettings(max_failure_rate=0.1))
        out = llm.generate(requests)
        assert [i for i, c in enumerate(out) if c.failed] == [7, 15]
        assert {c.failure_reason for c in out if c.failed} == {"retries_exhausted"}
        assert all(c.text == f"answer p{i:02d}" for i, c in enumerate(out) if not c.failed)
        assert len(CallCache(tmp_path / "c.sqlite")) == 28  # every served completion committed
        assert server.chats("p07") == 3  # max_retries 2

        state["healed"] = True
        before = server.chats()
        rerun = open_llm(role(server), CallCache(tmp_path / "c.sqlite"))
        assert [c.text for c in rerun.generate(requests)] == [f"answer p{i:02d}" for i in range(30)]
        assert server.chats() - before == 2


def test_429_with_retry_after_zero_waits_the_minimum_backoff():
    attempts = []

    def throttled(body):
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            return 429, {"error": "slow down"}, {"Retry-After": "0"}
        return 200, chat_body("ok"), {}

    with FakeOpenAIServer(throttled) as server:
        backend = OpenAIBackend(server.base_url, "test-model", concurrency=1, backoff_s=0.2, max_retries=5)
        assert backend.generate([ChatRequest.chat([{"role": "user", "content": "hi"}])])[0].text == "ok"
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    assert len(gaps) == 2 and gaps[0] >= 0.2 and gaps[1] >= 0.4  # backoff_s, then doubled


def test_429_waits_the_least_throttle_wait_even_with_backoff_zero():
    from evolforge.llm.backends.openai.http import MIN_THROTTLE_WAIT_S

    attempts = []

    def throttled(body):
        attempts.append(time.monotonic())
        return (429, {"error": "slow down"}, {"Retry-After": "0"}) if len(attempts) < 2 else (200, chat_body("ok"), {})

    with FakeOpenAIServer(throttled) as server:
        backend = OpenAIBackend(server.base_url, "test-model", concurrency=1, backoff_s=0, max_retries=5)
        assert backend.generate([ChatRequest.chat([{"role": "user", "content": "hi"}])])[0].text == "ok"
    assert attempts[1] - attempts[0] >= MIN_THROTTLE_WAIT_S


def test_a_body_cut_short_is_retried_not_a_crash():
    """A 200 whose body ends before its Content-Length (the connection dropped mid-answer) is a connection
    error like any other: the request is tried again, and the next answer is the one kept."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    whole = json.dumps(chat_body("whole answer")).encode()

    def serve():
        for reply in (b'{"choices": [{"mess', whole):  # the first reply stops after 19 of its bytes
            conn, _ = listener.accept()
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(65536)
                head, _, rest = request.partition(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                while len(rest) < length:
                    rest += conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                             b"Connection: close\r\n\r\n%s" % (len(whole), reply))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    backend = OpenAIBackend(f"http://127.0.0.1:{port}/v1", "test-model", concurrency=1, backoff_s=0, max_retries=2)
    out = backend.generate([ChatRequest.chat([{"role": "user", "content": "hi"}])])[0]
    thread.join(5)
    listener.close()
    assert out.failure_reason is None and out.text == "whole answer"


def test_a_redirect_to_another_host_never_gets_the_key(monkeypatch):
    with FakeOpenAIServer(lambda body: (200, chat_body("stolen"), {}), host="127.0.0.1") as other:
        target = f"http://localhost:{other.port}/v1/chat/completions"
        with FakeOpenAIServer(lambda body: (302, "", {"Location": target})) as server:
            monkeypatch.setenv("EVOLFORGE_TEST_KEY", "sk-test-redirect-0123456789")
            llm = open_llm(role(server, api_key_env="EVOLFORGE_TEST_KEY"), None)
            with pytest.raises(LLMRequestError, match="redirect.*not followed") as info:
                llm.generate([ChatRequest.chat([{"role": "user", "content": "hi"}])])
            assert "sk-test" not in str(info.value)
            assert server.seen[0]["authorization"] == "Bearer sk-test-redirect-0123456789"
        assert other.seen == []  # nothing, so no Authorization header, reached the other host


def test_the_model_list_is_not_fetched_through_a_redirect(monkeypatch):
    with FakeOpenAIServer(lambda body: (200, chat_body("unused"), {})) as other:
        with FakeOpenAIServer(lambda body: (200, chat_body("unused"), {})) as server:
            server.redirect_get = f"http://localhost:{other.port}/v1/models"
            monkeypatch.setenv("EVOLFORGE_TEST_KEY", "sk-test-redirect-0123456789")
            with pytest.raises(ModelError, match="answered HTTP 302") as info:
                served_model_identity(role(server, api_key_env="EVOLFORGE_TEST_KEY"))
            assert "sk-test" not in str(info.value)
        assert other.seen == []  # the key went to the configured server only


def test_served_model_identity_lists_the_model_and_ignores_the_url():
    with FakeOpenAIServer(evolving_server, models=("test-model", "other")) as server:
        first = served_model_identity(role(server))
        moved = served_model_identity(role(server, base_url=server.base_url.replace("127.0.0.1", "localhost")))
        assert first == moved == {"served_model": "test-model"}
        with pytest.raises(ModelError, match="'absent' is not served"):
            served_model_identity(role(server, model="absent"))


def test_tokens_and_cost_add_up():
    def counted(body):
        words = sum(len(m["content"].split()) for m in body["messages"])
        return 200, chat_body("two words", words, 2), {}

    with FakeOpenAIServer(counted) as server:
        priced = role(server, price_per_mtok_prompt=2.0, price_per_mtok_completion=8.0)
        llm = open_llm(priced, None)
        prompts = [f"say {'x ' * i}" for i in range(1, 11)]
        llm.generate([llm.request([{"role": "user", "content": p}]) for p in prompts])
    prompt_tokens = sum(len(p.split()) for p in prompts)
    assert llm.stats["prompt_tokens"] == prompt_tokens and llm.stats["completion_tokens"] == 20
    assert llm.stats["cost"] == pytest.approx((prompt_tokens * 2.0 + 20 * 8.0) / 1e6)

    fake = LLM(FakeBackend(lambda r: "a b c"), None)
    fake.generate([ChatRequest.chat([{"role": "user", "content": "one two"}])] * 2 + [ChatRequest.chat([{"role": "user", "content": "x"}])])
    assert (fake.stats["prompt_tokens"], fake.stats["completion_tokens"]) == (2 + 1, 3 + 3)  # the duplicate once
    assert "cost" not in fake.stats  # no price, no cost


def test_requests_per_minute_paces_requests():
    with FakeOpenAIServer(lambda body: (200, chat_body("ok"), {})) as server:
        backend = OpenAIBackend(server.base_url, "test-model", concurrency=4, requests_per_minute=600)
        start = time.monotonic()
        backend.generate([ChatRequest.chat([{"role": "user", "content": f"p{i}"}]) for i in range(6)])
    assert time.monotonic() - start >= 0.45  # 10 per second: the sixth starts after 0.5 s


# -- prompts longer than the context, for every backend -------------------------------------------


LONG = " ".join(["word"] * 300)


def test_openai_prompt_too_long_is_checked_before_sending(tmp_path):
    from tiny import pseudo_words, train_tokenizer

    tokenizer = train_tokenizer([" ".join(pseudo_words(50))] * 20, 300)
    with pytest.raises(ValueError, match="roles.evolver.tokenizer .*max_model_len, which is not set"):
        OpenAIBackend.from_role(Role(name="evolver", backend="openai", model="m", settings=OpenAISettings(
            base_url="http://127.0.0.1:9/v1", tokenizer="some/tokenizer")))
    with FakeOpenAIServer(lambda body: (200, chat_body("fits"), {})) as server:
        checked = role(server, max_model_len=64, max_tokens=8)  # from_role loads role.tokenizer; given here
        backend = OpenAIBackend(server.base_url, "test-model", max_model_len=64, tokenizer=tokenizer)
        llm = LLM(backend, None, role=checked, settings=LLMSettings(max_failure_rate=0.5))
        out = llm.generate([llm.request([{"role": "user", "content": c}]) for c in (LONG, "short")])
        assert out[0].failure_reason == "prompt_too_long" and "max_model_len 64" in out[0].error
        assert out[1].text == "fits"
        assert server.chats() == 1  # the long prompt never left


def test_hf_prompt_too_long_and_generation_stops_at_the_last_position(tmp_path):
    from tiny import build_random_llama

    from evolforge.llm.backends.hf.backend import HFBackend

    path = build_random_llama(tmp_path / "m", vocab_size=300, hidden_size=32, num_layers=1, num_heads=2,
                              intermediate_size=64, max_position_embeddings=40)
    backend = HFBackend(str(path), device="cpu")
    requests = [ChatRequest.chat([{"role": "user", "content": LONG}], max_tokens=4),
                ChatRequest.chat([{"role": "user", "content": "hi"}], max_tokens=200)]
    llm = LLM(backend, None, role=Role(name="r", backend="hf", model=str(path)), settings=LLMSettings(max_failure_rate=0.5))
    long, short = llm.generate(requests)
    assert long.failure_reason == "prompt_too_long" and "40 positions" in long.error
    assert not short.failed
    assert short.prompt_tokens + short.completion_tokens <= 40
    assert short.finish_reason == "stop" or short.prompt_tokens + short.completion_tokens == 40


class _StubVLLM:
    """Enough of vllm.LLM for the backend: a whitespace tokenizer, and ``generate`` (of token-id prompts) that
    refuses the whole call when one prompt is longer than max_model_len, as vLLM does."""

    calls: list[int] = []

    def __init__(self, model, max_model_len=None, **kwargs):
        self.llm_engine = types.SimpleNamespace(model_config=types.SimpleNamespace(max_model_len=max_model_len or 32))

    class _Tokenizer:
        words: dict[str, int] = {"<end>": 0}
        eos_token_id = 0

        def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True, **kwargs):
            return " ".join(m["content"] for m in messages) + " <assistant>"

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [self.words.setdefault(w, len(self.words)) for w in text.split()]}

        def encode(self, text, add_special_tokens=False):
            return self(text)["input_ids"]

        def decode(self, ids):
            names = {i: w for w, i in self.words.items()}
            return " ".join(names[i] for i in ids)

    def get_tokenizer(self):
        return self._Tokenizer()

    def generate(self, prompts, sampling_params, use_tqdm=False):
        _StubVLLM.calls.append(len(prompts))
        limit = self.llm_engine.model_config.max_model_len
        outs = []
        for prompt in prompts:
            ids = prompt["prompt_token_ids"]
            if len(ids) >= limit:
                raise ValueError(f"The decoder prompt (length {len(ids)}) is longer than the maximum model length of "
                                 f"{limit}")
            text = f"reply to {self._Tokenizer().decode(ids[:-1])}"
            outs.append(types.SimpleNamespace(prompt_token_ids=ids, outputs=[
                types.SimpleNamespace(text=text, finish_reason="stop", token_ids=list(range(len(text.split()))))]))
        return outs


def stub_vllm(monkeypatch) -> None:
    """``vllm`` and ``vllm.sampling_params`` as the backend imports them, backed by :class:`_StubVLLM`."""
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=_StubVLLM, SamplingParams=lambda **kw: kw))
    monkeypatch.setitem(sys.modules, "vllm.sampling_params",
                        types.SimpleNamespace(StructuredOutputsParams=lambda **kw: ("structured", kw)))


def test_vllm_prompt_too_long_fails_one_item_not_the_call(monkeypatch):
    stub_vllm(monkeypatch)
    monkeypatch.setattr(_StubVLLM, "calls", [])
    from evolforge.llm.backends.vllm.backend import VLLMBackend

    monkeypatch.setattr(VLLMBackend, "identity", lambda self: {"name": "stub"})
    monkeypatch.setattr("evolforge.llm.backends.vllm.backend.model_identity", lambda model, revision: {"name": model})
    backend = VLLMBackend("stub", max_model_len=32)
    requests = [ChatRequest.chat([{"role": "user", "content": LONG if i == 3 else f"question {i}"}]) for i in range(10)]
    out = LLM(backend, None, role=Role(name="r", backend="vllm", model="stub"), settings=LLMSettings(max_failure_rate=0.2)).generate(requests)
    assert out[3].failure_reason == "prompt_too_long" and "max_model_len is 32" in out[3].error
    assert [c.text for i, c in enumerate(out) if i != 3] == [f"reply to question {i}" for i in range(10) if i != 3]
    assert _StubVLLM.calls == [9]  # every miss in one engine call, not batch_size at a time
    assert out[0].prompt_tokens == 3 and out[0].completion_tokens == 4


# -- the build modules record failed calls --------------------------------------------------------


def scripted_failures(fail_when):
    def reply(request: ChatRequest):
        prompt = request.messages[-1][1]
        if fail_when(prompt):
            return Completion.failure("request_rejected", "HTTP 400: 'refused'")
        return "hard" if "difficulty" in prompt.lower() and "0 to 100" not in prompt else "70"
    return reply


def test_respond_and_judge_keep_the_row_and_record_the_reason():
    items = pl.DataFrame({"id": ["a", "b", "c"], "round": [1, 1, 2], "instruction": ["Fine", "Refused one", "Also fine"],
                          "input": ["", "", ""], "instruction_finish_reason": ["stop"] * 3})
    items = _kept(items, is_round=False)  # the columns respond answers, null where absent
    lenient = LLMSettings(max_failure_rate=0.5)
    answered = answer(items, LLM(FakeBackend(scripted_failures(lambda p: "Refused" in p)), None, settings=lenient), PromptLibrary())
    assert answered["output"].to_list()[1] is None and answered["output"].to_list()[0] is not None
    assert answered["response_failure_reason"].to_list() == [None, "request_rejected", None]
    assert answered["response_failure_detail"].to_list()[1] == "HTTP 400: 'refused'"

    judged = judge(items, LLM(FakeBackend(scripted_failures(lambda p: "Refused" in p)), None, settings=lenient), PromptLibrary())
    assert judged["difficulty_level"].to_list()[1] is None and judged["difficulty_level_raw"].to_list()[1] is None
    assert judged["difficulty_level_reason"].to_list()[1] == "request_rejected"
    assert judged["difficulty_score_reason"].to_list()[1] == "request_rejected"
    assert judged["difficulty_score"].to_list()[0] == 70.0


def test_optimize_counts_a_failed_call_as_unparseable():
    prompts = PromptLibrary()
    dev = [{"id": f"d{i}", "instruction": f"task {i}", "input": ""} for i in range(4)]

    def evolver(request):
        prompt = request.messages[-1][1]
        if "task 2" in prompt:
            return Completion.failure("prompt_too_long", "too long")
        if "#Instruction#:" in prompt:  # the evolving prompt
            return "#Finally Rewritten Instruction#: harder " + prompt.rsplit("task ", 1)[1][:1]
        return "A long and complete answer to the question."

    score = score_method(LLM(FakeBackend(evolver), None, settings=LLMSettings(max_failure_rate=0.5)), prompts, dev,
                         "method", call=EvolvingCall(temperature=0.0))
    assert score.missing_marker == 1 and score.failures == 1 and score.failure_rate == 0.25

    def optimizer(request):
        if request.sample_index == 1:
            return Completion.failure("retries_exhausted", "3 attempts")
        return "```Optimized Method\nStep 1: do it.\n```"

    candidates = propose_methods(LLM(FakeBackend(optimizer), None, settings=LLMSettings(max_failure_rate=1.0)), prompts,
                                 [{"id": 0, "stage0": "x", "stage1": "y"}], "method", candidates=3)
    assert [c.method for c in candidates] == ["Step 1: do it.", None, "Step 1: do it."]
    assert candidates[1].answer is None and candidates[1].parse_error.startswith("call failed: retries_exhausted")


def _tables(llm, sizes, rejected_table):
    """Generate one table after another (as respond does, one per round), the ``rejected_table``'s first three
    prompts rejected by the server; the completions of each."""
    out, start = [], 0
    for t, n in enumerate(sizes):
        tasks = [f"task {start + i:02d}" for i in range(n)]
        if t == rejected_table:
            REJECTED_NOW.clear()
            REJECTED_NOW.update(tasks[:3])
        out.append(llm.generate([llm.request([{"role": "user", "content": f"Describe {task}."}]) for task in tasks]))
        start += n
    return out


REJECTED_NOW: set[str] = set()


def _rejecting(body: dict):
    task = TASK.search(body["messages"][-1]["content"]).group(0)
    if task in REJECTED_NOW:
        return 400, {"error": {"message": f"content policy: {task} refused"}}, {}
    return 200, chat_body(f"About {task}.", 10, 3), {}


def test_max_failure_rate_holds_over_the_stage_not_over_one_small_table(tmp_path):
    """Three rejections, all in the third of four tables (3 of its 5 requests, 3 of the stage's 23): a small
    table alone past the threshold does not stop the stage; the stage's end judges the whole."""
    from evolforge.llm.accounting import MIN_REQUESTS_TO_STOP_EARLY, stage_accounting

    assert 6 + 6 + 5 < MIN_REQUESTS_TO_STOP_EARLY <= 23
    with FakeOpenAIServer(_rejecting) as server:
        llm = open_llm(role(server), CallCache(tmp_path / "a.sqlite"), settings=LLMSettings(max_failure_rate=0.5))
        tables = _tables(llm, [6, 6, 5, 6], rejected_table=2)
        assert [sum(c.failed for c in t) for t in tables] == [0, 0, 3, 0]  # 3 of 5 in one table: 60% > 50%
        assert llm.account.asked == 23 and sum(llm.account.failed.values()) == 3
        stage_accounting().check()  # 3 of 23 is under 0.5: the stage passes

        # the same rejections with a threshold the stage is past (3 of 23 > 10%): no early stop in the small
        # tables before MIN_REQUESTS_TO_STOP_EARLY requests were asked; the last table's call (23 asked) stops it
        strict = open_llm(role(server), CallCache(tmp_path / "b.sqlite"), settings=LLMSettings(max_failure_rate=0.1))
        with pytest.raises(LLMFailureError, match=r"3 of 23 requests failed \(3 request_rejected\).*over everything "
                                                  r"this stage asked"):
            _tables(strict, [6, 6, 5, 6], rejected_table=2)
        assert strict.account.asked == 23
        with pytest.raises(LLMFailureError, match=r"3 of 23 requests failed"):
            stage_accounting().check()  # the stage's end says the same

        # a stage that asked fewer than the minimum in all is judged at its end, whole
        small = open_llm(role(server), CallCache(tmp_path / "c.sqlite"), settings=LLMSettings(max_failure_rate=0.1))
        _tables(small, [6, 5], rejected_table=1)
        with pytest.raises(LLMFailureError, match=r"3 of 11 requests failed"):
            stage_accounting().check()
        stage_accounting().check()  # checked once: the stage's LLMs are forgotten after


def test_one_rejection_in_a_small_round_passes_the_shipped_threshold(tmp_path):
    """As the shipped run: 0.05 of 23 requests allows one failure, wherever it lands."""
    from evolforge.llm.accounting import stage_accounting

    def one_rejected(body: dict):
        task = TASK.search(body["messages"][-1]["content"]).group(0)
        if task == "task 13":
            return 400, {"error": {"message": "refused"}}, {}
        return 200, chat_body(f"About {task}.", 10, 3), {}

    with FakeOpenAIServer(one_rejected) as server:
        llm = open_llm(role(server), CallCache(tmp_path / "a.sqlite"), settings=LLMSettings(max_failure_rate=0.05))
        REJECTED_NOW.clear()
        _tables(llm, [6, 6, 5, 6], rejected_table=-1)
        assert sum(llm.account.failed.values()) == 1
        stage_accounting().check()


def test_answers_from_the_cache_count_among_what_a_stage_asked(tmp_path):
    """max_failure_rate holds over every request a stage asked of a role, cache hits included: a rerun whose
    first call is answered from the cache judges a later failure over both calls, as the first run did."""
    cache = CallCache(tmp_path / "cache.sqlite")
    role = Role.from_params("judge", {"backend": "hf", "model": "fake"})
    asks = [ChatRequest.chat([{"role": "user", "content": f"question {i}"}]) for i in range(20)]
    LLM(FakeBackend(lambda request: "an answer"), cache, role=role).generate(asks[:19])
    rerun = LLM(FakeBackend(lambda request: Completion.failure("request_rejected", "refused")), cache, role=role)
    assert not any(c.failed for c in rerun.generate(asks[:19]))  # every one from the cache
    assert rerun.generate(asks[19:])[0].failed
    assert rerun.account.asked == 20 and sum(rerun.account.failed.values()) == 1
    assert not rerun.account.past_threshold()  # 1 of 20 is within the default 0.05 (1 of 1 would not be)
