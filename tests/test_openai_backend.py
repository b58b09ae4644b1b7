"""OpenAIBackend against a real local HTTP server (127.0.0.1, ephemeral port) that can be scripted to
misbehave per prompt: throttling, server errors, hangs, malformed bodies, dropped connections, 401s."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from evolforge.llm.cache import CallCache
from evolforge.config.backend_settings import OpenAISettings
from evolforge.config.roles import Role
from evolforge.llm.requests import ChatRequest
from evolforge.llm.cached import open_llm
from evolforge.llm.backends.openai.client import OpenAIBackend
from evolforge.llm.backends.openai.http import LLMRequestError
from evolforge.config.roles import refuse_secrets

HANG = ("hang",)
DROP = ("drop",)


def reply(status: int, body: bytes | str | dict, headers: dict | None = None) -> tuple:
    if isinstance(body, dict):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    return ("reply", status, body, headers or {})


class ScriptedServer:
    """Answers ``echo: <last user message>`` unless a fault is queued for that prompt (one per attempt)
    or ``always`` is set. Records every request body and header and the peak number in flight."""

    def __init__(self):
        self.faults: dict[str, deque] = {}
        self.always: tuple | None = None
        self.delay_s = 0.0
        self.requests: list[dict] = []
        self.auth_headers: list[str | None] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.release = threading.Event()  # ends hangs at teardown
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def script(self, prompt: str, *actions: tuple) -> None:
        self.faults[prompt] = deque(actions)

    def count(self, prompt: str | None = None) -> int:
        with self.lock:
            return sum(1 for r in self.requests if prompt is None or r["messages"][-1]["content"] == prompt)

    def _action(self, body: dict) -> tuple:
        if self.always is not None:
            return self.always
        queue = self.faults.get(body["messages"][-1]["content"])
        if queue:
            return queue.popleft()
        text = f"  echo: {body['messages'][-1]['content']}\n"  # padded: the client strips
        return reply(200, {"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]})

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw)
                with server.lock:
                    assert self.path == "/v1/chat/completions", self.path
                    server.requests.append(body)
                    server.auth_headers.append(self.headers.get("Authorization"))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    action = server._action(body)
                done = False

                def finished():  # before the client can see the reply: it may send its next request at once
                    nonlocal done
                    if not done:
                        done = True
                        with server.lock:
                            server.in_flight -= 1

                try:
                    time.sleep(server.delay_s)
                    if action is HANG:
                        server.release.wait(10)  # far beyond the client's timeout; bounded anyway
                        return
                    if action is DROP:
                        return  # close without a status line
                    _, status, payload, headers = action
                    finished()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up first
                finally:
                    finished()

            def log_message(self, *args):
                pass

        return Handler


pytestmark = pytest.mark.usefixtures("no_proxy")  # tests/conftest.py


@pytest.fixture
def server():
    s = ScriptedServer()
    s.thread.start()
    yield s
    s.release.set()
    s.httpd.shutdown()
    s.httpd.server_close()
    s.thread.join(5)


def backend(server: ScriptedServer, **kw) -> OpenAIBackend:
    opts = dict(model="test-model", concurrency=1, timeout_s=2.0, max_retries=3, backoff_s=0.01)
    opts.update(kw)
    return OpenAIBackend(server.base_url, **opts)


def ask(prompt: str, **sampling) -> ChatRequest:
    return ChatRequest.chat([{"role": "system", "content": "be brief"}, {"role": "user", "content": prompt}], **sampling)


def test_order_preserved_with_concurrency_and_payload_fields(server):
    server.delay_s = 0.05  # long enough for requests to overlap
    prompts = [f"prompt {i}" for i in range(16)]
    out = backend(server, concurrency=4).generate([ask(p, temperature=0.7, top_p=0.9, max_tokens=33) for p in prompts])

    assert [c.text for c in out] == [f"echo: {p}" for p in prompts]
    assert all(c.finish_reason == "stop" and not c.cached for c in out)
    assert 2 <= server.max_in_flight <= 4
    body = server.requests[0]
    assert body["model"] == "test-model"
    assert body["messages"][0] == {"role": "system", "content": "be brief"}
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.7, 0.9, 33)
    assert isinstance(body["seed"], int) and 0 <= body["seed"] < 2**31
    assert server.auth_headers[0] is None  # no key configured, no header


def test_seed_differs_per_sample_and_is_stable():
    b = OpenAIBackend("http://127.0.0.1:9/v1", "m")
    seeds = [b.payload(ask("same", temperature=1.0, sample_index=i))["seed"] for i in range(3)]
    assert len(set(seeds)) == 3
    assert b.payload(ask("same", temperature=1.0, sample_index=0))["seed"] == seeds[0]


def test_send_seed_false_sends_no_seed_and_keeps_the_cache_key(server, tmp_path):
    """roles.<role>.send_seed: false (a server that fails seeded requests): no body carries a seed, the walk's
    neither; a cache key stays what it was (the seed still picks the sample the cache keeps)."""
    from evolforge.llm.backends.openai.walk import walk_body

    fields = {"backend": "openai", "model": "test-model", "base_url": server.base_url, "max_retries": 0}
    unseeded = Role.from_params("evolver", {**fields, "send_seed": False})
    sampled = ask("p", temperature=0.8, sample_index=2)
    assert open_llm(unseeded, None).key(sampled) == open_llm(Role.from_params("evolver", fields), None).key(sampled)
    llm = open_llm(unseeded, CallCache(tmp_path / "c.sqlite"))
    assert llm.complete([sampled, ask("q")]) == ["echo: p", "echo: q"]
    assert [("seed" in body) for body in server.requests] == [False, False]
    backend = OpenAIBackend.from_role(unseeded)
    assert "seed" not in walk_body(ask("r", choices=("a", "b"), rank=True), "m", "vllm", None, 5, backend.send_seed)
    assert walk_body(ask("r", choices=("a", "b"), rank=True), "m", "vllm", None, 5)["seed"] == 0


@pytest.mark.parametrize(
    "fault",
    [
        reply(429, {"error": "slow down"}),
        reply(500, "internal error"),
        reply(503, "overloaded"),
        HANG,
        DROP,
        reply(200, "this is not json"),
        reply(200, {"object": "chat.completion"}),
        reply(200, {"choices": []}),
        reply(200, {"choices": [{"message": {"content": None}}]}),
    ],
    ids=["429", "500", "503", "timeout", "dropped", "non-json", "no-choices", "empty-choices", "null-content"],
)
def test_recovers_from_transient_failures(server, fault):
    server.script("flaky", fault, fault)
    start = time.monotonic()
    out = backend(server, timeout_s=0.3, max_retries=3).generate([ask("flaky"), ask("steady")])
    assert [c.text for c in out] == ["echo: flaky", "echo: steady"]
    assert server.count("flaky") == 3  # two failures, then success
    assert time.monotonic() - start < 2.0


def test_retry_after_is_honoured(server):
    server.script("throttled", reply(429, "wait", {"Retry-After": "1"}))
    start = time.monotonic()
    out = backend(server, backoff_s=0.01).generate([ask("throttled")])
    assert out[0].text == "echo: throttled"
    assert time.monotonic() - start >= 0.9  # waited what the server asked, not the 10 ms backoff
    assert server.count("throttled") == 2


def test_gives_up_after_max_retries_as_that_items_failure(server):
    server.script("doomed", *[reply(503, "overloaded " + "x" * 5000)] * 3)
    out = backend(server, max_retries=2).generate([ask("doomed"), ask("fine")])
    assert out[1].text == "echo: fine" and not out[1].failed
    failure = out[0]
    assert failure.failure_reason == "retries_exhausted" and failure.text == ""
    # one cause for the three attempts it ended, the server's words kept (up to CAUSE_CHARS), not dumped whole
    assert failure.error.startswith("3 attempts: HTTP 503: 'overloaded xxx") and failure.error.count("overloaded") == 1
    assert "x" * 1500 in failure.error and "x" * 2500 not in failure.error
    assert server.count("doomed") == 3


def test_every_attempts_cause_is_kept_and_a_500_reaches_the_stages_error(server, tmp_path):
    """A server that answers 500 (vLLM's CPU engine on seeded batches) and then stops answering: the item's error
    names both, the server's message first, and the stage's one-line error quotes it."""
    from evolforge.config.runtime import LLMSettings
    from evolforge.llm.types import LLMFailureError

    crash = {"error": {"message": "RuntimeError: CPU Generator does not use offset", "type": "InternalServerError",
                       "code": 500}}
    server.script("seeded", reply(500, crash), DROP, DROP)
    [failed] = backend(server, max_retries=2).generate([ask("seeded")])
    assert failed.failure_reason == "retries_exhausted"
    assert failed.error.startswith("3 attempts: 1: HTTP 500: ")
    assert "CPU Generator does not use offset" in failed.error and "2-3: connection error: " in failed.error

    server.script("seeded", reply(500, crash), DROP, DROP)
    role = Role(name="evolver", backend="openai", model="test-model", settings=OpenAISettings(
        base_url=server.base_url, max_retries=2, backoff_s=0.01, concurrency=1))
    llm = open_llm(role, CallCache(tmp_path / "c.sqlite"), settings=LLMSettings(max_failure_rate=0.0))
    with pytest.raises(LLMFailureError, match=r"First failure: retries_exhausted: 3 attempts: 1: HTTP 500: .*CPU "
                                              r"Generator does not use offset.*; 2-3: connection error"):
        llm.generate([ask("seeded")])  # past the threshold at its end
        llm.account.raise_failures()


def test_timeouts_exhaust_retries(server):
    server.always = HANG
    out = backend(server, timeout_s=0.2, max_retries=1).generate([ask("stuck")])
    assert out[0].failure_reason == "retries_exhausted"
    assert "2 attempts: no response within 0.2s" in out[0].error
    assert server.count() == 2


def test_connection_refused_is_retried_then_recorded():
    probe = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = probe.server_address[1]
    probe.server_close()  # nothing listens there any more
    b = OpenAIBackend(f"http://127.0.0.1:{port}/v1", "m", max_retries=2, backoff_s=0.01, timeout_s=1)
    out = b.generate([ask("anyone?")])
    assert out[0].failure_reason == "retries_exhausted" and "3 attempts: connection error" in out[0].error


@pytest.mark.parametrize("status", [400, 413, 422])
def test_client_errors_are_that_items_rejection_without_retry(server, status):
    server.script("bad", reply(status, {"error": {"message": "nope"}}))
    out = backend(server, max_retries=5).generate([ask("bad"), ask("good")])
    assert out[0].failure_reason == "request_rejected" and f"HTTP {status}" in out[0].error and "nope" in out[0].error
    assert out[1].text == "echo: good"
    assert server.count("bad") == 1


def test_a_context_length_400_is_prompt_too_long(server):
    message = "This model's maximum context length is 2048 tokens. However, you requested 2100 tokens."
    server.script("long", reply(400, {"error": {"message": message}}))
    out = backend(server).generate([ask("long")])
    assert out[0].failure_reason == "prompt_too_long" and "maximum context length" in out[0].error


@pytest.mark.parametrize("status", [401, 403, 404])
def test_errors_that_concern_every_request_stop_the_run(server, status):
    server.always = reply(status, {"error": {"message": "nope"}})
    with pytest.raises(LLMRequestError, match=rf"HTTP {status}.*every request would fail"):
        backend(server, max_retries=5).generate([ask("bad")])
    assert server.count() == 1


def test_a_fatal_status_abandons_the_rest(server):
    server.always = reply(401, "unauthorized")
    with pytest.raises(LLMRequestError, match="HTTP 401"):
        backend(server, concurrency=2).generate([ask(f"p{i}") for i in range(20)])
    assert server.count() <= 2  # only the requests already in flight reached the server


def test_api_key_is_sent_but_never_exposed(server, monkeypatch, caplog):
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("EVOLFORGE_TEST_API_KEY", secret)
    role = Role(name="judge", backend="openai", model="test-model",
                settings=OpenAISettings(base_url=server.base_url, api_key_env="EVOLFORGE_TEST_API_KEY", max_retries=1,
                                        backoff_s=0.01))
    b = OpenAIBackend.from_role(role)

    assert b.generate([ask("hi")])[0].text == "echo: hi"
    assert server.auth_headers == [f"Bearer {secret}"]
    assert b.identity() == {"served_model": "test-model"}  # never the URL
    assert secret not in repr(b) and secret not in str(b) and secret not in repr(vars(b))

    # A server that echoes the key back (first in a retried 500, then in a 401) must not leak it.
    server.always = None
    server.script("leak", reply(500, f"bad key {secret}"), reply(401, f"invalid api key {secret}"))
    with caplog.at_level(logging.DEBUG, logger="evolforge"), pytest.raises(LLMRequestError) as info:
        b.generate([ask("leak")])
    assert "HTTP 401" in str(info.value) and "invalid api key" in str(info.value)
    assert secret not in str(info.value) and secret not in repr(info.value)
    assert "HTTP 500" in caplog.text and secret not in caplog.text
    # a key over plain HTTP to a host that is not loopback gets a warning; loopback does not
    assert "plain HTTP" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="evolforge"):
        OpenAIBackend("http://10.1.2.3:8000/v1", "m", api_key=secret)
    assert "plain HTTP" in caplog.text and secret not in caplog.text


def test_missing_api_key_env_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("EVOLFORGE_MISSING_KEY", raising=False)
    role = Role(name="evolver", backend="openai", model="m",
                settings=OpenAISettings(base_url="http://127.0.0.1:9/v1", api_key_env="EVOLFORGE_MISSING_KEY"))
    with pytest.raises(ValueError, match="EVOLFORGE_MISSING_KEY.*not set"):
        OpenAIBackend.from_role(role)


def test_from_role_needs_base_url():
    with pytest.raises(ValueError, match="base_url"):
        OpenAIBackend.from_role(Role(name="evolver", backend="openai", model="m"))


def test_identity_includes_revision_when_set():
    b = OpenAIBackend("http://127.0.0.1:9/v1/", "org/model", revision="abc123")
    assert b.identity() == {"served_model": "org/model", "revision": "abc123"}
    assert b.generate([]) == []


def test_through_llm_and_call_cache(server, tmp_path):
    role = Role.from_params("evolver", {"backend": "openai", "model": "test-model", "base_url": server.base_url,
                                        "concurrency": 3, "timeout_s": 2, "max_retries": 1})
    requests = [ask(f"q{i}") for i in range(7)] + [ask("q0")]  # one duplicate

    cache = CallCache(tmp_path / "cache.sqlite")
    first = open_llm(role, cache)
    assert first.complete(requests) == [f"echo: q{i}" for i in range(7)] + ["echo: q0"]
    assert server.count() == 7  # the duplicate is generated once
    cache.close()

    cache = CallCache(tmp_path / "cache.sqlite")
    second = open_llm(role, cache)
    out = second.generate(requests)
    assert [c.text for c in out] == [f"echo: q{i}" for i in range(7)] + ["echo: q0"]
    assert all(c.cached for c in out)
    assert server.count() == 7  # no new calls
    assert (second.stats["calls"], second.stats["cache_hits"]) == (0, 8)
    cache.close()


@pytest.mark.parametrize("settings, where", [
    ({"base_url": "http://user:pw@host/v1"}, "roles.optimizer.base_url"),
    ({"base_url": "http://host/v1?api_key=sk-1"}, "roles.optimizer.base_url"),
    ({"extra": {"Authorization_header": "Bearer sk-1"}}, "roles.optimizer.extra.Authorization_header"),
])
def test_secrets_in_a_role_are_refused(settings, where):
    with pytest.raises(ValueError, match=f"params.yaml {where}"):
        Role.from_params("optimizer", {"backend": "openai", "model": "m", **settings})


def test_secrets_in_evaluation_backend_args_are_refused():
    refuse_secrets("evaluate.backend_args", "http://host/v1/chat", {"base_url": "http://host/v1/chat"},
                   "evaluate.backend_args")  # a plain URL passes
    with pytest.raises(ValueError, match="evaluate.backend_args.base_url"):
        refuse_secrets("evaluate.backend_args", "http://u:pw@host/v1", {}, "evaluate.backend_args")
    with pytest.raises(ValueError, match="evaluate.backend_args.api_key"):
        refuse_secrets("evaluate.backend_args", None, {"api_key": "sk-1"}, "evaluate.backend_args")


# llama-cpp-python's answer to a response_format it does not take: HTTP 500, pydantic's wording, the request quoted
# in full before the point (cut at 300 characters, the message would lose the setting to change)
_VALIDATION_500 = {"error": {"message": (
    "1 validation error for CreateChatCompletionRequest\nresponse_format.type\n  Input should be 'text' or "
    "'json_object' [type=literal_error, input_value='json_schema', input_type=str]\n    For further information "
    "visit https://errors.pydantic.dev/2.11/v/literal_error; request: " + json.dumps(
        {"messages": [{"role": "user", "content": "Rate the difficulty of this question. " * 20}],
         "response_format": {"type": "json_schema"}})), "type": "internal_server_error"}}


def test_a_refusal_keeps_the_servers_message_whole_and_names_the_setting(server, tmp_path):
    from evolforge.llm.accounting import stage_accounting
    from evolforge.llm.types import LLMFailureError

    server.always = reply(500, _VALIDATION_500)
    judge = OpenAIBackend(server.base_url, "test-model", concurrency=1, max_retries=3, backoff_s=0.01,
                          role_name="judge")
    [failed] = judge.generate([ask("Easy or hard?", choices=("easy", "hard"))])
    assert failed.failure_reason == "request_rejected" and server.count() == 1  # not retried
    assert failed.error.startswith("HTTP 500 (a validation error: not retried); this server does not take "
                                   "response_format json_schema: set roles.judge.server to what it is")
    assert "roles.judge.choice_format: none" in failed.error
    assert "errors.pydantic.dev" in failed.error and "Rate the difficulty of this question. " * 20 in failed.error
    assert len(failed.error) > 1000  # whole: no 300-character cut
    # a 400 with the same wording: the whole message and the setting too
    server.always = reply(400, _VALIDATION_500)
    [rejected] = judge.generate([ask("Easy or hard?", choices=("easy", "hard"))])
    assert rejected.error.startswith("HTTP 400: ") and rejected.error.endswith("or roles.judge.choice_format: none")
    # the stage's message, when the failures pass llm.max_failure_rate, carries it
    role = Role(name="judge", backend="openai", model="test-model",
                settings=OpenAISettings(base_url=server.base_url, max_retries=0))
    llm = open_llm(role, CallCache(tmp_path / "c.sqlite"), identity={"served_model": "test-model"})
    llm._backend = judge
    server.always = reply(500, _VALIDATION_500)
    llm.generate([ask(f"Easy or hard? {i}", choices=("easy", "hard")) for i in range(4)])
    with pytest.raises(LLMFailureError, match=r"First failure: request_rejected: HTTP 500 .*set roles\.judge\.server"
                                              r".*roles\.judge\.choice_format: none"):
        stage_accounting().check()  # at the stage's end


def test_llama_cpp_pythons_refusal_of_log_probabilities_says_how_to_start_it(server):
    server.always = reply(500, {"error": {"message": "logprobs is not supported for models created with "
                                                     "logits_all=False", "type": "internal_server_error"}})
    judge = OpenAIBackend(server.base_url, "test-model", concurrency=1, max_retries=3, backoff_s=0.01)
    judge.server = "llamacpp"
    [failed] = judge.generate([ask("Easy or hard?", choices=("easy", "hard"), rank=True)])
    assert failed.failure_reason == "request_rejected" and server.count() == 1  # not retried: the same every time
    assert "started with --logits_all true" in failed.error and "judge.probabilities: false" in failed.error
