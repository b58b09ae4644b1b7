"""Spend caps (``llm.budget``) against the local fake OpenAI-compatible server with a price set: a capped
call stops at or under its cap, the rest are ``budget_exhausted`` (never cached), nothing received is lost,
a rerun with a raised cap ends with exactly the uncapped answers; batch jobs are cut to the cap before they
are submitted; the spend is recorded in the cache database (cumulative caps, plan observations)."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest

from evolforge.llm.cache import CallCache
from evolforge.config.bounds import ParamsError
from evolforge.config.loader import load_section
from evolforge.config.roles import Role
from evolforge.llm.requests import role_request
from evolforge.config.runtime import LLMSettings
from evolforge.llm.cached import open_llm
from evolforge.llm.budget import BUDGET_EXHAUSTED, BudgetExhaustedError, SpendLedger, caps_for
from fake_openai import FakeOpenAIServer, chat_body

pytestmark = pytest.mark.usefixtures("no_proxy")  # tests/conftest.py

PRICES = {"price_per_mtok_prompt": 1000.0, "price_per_mtok_completion": 3000.0}  # 1e-3 / 3e-3 per token


def reply(body: dict):
    """A deterministic answer of 3..12 words; usage counts words (well under the gate's byte bound)."""
    prompt = " ".join(m["content"] for m in body["messages"])
    digest = hashlib.sha256(prompt.encode()).hexdigest()
    text = " ".join(digest[i : i + 4] for i in range(0, 4 * (3 + int(digest[0], 16) % 10), 4))
    return 200, chat_body(text, len(prompt.split()) + 3, len(text.split())), {}


def role(server: FakeOpenAIServer, **kw) -> Role:
    fields = {"backend": "openai", "model": "test-model", "base_url": server.base_url, "concurrency": 4,
              "timeout_s": 5, "max_retries": 1, "max_tokens": 16, "backoff_s": 0.01, **PRICES}
    fields.update(kw)
    return Role.from_params("evolver", fields)


def requests(llm, n: int = 40) -> list:
    return [llm.request([{"role": "user", "content": f"rewrite task number {i} " + "with care " * (i % 5)}])
            for i in range(n)]


def settings(**budget) -> LLMSettings:
    return load_section({"llm": {"budget": budget}}, "llm", LLMSettings)


def texts(outs) -> list:
    return [None if c.failed else c.text for c in outs]


def stored(path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]


def test_a_cap_at_half_the_cost_stops_under_it_and_a_raised_cap_finishes_as_uncapped(tmp_path):
    with FakeOpenAIServer(reply) as server:
        free = open_llm(role(server), CallCache(tmp_path / "free.sqlite"), identity={"served_model": "test-model"})
        uncapped = texts(free.generate(requests(free)))
        full_cost = free.stats["cost"]
        cap = full_cost / 2

        cache = CallCache(tmp_path / "capped.sqlite")
        capped = open_llm(role(server), cache, identity={"served_model": "test-model"},
                          settings=settings(run={"cost": cap}))
        with pytest.raises(BudgetExhaustedError) as err:
            capped.generate(requests(capped))
        message = str(err.value)
        assert "llm.budget.run.cost" in message and "Raise llm.budget.run.cost" in message and BUDGET_EXHAUSTED in message
        assert 0 < capped.stats["cost"] <= cap
        unsent = capped.stats["failed_by_reason"][BUDGET_EXHAUSTED]
        assert unsent > 0 and capped.stats["calls"] + unsent == 40
        assert stored(tmp_path / "capped.sqlite") == capped.stats["calls"]  # every answer received is kept
        sent_before = server.answered

        again = open_llm(role(server), cache, identity={"served_model": "test-model"},
                         settings=settings(run={"cost": full_cost * 2}))
        assert texts(again.generate(requests(again))) == uncapped
        assert server.answered - sent_before == unsent  # only what the cap kept back was sent


def test_role_token_caps_and_cumulative_caps_count_the_cache_databases_record(tmp_path):
    with FakeOpenAIServer(reply) as server:
        cache = CallCache(tmp_path / "c.sqlite")
        first = open_llm(role(server), cache, identity={"served_model": "test-model"})
        first.generate(requests(first, 10))
        spent = SpendLedger(tmp_path / "c.sqlite").spent(role="evolver")
        assert spent.calls == 10 and spent.tokens == first.stats["prompt_tokens"] + first.stats["completion_tokens"]
        assert spent.cost == pytest.approx(first.stats["cost"])

        # the role's cumulative cap is already nearly spent by the first run: the second sends only what fits
        limit = spent.tokens + 200
        capped = open_llm(role(server), cache, identity={"served_model": "test-model"},
                          settings=settings(roles={"evolver": {"total": {"tokens": limit}}}))
        with pytest.raises(BudgetExhaustedError, match=r"llm\.budget\.roles\.evolver\.total\.tokens"):
            capped.generate(requests(capped, 40))
        assert SpendLedger(tmp_path / "c.sqlite").spent(role="evolver").tokens <= limit
        assert capped.stats["failed_by_reason"][BUDGET_EXHAUSTED] > 0


def test_a_cost_cap_does_not_stop_a_role_without_prices_but_a_token_cap_does(tmp_path):
    with FakeOpenAIServer(reply) as server:
        unpriced = role(server, price_per_mtok_prompt=None, price_per_mtok_completion=None)
        assert caps_for(settings(run={"cost": 0.0}), unpriced) == []
        llm = open_llm(unpriced, CallCache(tmp_path / "c.sqlite"), identity={"served_model": "test-model"},
                       settings=settings(run={"cost": 0.0}))
        assert all(not c.failed for c in llm.generate(requests(llm, 5)))
        tight = open_llm(unpriced, CallCache(tmp_path / "d.sqlite"), identity={"served_model": "test-model"},
                         settings=settings(run={"tokens": 10}))
        with pytest.raises(BudgetExhaustedError, match="0 tokens"):
            tight.generate(requests(tight, 5))
        assert server.answered == 5  # the tight cap sent nothing


def test_batch_jobs_are_submitted_only_for_what_fits_the_cap(tmp_path):
    with FakeOpenAIServer(reply) as server:
        batch = {"batch_api": True, "batch_poll_s": 0.01, "concurrency": 2}
        free = open_llm(role(server, **batch), CallCache(tmp_path / "free.sqlite"), identity={"served_model": "test-model"})
        uncapped = texts(free.generate(requests(free, 20)))
        cap = free.stats["cost"] / 2
        submitted_before = len(server.batches)

        cache = CallCache(tmp_path / "c.sqlite")
        capped = open_llm(role(server, **batch), cache, identity={"served_model": "test-model"},
                          settings=settings(total={"cost": cap}))
        with pytest.raises(BudgetExhaustedError):
            capped.generate(requests(capped, 20))
        assert capped.stats["cost"] <= cap
        jobs = list(server.batches.values())[submitted_before:]
        lines = sum(len(server.files[job["input_file_id"]].splitlines()) for job in jobs)
        assert lines == capped.stats["calls"] < 20  # no job held a request the cap kept back

        again = open_llm(role(server, **batch), cache, identity={"served_model": "test-model"},
                         settings=settings(total={"cost": cap * 4}))
        assert texts(again.generate(requests(again, 20))) == uncapped


def test_budget_settings_are_typed():
    with pytest.raises(ParamsError, match=r"llm\.budget\.run\.dollars: unknown key"):
        load_section({"llm": {"budget": {"run": {"dollars": 5}}}}, "llm", LLMSettings)
    with pytest.raises(ParamsError, match=r"llm\.budget\.roles\.evolver\.total\.tokens"):
        load_section({"llm": {"budget": {"roles": {"evolver": {"total": {"tokens": -1}}}}}}, "llm", LLMSettings)
    assert load_section({}, "llm", LLMSettings).budget == {}


def test_the_report_shows_cost_per_role_per_surviving_and_per_selected_item(tmp_path):
    import json

    import polars as pl

    from evolforge.io.records import write_output
    from evolforge.report.collect import collect
    from evolforge.report.page import render
    from report_fixture import REPORT

    (tmp_path / "metrics/evolve").mkdir(parents=True)
    (tmp_path / "metrics/evolve/round_1.json").write_text(json.dumps(
        {"llm": {"evolver": {"calls": 10, "prompt_tokens": 1000, "completion_tokens": 500, "cost": 3.0}}}))
    (tmp_path / "metrics/respond.json").write_text(json.dumps(
        {"llm": {"responder": {"calls": 8, "prompt_tokens": 800, "completion_tokens": 400, "cost": 1.0}}}))
    write_output(tmp_path / "data/clean", pl.DataFrame({"id": ["a", "b", "c", "d", "e"], "round": [1] * 5,
                                                        "failure_reason": [None, None, None, None, "duplicate"]}))
    write_output(tmp_path / "data/selected", pl.DataFrame({"id": ["a", "b"], "round": [1, 1]}))
    s = collect(REPORT.under(tmp_path))["spend"]
    assert s["cost"] == 4.0 and s["tokens"] == 2700 and s["roles"]["evolver"]["calls"] == 10
    assert s["surviving"] == 4 and s["cost_per_surviving"] == 1.0 and s["cost_per_selected"] == 2.0
    page = render([("v", collect(REPORT.under(tmp_path)))])
    assert "LLM spend" in page and "per selected item (2) 2" in page


def test_prompt_tokens_without_a_tokenizer_and_stand_ins_of_a_dry_run(tmp_path):
    from evolforge.llm.budget import Usage
    from evolforge.llm.backends.dryrun import PromptCounter, stand_in

    unknown = Role.from_params("evolver", {"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:1/v1"})
    request = role_request(unknown, [{"role": "user", "content": "x" * 400}])
    guess = PromptCounter(unknown)
    assert guess.how == "bytes/4" and guess.count(request) == 100 + 4
    ledger = SpendLedger(tmp_path / "c.sqlite")
    ledger.add("evolver", "evolve", Usage(calls=2, prompt_tokens=300, prompt_bytes=1000))
    seen = PromptCounter(unknown, ledger)
    assert seen.how == "observed ratio" and seen.count(request) == 120
    samples = ["an answer", "another"]
    free = stand_in(samples, "ab" * 32, request)
    assert free.startswith(samples[int("abababab", 16) % 2]) and free != stand_in(samples, "cd" * 32, request)
    choice = role_request(unknown, [{"role": "user", "content": "pick"}], choices=("Yes", "No"))
    assert stand_in(["Yes"], "ab" * 32, choice) == "Yes"  # a constrained answer stays parseable


def test_the_progress_bar_shows_spend_so_far_and_projected(tmp_path):
    from evolforge.llm.budget import Gate, Usage

    priced_role = Role.from_params("evolver", {"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:1/v1",
                                               **PRICES})
    gate = Gate(priced_role, "evolve", [], None, total_requests=40)
    assert gate.postfix() == ""
    gate.spent.add(Usage(calls=10, prompt_tokens=1500, completion_tokens=500, cost=3.0))
    assert gate.postfix() == "2.0k tok cost 3, projected 8.0k tok cost 12"
