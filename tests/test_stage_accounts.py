"""The stage runner judges a stage's LLM failures from the accounts it is handed (evolforge.core.accounts), not by
looking the LLM layer up: an LLM's account is kept in the stage's Accounting (evolforge.llm.accounting)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from evolforge.config.roles import Role
from evolforge.config.runtime import LLMSettings
from evolforge.core import stage
from evolforge.core.accounts import STAGE, StageAccounts
from evolforge.llm.accounting import Accounting, stage_accounting
from evolforge.llm.backends.fake import FakeBackend
from evolforge.llm.cached import LLM
from evolforge.llm.requests import ChatRequest
from evolforge.llm.types import Completion, LLMFailureError

ROLE = Role.from_params("judge", {"backend": "hf", "model": "fake"})


def refusing(accounting: Accounting | None = None) -> LLM:
    """An LLM whose backend refuses every request naming "bad" (a threshold of 0.5: 2 of 3 is past it)."""
    def reply(request: ChatRequest) -> str | Completion:
        text = request.messages[-1][1]
        return Completion.failure("request_rejected", f"refused {text}") if "bad" in text else "fine"

    return LLM(FakeBackend(reply), None, role=ROLE, settings=LLMSettings(max_failure_rate=0.5), accounting=accounting)


def ask(llm: LLM, *texts: str) -> list[Completion]:
    return llm.generate([ChatRequest.chat([{"role": "user", "content": t}]) for t in texts])


@pytest.fixture
def bare_runner(monkeypatch):
    monkeypatch.setattr(stage.native, "arm", lambda name, debug=False: None)  # no crash watcher in the test process
    monkeypatch.setattr("sys.argv", ["a_stage"])
    monkeypatch.delenv("DVC_ROOT", raising=False)


def test_run_stage_judges_the_failures_of_the_accounts_it_is_handed(bare_runner, capsys):
    accounts = StageAccounts()
    llm = refusing(stage_accounting(accounts))
    # fewer than MIN_REQUESTS_TO_STOP_EARLY asked: the call itself does not stop, the stage's end does
    assert [c.failed for c in ask(llm, "bad 1", "bad 2", "good")] == [True, True, False]
    assert not STAGE.get("llm", Accounting).accounts  # kept where it was handed, not in the process's accounts

    stage.run_stage(lambda: None, "a_stage")  # the process's accounts: nothing to judge there
    with pytest.raises(SystemExit) as exit_:
        stage.run_stage(lambda: None, "a_stage", accounts=accounts)
    err = capsys.readouterr().err
    assert exit_.value.code == stage.EXIT_FAILED
    assert ("a_stage: error (LLMFailureError): roles.judge (fake): 2 of 3 requests failed (2 request_rejected), more "
            "than params.yaml llm.max_failure_rate = 0.5 allows") in err
    assert "First failure: request_rejected: refused bad 1" in err
    stage.run_stage(lambda: None, "a_stage", accounts=accounts)  # judged once: the accounts are forgotten after


def test_an_llm_opened_without_accounting_is_judged_by_the_default_runner(bare_runner, capsys):
    """What a stage script does (``run_stage(main)``): its step's LLMs report to the process's accounts."""
    llm = refusing()
    assert llm.account in stage_accounting().accounts
    with pytest.raises(SystemExit):
        stage.run_stage(lambda: ask(llm, "bad", "good", "bad again"))
    assert "2 of 3 requests failed" in capsys.readouterr().err


def test_write_writes_nothing_when_its_accounts_fail_the_stage(tmp_path):
    accounts = StageAccounts()
    llm = refusing(stage_accounting(accounts))
    ask(llm, "bad", "good", "bad again")
    args = argparse.Namespace(out=str(tmp_path / "out"), metrics=str(tmp_path / "metrics.json"))
    result = stage.Outputs(metrics={"items": 3}, message="done")
    stage.write(args, result)  # the process's accounts: this LLM is not among them
    assert Path(args.metrics).is_file()
    Path(args.metrics).unlink()
    with pytest.raises(LLMFailureError, match=r"2 of 3 requests failed"):
        stage.write(args, result, accounts=accounts)
    assert not Path(args.metrics).exists()


def test_roles_opened_together_share_one_accounting_with_an_account_each():
    accounting = Accounting()
    judge, other = refusing(accounting), refusing(accounting)
    ask(judge, "bad")
    assert accounting.accounts == [judge.account, other.account]
    assert judge.stats is judge.account.stats and judge.stats["failed_by_reason"] == {"request_rejected": 1}
    assert other.stats["failures"] == 0 and other.account.asked == 0


def test_the_stage_runner_does_not_look_the_llm_layer_up():
    source = Path(stage.__file__).read_text(encoding="utf-8")
    assert "sys.modules" not in source and "evolforge.llm" not in source.replace("evolforge.llm.accounting", "")


def test_an_llm_the_step_let_go_is_still_judged_at_the_stages_end():
    accounting = Accounting()
    ask(refusing(accounting), "bad", "good", "bad again")  # nothing holds the LLM after this line
    with pytest.raises(LLMFailureError, match=r"roles\.judge \(fake\): 2 of 3 requests failed"):
        accounting.check()
