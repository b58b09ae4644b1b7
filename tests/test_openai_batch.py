"""The batch API option of an openai role (``batch_api``) against a local server with the files and batches
endpoints (tests/fake_openai.py): the same results as the request-by-request path, per-item errors as item
failures, a stage stopped while it polls resumes the same job without submitting again, and results of
finished jobs committed before a stop."""

from __future__ import annotations

import json
import sqlite3

import pytest

from evolforge.llm.cache import CallCache, batch_job_key
from evolforge.config.roles import Role
from evolforge.config.runtime import LLMSettings
from evolforge.llm.cached import open_llm
from evolforge.llm.backends.openai.batch import BatchJobs, chunks
from fake_openai import FakeOpenAIServer, chat_body

REJECT = "task 04"


pytestmark = pytest.mark.usefixtures("no_proxy")  # tests/conftest.py


def reply(body: dict):
    prompt = body["messages"][-1]["content"]
    if REJECT in prompt:
        return 400, {"error": {"message": f"content policy: {REJECT} refused", "type": "invalid_request_error"}}, {}
    return 200, chat_body(f"{prompt} | t={body['temperature']} seed={body['seed']}", 10, 5), {}


def role(server: FakeOpenAIServer, **kw) -> Role:
    fields = {"backend": "openai", "model": "test-model", "base_url": server.base_url, "concurrency": 2,
              "timeout_s": 5, "max_retries": 1, "backoff_s": 0.01,
              "batch_api": True, "batch_poll_s": 0.01}
    fields.update(kw)
    return Role.from_params("evolver", fields)


def stage(llm, n: int = 7, skip_reject: bool = True) -> list:
    prompts = [f"task {i:02d}" for i in range(n) if not (skip_reject and f"task {i:02d}" == REJECT)]
    return [llm.request([{"role": "user", "content": p}], temperature=0.7, sample_index=i % 2)
            for i, p in enumerate(prompts)]


def completions(path) -> dict:
    with sqlite3.connect(path) as db:
        return {k: (t, f) for k, t, f in db.execute("SELECT key, text, finish FROM completions")}


class Stop(Exception):
    """Stands for the stage being killed while it waits for a job."""


def stop_on_poll(monkeypatch, after: int = 0) -> list[int]:
    """Make the wait between polls raise :class:`Stop` after ``after`` waits."""
    waits = [0]

    async def wait(self):
        waits[0] += 1
        if waits[0] > after:
            raise Stop
    monkeypatch.setattr(BatchJobs, "_wait_poll", wait)
    return waits


def test_batch_results_equal_the_request_path_and_lines_carry_cache_keys(tmp_path):
    with FakeOpenAIServer(reply) as server:
        plain = open_llm(role(server, batch_api=False), CallCache(tmp_path / "plain.sqlite"))
        expected = plain.complete(stage(plain))
        chats = server.chats()

        batched = open_llm(role(server), CallCache(tmp_path / "batch.sqlite"))
        requests = stage(batched)
        assert batched.complete(requests) == expected
        assert server.chats() == chats  # nothing went through /chat/completions
        assert server.calls("POST", "/v1/files") == 1 and server.calls("POST", "/v1/batches") == 1
        lines = [json.loads(line) for line in server.files["file-1"].splitlines()]
        assert [line["custom_id"] for line in lines] == sorted((batched.key(r) for r in requests),
                                                          key=[batched.key(r) for r in requests].index)
        assert {line["url"] for line in lines} == {"/v1/chat/completions"}
        assert server.batches["batch-1"]["completion_window"] == "24h"
    assert completions(tmp_path / "batch.sqlite") == completions(tmp_path / "plain.sqlite")
    job = CallCache(tmp_path / "batch.sqlite").batch_job(batch_job_key(line["custom_id"] for line in lines))
    assert (job.batch_id, job.status) == ("batch-1", "completed")


def test_a_rejected_line_is_that_items_failure_and_a_rerun_submits_only_it(tmp_path):
    lenient = LLMSettings(max_failure_rate=0.5)
    with FakeOpenAIServer(reply) as server:
        llm = open_llm(role(server), CallCache(tmp_path / "c.sqlite"), settings=lenient)
        out = llm.generate(stage(llm, skip_reject=False))
        failed = [c for c in out if c.failed]
        assert len(failed) == 1 and failed[0].failure_reason == "request_rejected"
        assert "HTTP 400" in failed[0].error and f"{REJECT} refused" in failed[0].error
        assert sum(not c.failed for c in out) == 6 and len(CallCache(tmp_path / "c.sqlite")) == 6
        assert llm.stats["failed_by_reason"] == {"request_rejected": 1}

        again = open_llm(role(server), CallCache(tmp_path / "c.sqlite"), settings=lenient)
        again.generate(stage(again, skip_reject=False))
        assert server.calls("POST", "/v1/batches") == 2
        assert len(server.batches["batch-2"]["lines"]) == 1  # only the failure went again


def test_a_stage_stopped_while_polling_resumes_the_same_job(tmp_path, monkeypatch):
    with FakeOpenAIServer(reply) as server:
        server.batch_polls = 3  # in progress for three polls
        stop_on_poll(monkeypatch, after=1)
        llm = open_llm(role(server), CallCache(tmp_path / "c.sqlite"))
        with pytest.raises(Stop):
            llm.complete(stage(llm))
        assert server.calls("POST", "/v1/batches") == 1 and len(CallCache(tmp_path / "c.sqlite")) == 0
        monkeypatch.undo()
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")

        resumed = open_llm(role(server), CallCache(tmp_path / "c.sqlite"))
        texts = resumed.complete(stage(resumed))
        assert server.calls("POST", "/v1/batches") == 1 and server.calls("POST", "/v1/files") == 1  # not again
        assert server.calls("GET", "/v1/batches/batch-1") >= 3
        assert texts == [f"task {i:02d} | t=0.7 seed={json.loads(line)['body']['seed']}"
                         for i, line in zip((0, 1, 2, 3, 5, 6), server.files["file-1"].splitlines())]


def test_results_of_finished_jobs_are_committed_before_a_stop_and_the_rest_resume(tmp_path, monkeypatch):
    with FakeOpenAIServer(reply) as server:
        server.hold = {"batch-2", "batch-3"}  # these stay in progress
        stop_on_poll(monkeypatch, after=2)
        llm = open_llm(role(server, batch_max_requests=2), CallCache(tmp_path / "c.sqlite"))
        with pytest.raises(Stop):
            llm.complete(stage(llm))  # 6 requests: three jobs of 2
        assert server.calls("POST", "/v1/batches") == 3
        assert len(CallCache(tmp_path / "c.sqlite")) == 2  # the first job's results are in the cache
        monkeypatch.undo()
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        server.hold = set()

        resumed = open_llm(role(server, batch_max_requests=2), CallCache(tmp_path / "c.sqlite"))
        out = resumed.generate(stage(resumed))
        assert server.calls("POST", "/v1/batches") == 3  # the two jobs left were polled, not submitted again
        assert sum(c.cached for c in out) == 2 and not any(c.failed for c in out)
    plain_server = FakeOpenAIServer(reply)
    with plain_server:
        plain = open_llm(role(plain_server, batch_api=False), CallCache(tmp_path / "plain.sqlite"))
        assert [c.text for c in out] == plain.complete(stage(plain))


def test_a_failed_job_fails_its_items_is_marked_and_is_submitted_anew(tmp_path):
    lenient = LLMSettings(max_failure_rate=1.0)
    with FakeOpenAIServer(reply) as server:
        server.batch_status = "failed"
        llm = open_llm(role(server), CallCache(tmp_path / "c.sqlite"), settings=lenient)
        requests = stage(llm)
        out = llm.generate(requests)
        assert {c.failure_reason for c in out} == {"request_rejected"}
        assert all("batch batch-1 failed: the input is invalid" in c.error for c in out)
        cache = CallCache(tmp_path / "c.sqlite")
        assert cache.batch_job(batch_job_key(llm.key(r) for r in requests)).status == "failed"

        server.batch_status = None
        again = open_llm(role(server), CallCache(tmp_path / "c.sqlite"), settings=lenient)
        assert not any(c.failed for c in again.generate(stage(again)))
        assert server.calls("POST", "/v1/batches") == 2
        assert cache.batch_job(batch_job_key(llm.key(r) for r in requests)).batch_id == "batch-2"


def test_batch_jobs_for_gives_each_key_to_its_newest_live_job(tmp_path):
    cache = CallCache(tmp_path / "c.sqlite")
    cache.put_batch_job("old", "batch-a", "in_progress", ["k1", "k2"])
    cache.put_batch_job("new", "batch-b", "in_progress", ["k2", "k3"])
    cache.put_batch_job("dead", "batch-c", "failed", ["k4"])
    jobs = cache.batch_jobs_for(["k1", "k2", "k3", "k4", "k5"], ("in_progress", "completed"))
    assert [(j.batch_id, j.keys) for j in jobs] in ([("batch-b", ("k2", "k3")), ("batch-a", ("k1",))],
                                                   [("batch-a", ("k1",)), ("batch-b", ("k2", "k3"))])
    cache.set_batch_status("new", "expired")
    assert [(j.batch_id, j.keys) for j in cache.batch_jobs_for(["k2", "k3"], ("in_progress",))] == [("batch-a", ("k2",))]


def test_jobs_are_cut_by_request_count_and_by_file_size():
    assert list(chunks(list(range(7)), lambda i: 10, 3, 10**6)) == [[0, 1, 2], [3, 4, 5], [6]]
    sizes = {0: 40, 1: 40, 2: 40, 3: 200, 4: 10}
    assert list(chunks(list(sizes), sizes.get, 100, 100)) == [[0, 1], [2], [3], [4]]  # 3 alone: too big for any


@pytest.mark.parametrize("limit", ["requests_per_minute", "tokens_per_minute"])
def test_pacing_with_batch_api_is_refused_not_ignored(limit):
    """A batch job is scheduled by the provider: a per-minute pace would be silently ignored, so it is an
    error naming the field (and batch_api alone, or the pace alone, is fine)."""
    from evolforge.config.bounds import ParamsError

    fields = {"backend": "openai", "model": "m", "base_url": "https://api.example.com/v1", "batch_api": True}
    with pytest.raises(ParamsError, match=rf"roles\.evolver\.{limit}: paces requests sent one by one.*batch_api: false"):
        Role.from_params("evolver", {**fields, limit: 100})
    assert Role.from_params("evolver", fields).settings.batch_api
    assert getattr(Role.from_params("evolver", {**fields, "batch_api": False, limit: 100}).settings, limit) == 100
