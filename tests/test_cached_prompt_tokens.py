"""Prompt tokens a provider serves from its prompt cache (``usage.prompt_tokens_details.cached_tokens``): read,
priced at the role's ``price_per_mtok_cached_prompt``, recorded in the spend ledger, and expected by the plan."""

from __future__ import annotations

import pytest

from evolforge.config.roles import Role
from evolforge.llm.budget import SpendLedger, cost_of
from evolforge.llm.cache import CallCache
from evolforge.llm.cached import open_llm
from evolforge.plan import estimate
from fake_openai import FakeOpenAIServer, chat_body

pytestmark = pytest.mark.usefixtures("no_proxy")  # tests/conftest.py


def cached_reply(body: dict):
    out = chat_body("an answer", 1000, 10)
    out["usage"]["prompt_tokens_details"] = {"cached_tokens": 800}
    return 200, out, {}


def test_cached_prompt_tokens_are_read_priced_recorded_and_planned(tmp_path):
    prices = dict(price_per_mtok_prompt=2.0, price_per_mtok_completion=8.0, price_per_mtok_cached_prompt=0.5)
    with FakeOpenAIServer(cached_reply) as server:
        role = Role.from_params("responder", dict(backend="openai", model="test-model", base_url=server.base_url,
                                                  max_retries=0, **prices))
        llm = open_llm(role, CallCache(tmp_path / "c.sqlite"), {"served_model": "test-model"}, desc="respond")
        llm.generate([llm.request([{"role": "user", "content": f"q{i}"}]) for i in range(3)])
    assert llm.stats["prompt_tokens"] == 3000 and llm.stats["cached_prompt_tokens"] == 2400
    expected = 3 * (200 * 2.0 + 800 * 0.5 + 10 * 8.0) / 1e6  # the uncached 200, the cached 800, the answer
    assert llm.stats["cost"] == pytest.approx(expected)
    assert cost_of(role, 1000, 10, 800) < cost_of(role, 1000, 10)  # without a cached price: the prompt price
    ledger = SpendLedger(tmp_path / "c.sqlite")
    seen = ledger.spent(role="responder")
    assert (seen.calls, seen.prompt_tokens, seen.cached_prompt_tokens) == (3, 3000, 2400)
    assert seen.cost == pytest.approx(expected)

    call = {"role": "responder", "backend": "openai", "label": "respond", "requests": 2, "prompt_tokens": 2000,
            "max_tokens": 100, "counted": "tokenizer",
            "prices": {"prompt": 2.0, "completion": 8.0, "cached_prompt": 0.5}}
    row = estimate("respond", call, {}, ledger)
    assert row.cached_prompt_tokens_expected == 1600  # the share observed: 80%
    assert row.cost_expected == pytest.approx((400 * 2.0 + 1600 * 0.5 + 20 * 8.0) / 1e6)
    assert row.cost_max == pytest.approx((2000 * 2.0 + 100 * 8.0) / 1e6)  # the upper bound assumes no prompt cache
    ledger.close()
