"""RoleLLMs: the roles a stage parsed, each opened when its step first asks for it, all on one call cache."""

from __future__ import annotations

import pytest

from evolforge.config.runtime import load_llm_params
from evolforge.llm.backends.fake import FakeBackend
from evolforge.llm.cached import LLM
from evolforge.steps.common.llms import RoleLLMs

ROLES = {"roles": {name: {"backend": "hf", "model": "fake"} for name in ("evolver", "judge")}}


@pytest.fixture
def opened(monkeypatch, tmp_path):
    """The (role name, cache) of every open_role call; each role opens as a fake LLM."""
    calls = []

    def open_role(role, cache, settings):
        calls.append((role.name, cache))
        return LLM(FakeBackend(), cache, role=role, settings=settings)

    monkeypatch.setattr("evolforge.steps.common.llms.open_role", open_role)
    monkeypatch.setenv("EVOLFORGE_CACHE", str(tmp_path / "calls.sqlite"))
    return calls


def test_a_role_opens_once_on_first_use_and_all_share_one_cache(opened):
    llms = RoleLLMs(load_llm_params(ROLES, ("evolver", "judge")))
    assert opened == [] and "judge" in llms and "responder" not in llms and opened == []  # asking does not open
    assert sorted(llms) == ["evolver", "judge"] and len(llms) == 2
    judge = llms["judge"]
    assert llms["judge"] is judge and [name for name, _ in opened] == ["judge"]  # opened once
    llms["evolver"]
    assert [name for name, _ in opened] == ["judge", "evolver"] and opened[0][1] is opened[1][1] is llms.cache
    assert llms.role("evolver").model == "fake" and llms.settings == load_llm_params(ROLES, ()).llm


def test_a_stage_that_parsed_no_role_opens_none(opened):
    llms = RoleLLMs(None)
    assert len(llms) == 0 and list(llms) == [] and "judge" not in llms
    with pytest.raises(KeyError, match="parsed no role"):
        llms["judge"]
    assert opened == []


def test_a_role_the_stage_did_not_parse_is_refused(opened):
    llms = RoleLLMs(load_llm_params(ROLES, ("evolver",)))
    with pytest.raises(KeyError):
        llms["judge"]
    assert opened == []
