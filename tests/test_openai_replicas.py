"""One openai role served by several replicas of one model (``base_urls``): a replica that fails for a
while is taken out and its requests go to the others, with the same outputs, seeds and cache as one
server; all replicas down ends in per-item ``retries_exhausted``; replicas of different models are
refused. Loopback servers only (tests/fake_openai.py)."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from evolforge.llm.cache import CallCache
from evolforge.core.models import ModelError
from evolforge.config.bounds import ParamsError
from evolforge.config.roles import Role
from evolforge.llm.requests import role_request
from evolforge.config.runtime import LLMSettings
from evolforge.llm.cached import open_llm
from evolforge.llm.backends.openai.client import OpenAIBackend
from evolforge.llm.backends.openai.served import served_model_identity, wait_until_serving
from fake_openai import FakeOpenAIServer, chat_body


pytestmark = pytest.mark.usefixtures("no_proxy")  # tests/conftest.py


def seeded_reply(body: dict):
    """The reply depends on everything a replica is sent (prompt, sampling, seed), as a sampling server's would."""
    text = f"{body['messages'][-1]['content']} | t={body['temperature']} seed={body['seed']}"
    return 200, chat_body(text, 10, 5), {}


def role(urls: list[str], **kw) -> Role:
    fields = {"backend": "openai", "model": "test-model", "concurrency": 2, "timeout_s": 5, "max_retries": 8,
              "backoff_s": 0.05}
    fields.update({"base_url": urls[0]} if len(urls) == 1 else {"base_urls": urls})
    fields.update(kw)
    return Role.from_params("evolver", fields)


def stage_requests(llm) -> list:
    """24 requests of one stage: sampled, repeated samples of one prompt, and a duplicate."""
    reqs = [llm.request([{"role": "user", "content": f"task {i:02d}"}], temperature=0.8, sample_index=i % 3)
            for i in range(24)]
    return reqs + [reqs[5]]


def cache_rows(path) -> dict[str, tuple]:
    with sqlite3.connect(path) as db:
        return {k: (t, f, m) for k, t, f, m in db.execute("SELECT key, text, finish, model FROM completions")}


def closed_port() -> int:
    probe = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = probe.server_address[1]
    probe.server_close()  # nothing listens there any more
    return port


@pytest.mark.parametrize("fail_status", [503, None], ids=["http-503", "dropped-connection"])
def test_a_failing_replica_changes_nothing_in_the_outputs_or_the_cache(tmp_path, fail_status):
    with FakeOpenAIServer(seeded_reply) as one:
        single = open_llm(role([one.base_url]), CallCache(tmp_path / "one.sqlite"))
        expected = single.generate(stage_requests(single))
    assert not any(c.failed for c in expected)

    with FakeOpenAIServer(seeded_reply) as flaky, FakeOpenAIServer(seeded_reply) as healthy:
        flaky.fail_first, flaky.fail_status = 6, fail_status
        llm = open_llm(role([flaky.base_url, healthy.base_url]), CallCache(tmp_path / "two.sqlite"))
        out = llm.generate(stage_requests(llm))
        assert flaky.failed >= 2  # it did fail (until the run ended or it came back), and those requests went elsewhere
        assert flaky.answered + healthy.answered == 24  # each distinct request answered once: none lost, none twice
        assert healthy.answered > 0

    assert [c.text for c in out] == [c.text for c in expected]
    assert not any(c.failed for c in out) and llm.stats["failures"] == 0
    assert llm.stats["calls"] == 24  # the duplicate request is generated once
    assert cache_rows(tmp_path / "two.sqlite") == cache_rows(tmp_path / "one.sqlite")  # same keys: no URL in them


def test_when_every_replica_is_down_requests_wait_for_the_first_back(tmp_path):
    with FakeOpenAIServer(seeded_reply) as a, FakeOpenAIServer(seeded_reply) as b:
        a.fail_until = b.fail_until = time.monotonic() + 0.4  # both answer 503 for 0.4 s
        llm = open_llm(role([a.base_url, b.base_url], max_retries=12), CallCache(tmp_path / "c.sqlite"))
        out = llm.generate(stage_requests(llm))
        assert a.failed + b.failed > 0
        assert a.answered + b.answered == 24
    assert not any(c.failed for c in out)


def test_a_replica_taken_out_stays_out_in_the_next_call(tmp_path):
    """Health lasts across a backend's generate calls (a stage's evolve call, then its check call): the
    second call sends nothing to a replica still in its cool-down."""
    with FakeOpenAIServer(seeded_reply) as down, FakeOpenAIServer(seeded_reply) as up:
        down.fail_until = time.monotonic() + 60  # 503 throughout
        llm = open_llm(role([down.base_url, up.base_url], backoff_s=5.0), CallCache(tmp_path / "c.sqlite"))
        first = llm.generate(stage_requests(llm))
        failed_before = down.failed
        second = llm.generate([llm.request([{"role": "user", "content": f"check {i}"}]) for i in range(8)])
        assert failed_before > 0 and down.failed == failed_before and down.answered == 0
    assert not any(c.failed for c in first + second) and up.answered == 24 + 8


def test_all_replicas_down_ends_in_retries_exhausted_items_not_a_crash(tmp_path):
    urls = [f"http://127.0.0.1:{closed_port()}/v1", f"http://127.0.0.1:{closed_port()}/v1"]
    llm = open_llm(role(urls, max_retries=2, backoff_s=0.01), CallCache(tmp_path / "c.sqlite"),
                   settings=LLMSettings(max_failure_rate=1.0))
    start = time.monotonic()
    out = llm.generate(stage_requests(llm))
    assert time.monotonic() - start < 5
    assert {c.failure_reason for c in out} == {"retries_exhausted"}
    # every attempt's cause, each naming the replica that failed it (the same cause once for the attempts it ended)
    assert all(c.error.startswith("3 attempts: ") and "connection error" in c.error for c in out)
    assert all(c.error.count("http://127.0.0.1:") == c.error.count("connection error") for c in out)
    assert llm.stats["failed_by_reason"] == {"retries_exhausted": 25}
    assert len(CallCache(tmp_path / "c.sqlite")) == 0  # failures are never cached


def test_each_replica_gets_at_most_its_concurrency():
    in_flight: dict[int, int] = {}
    peak: dict[int, int] = {}
    lock = threading.Lock()

    def slow(port):
        def reply(body):
            with lock:
                in_flight[port] = in_flight.get(port, 0) + 1
                peak[port] = max(peak.get(port, 0), in_flight[port])
            time.sleep(0.05)
            with lock:
                in_flight[port] -= 1
            return seeded_reply(body)
        return reply

    servers = [FakeOpenAIServer(None) for _ in range(2)]
    for s in servers:
        s.reply = slow(s.port)
    with servers[0], servers[1]:
        backend = OpenAIBackend([s.base_url for s in servers], "test-model", concurrency=3, timeout_s=5)
        out = backend.generate([role_request(Role(name="r", backend="openai", model="m"), [{"role": "user", "content": f"q{i}"}])
                                for i in range(24)])
    assert [c.text.split(" |")[0] for c in out] == [f"q{i}" for i in range(24)]
    assert set(peak) == {s.port for s in servers}  # both served
    assert max(peak.values()) <= 3 and sum(peak.values()) > 3  # per replica bounded, together wider


def models(root: str, max_model_len: int = 2048) -> tuple[dict, ...]:
    return ({"id": "test-model", "root": root, "max_model_len": max_model_len, "created": time.time_ns()},)


def test_replicas_must_serve_the_same_model():
    with FakeOpenAIServer(seeded_reply, models("/models/a")) as a, \
         FakeOpenAIServer(seeded_reply, models("/models/a")) as same, \
         FakeOpenAIServer(seeded_reply, models("/models/b")) as other, \
         FakeOpenAIServer(seeded_reply, ("another-model",)) as missing:
        single = served_model_identity(role([a.base_url]))
        assert served_model_identity(role([a.base_url, same.base_url])) == single == {"served_model": "test-model"}
        with pytest.raises(ModelError, match=r"base_urls: the replicas serve different models.*/models/b"):
            served_model_identity(role([a.base_url, same.base_url, other.base_url]))
        with pytest.raises(ModelError, match=rf"'test-model' is not served at {missing.base_url}"):
            served_model_identity(role([a.base_url, missing.base_url]))


@pytest.mark.parametrize("fields, message", [
    ({"base_url": "http://127.0.0.1:8000/v1", "base_urls": ["http://127.0.0.1:8001/v1"]}, "not both"),
    ({"base_urls": []}, "base_urls: an empty list"),
    ({"base_urls": ["http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1/"]}, r"base_urls\[1\].*listed twice"),
    ({"base_urls": ["http://127.0.0.1:8000/v1", "http://u:pw@10.0.0.2:8000/v1"]}, r"base_urls\[1\]: holds credentials"),
    ({"base_urls": ["http://127.0.0.1:8000/v1", "http://127.0.0.1:8001/v1"], "batch_api": True}, "batch_api"),
])
def test_bad_replica_settings_are_refused(fields, message):
    with pytest.raises(ParamsError, match=message):
        Role.from_params("evolver", {"backend": "openai", "model": "m", **fields})


def test_a_key_over_plain_http_to_any_remote_replica_is_warned(caplog):
    with caplog.at_level(logging.WARNING, logger="evolforge"):
        b = OpenAIBackend(["http://127.0.0.1:8000/v1", "http://10.1.2.3:8000/v1"], "m", api_key="sk-abcdef0123456789xyz")
    assert "http://10.1.2.3:8000/v1: the API key is sent over plain HTTP" in caplog.text
    assert "127.0.0.1" not in caplog.text and "sk-abc" not in caplog.text + repr(b)
    assert "base_urls=" in repr(b) and b.identity() == {"served_model": "m"}


def test_waiting_for_a_started_server(tmp_path):
    """wait_until_serving returns once GET /models answers, and names the log's end when the process exits
    first or never answers."""
    import subprocess
    import sys

    log = tmp_path / "server.log"
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with FakeOpenAIServer(seeded_reply) as server:
            wait_until_serving(server.base_url, alive, log, timeout_s=10)
        with pytest.raises(RuntimeError, match="did not answer within 1 s"):
            wait_until_serving("http://127.0.0.1:9/v1", alive, log, timeout_s=1, every_s=0.2)
    finally:
        alive.kill()
    log.write_text("loading weights\nout of memory\n")
    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    dead.wait()
    with pytest.raises(RuntimeError, match=r"exited with 3; its log .* ends:\nloading weights\nout of memory"):
        wait_until_serving("http://127.0.0.1:9/v1", dead, log, timeout_s=10)


@pytest.mark.parametrize("props, server, concurrency, in_flight", [
    ({"total_slots": 4}, "llamacpp", 8, 4),  # llama.cpp's llama-server --parallel 4
    (None, "llamacpp", 8, 1),  # llama-cpp-python's server: no /props, one request at a time
    ({"total_slots": 4}, "llamacpp", 2, 2),  # fewer asked than the server takes: as asked
    ({"total_slots": 0}, "llamacpp", 8, 8),  # nothing it could mean: as asked
    (None, "vllm", 8, 8),  # vLLM batches whatever is in flight: not asked
])
def test_in_flight_requests_are_held_to_a_llamacpp_servers_slots(props, server, concurrency, in_flight, capsys):
    """More requests in flight than a llama.cpp server decodes at once only wait in its queue, where one that
    waits past timeout_s is retried while the server still decodes the first copy."""
    from evolforge.llm.backends.openai import served

    with FakeOpenAIServer(lambda body: (200, chat_body("ok"), {})) as fake:
        fake.props = props
        served._SLOTS.clear()
        role = Role.from_params("judge", {"backend": "openai", "model": "test-model", "base_url": fake.base_url,
                                          "server": server, "concurrency": concurrency})
        backend = OpenAIBackend.from_role(role)
        assert backend.concurrency == in_flight
        assert fake.calls("GET", "/props") == (server == "llamacpp")
        said = capsys.readouterr().out
        assert (f"{in_flight} in flight, not roles.judge.concurrency {concurrency}" in said) == (in_flight < concurrency)
        assert backend.generate([role_request(role, [{"role": "user", "content": "hi"}])])[0].text == "ok"


def test_a_server_not_reachable_yet_is_asked_for_its_slots_again():
    from evolforge.llm.backends.openai import served

    served._SLOTS.clear()
    with FakeOpenAIServer(lambda body: (200, chat_body("ok"), {})) as fake:
        url = fake.base_url
    role = Role.from_params("judge", {"backend": "openai", "model": "test-model", "base_url": url,
                                      "server": "llamacpp", "concurrency": 8})
    assert served.server_slots(role) is None and url.rstrip("/") not in served._SLOTS  # the server is gone
    with FakeOpenAIServer(lambda body: (200, chat_body("ok"), {})) as fake:
        fake.props = {"total_slots": 2}
        role = Role.from_params("judge", {"backend": "openai", "model": "test-model", "base_url": fake.base_url,
                                          "server": "llamacpp", "concurrency": 8})
        assert served.server_slots(role) == 2
