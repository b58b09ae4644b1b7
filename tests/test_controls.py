"""Generation controls (docs/explanation/controls.md): each one is part of the cache key (requests without any keep
their keys), the hf backend honours them at decode time, and a backend that cannot honour one refuses it."""

from __future__ import annotations

import pytest

from evolforge.config.backend_settings import OpenAISettings
from evolforge.config.backend_specs import BACKEND_NAMES, SERVER_KINDS, SPECS
from evolforge.config.bounds import ParamsError
from evolforge.config.roles import Controls
from evolforge.config.roles import Role, controls_problems
from evolforge.llm.requests import ChatRequest, role_request
from evolforge.llm.cached import LLM
from evolforge.llm.types import ControlsError, refuse_ranking
from evolforge.llm.backends.fake import FakeBackend

EACH_CONTROL = [  # (a value, another value) of each control
    ({"banned_strings": ("#The Given Prompt#",)}, {"banned_strings": ("#The Given Prompt#", "Rewritten Prompt")}),
    ({"assistant_prefix": "Step 1:"}, {"assistant_prefix": "Step 1: "}),
    ({"stop": ("\n#",)}, {"stop": ("\n\n",)}),
    ({"repetition_penalty": 1.3}, {"repetition_penalty": 1.2}),
    ({"no_repeat_ngram_size": 3}, {"no_repeat_ngram_size": 4}),
    ({"frequency_penalty": 0.5}, {"frequency_penalty": -0.5}),
]


def ask(content: str = "Rewrite: name a colour.", **kw) -> ChatRequest:
    return ChatRequest.chat([{"role": "user", "content": content}], **kw)


@pytest.mark.parametrize("control,other", EACH_CONTROL)
def test_each_control_changes_the_cache_key(control, other):
    llm = LLM(FakeBackend(), None, role=Role(name="evolver", backend="hf", model="m"))
    plain = ask()
    assert llm.key(ask(controls=Controls(**control))) != llm.key(plain)
    assert llm.key(ask(controls=Controls())) == llm.key(plain)  # all unset: no control, the old key
    assert llm.key(ask(controls=Controls(**other))) != llm.key(ask(controls=Controls(**control)))


def test_a_role_without_controls_makes_requests_without_any():
    role = Role.from_params("evolver", {"backend": "hf", "model": "m"})
    assert role_request(role, [{"role": "user", "content": "q"}]).controls is None
    role = Role.from_params("evolver", {"backend": "hf", "model": "m", "banned_strings": ["Rewritten Prompt"],
                                        "repetition_penalty": 1.2})
    request = role_request(role, [{"role": "user", "content": "q"}])
    assert request.controls == Controls(banned_strings=("Rewritten Prompt",), repetition_penalty=1.2)
    # a stage's overrides go over the role's; null keeps the role's value
    merged = role.controls.merged({"stop": ["\n\n"], "repetition_penalty": None})
    assert merged.stop == ("\n\n",) and merged.repetition_penalty == 1.2


def test_a_backend_that_cannot_honour_a_control_refuses_it_clearly():
    with pytest.raises(ParamsError, match=r"roles.evolver.banned_strings: backend 'openai' cannot honour"):
        Role.from_params("evolver", {"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:8000/v1",
                                     "server": "openai", "banned_strings": ["#The Given Prompt#"]})
    # a server of a kind not known yet is held to what vLLM's and llama.cpp's servers offer
    Role.from_params("evolver", {"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:8000/v1",
                                 "banned_strings": ["#The Given Prompt#"], "repetition_penalty": 1.1})
    with pytest.raises(ParamsError, match=r"roles.evolver.no_repeat_ngram_size: an OpenAI-compatible server cannot"):
        Role.from_params("evolver", {"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:8000/v1",
                                     "no_repeat_ngram_size": 3})
    with pytest.raises(ParamsError, match=r"roles.evolver.no_repeat_ngram_size: backend 'vllm' cannot honour"):
        Role.from_params("evolver", {"backend": "vllm", "model": "m", "no_repeat_ngram_size": 3})
    server = LLM(FakeBackend(["never sent"]), None,
                 role=Role(name="judge", backend="openai", model="m",
                           settings=OpenAISettings(base_url="http://127.0.0.1:1/v1")))
    with pytest.raises(ControlsError, match=r"roles.judge.assistant_prefix: backend 'openai' cannot honour"):
        server.generate([ask(controls=Controls(assistant_prefix="Step 1:"))])
    assert server.backend.sent == []  # refused before anything was sent
    # what a server can honour goes through
    assert server.generate([ask(controls=Controls(stop=("\n",), frequency_penalty=0.5))])[0].text == "never sent"


def test_openai_payload_carries_stop_and_frequency_penalty():
    from evolforge.llm.backends.openai.client import OpenAIBackend

    backend = OpenAIBackend("http://127.0.0.1:1/v1", "m")
    body = backend.payload(ask(controls=Controls(stop=("\n#",), frequency_penalty=0.4)))
    assert body["stop"] == ["\n#"] and body["frequency_penalty"] == 0.4
    assert "stop" not in backend.payload(ask())
    with pytest.raises(ControlsError, match="banned_strings"):
        backend.payload(ask(controls=Controls(banned_strings=("x",))))


def test_vllm_sampling_params_carry_the_controls():
    from evolforge.llm.backends.vllm.backend import control_params

    assert control_params(ask()) == {}
    assert control_params(ask(controls=Controls(banned_strings=("#Rewritten Prompt#",), stop=("\n\n",),
                                                repetition_penalty=1.2, frequency_penalty=0.3))) == {
        "bad_words": ["#Rewritten Prompt#"], "stop": ["\n\n"], "repetition_penalty": 1.2, "frequency_penalty": 0.3}
    with pytest.raises(ControlsError, match="no_repeat_ngram_size"):
        control_params(ask(controls=Controls(no_repeat_ngram_size=2)))


class _CharTokenizer:
    """Test double: one token per character (id = code point)."""

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def test_row_controls_penalise_and_ban_as_defined():
    import torch

    from evolforge.llm.decoding import RowControls

    tok = _CharTokenizer()
    logits = torch.zeros(200)
    logits[ord("a")], logits[ord("b")] = 2.0, -2.0
    RowControls(Controls(repetition_penalty=2.0), tok).adjust(logits, [ord("a"), ord("b")])
    assert logits[ord("a")] == 1.0 and logits[ord("b")] == -4.0  # divided when positive, multiplied when not
    logits = torch.zeros(200)
    RowControls(Controls(frequency_penalty=0.5), tok).adjust(logits, [ord("a"), ord("a"), ord("b")])
    assert logits[ord("a")] == -1.0 and logits[ord("b")] == -0.5 and logits[ord("c")] == 0.0
    logits = torch.zeros(200)  # "abca" then "b" would repeat the 2-gram "ab"
    RowControls(Controls(no_repeat_ngram_size=2), tok).adjust(logits, [ord(c) for c in "abca"])
    assert logits[ord("b")] == float("-inf") and logits[ord("c")] == 0.0
    logits = torch.zeros(200)  # "xy" banned: after "x", "y" cannot come; " xy" too: after " x"
    ban = RowControls(Controls(banned_strings=("xy",)), tok)
    ban.adjust(logits, [ord("x")])
    assert logits[ord("y")] == float("-inf")
    assert ban.violates([ord(c) for c in "axy"]) and not ban.violates([ord(c) for c in "ax"])
    stop = RowControls(Controls(stop=("\n#", "END"), assistant_prefix="Step 1:"), tok)
    assert stop.stop_at([ord(c) for c in " go\n#x"]) == " go" and stop.stop_at([ord(c) for c in "go"]) is None
    assert stop.finish(" go") == "Step 1: go"


def test_stop_phrases_end_the_answer_once_its_complete_words_hold_them():
    """Controls.stop_phrases (a step's, not a params control): the text so far is the answer once its words, the last
    one aside, hold stop_phrases_at_least of the phrases; they are part of the key, and a server does not refuse them
    (it decodes the answer whole; the step refuses it alike)."""
    from evolforge.llm.decoding import RowControls

    tok = _CharTokenizer()
    controls = Controls(stop_phrases=("cat sat on the mat", "sat on the mat and"), stop_phrases_at_least=2)
    row = RowControls(controls, tok)

    def at(text):
        return row.stop_at([ord(c) for c in text])

    assert at("The cat sat on the mat") is None and at("The cat sat on the mat and") is None  # "and" may go on
    assert at("The cat sat on the mat and r") == "The cat sat on the mat and r"
    assert RowControls(Controls(stop_phrases=("cat sat on the mat",), stop_phrases_at_least=1), tok).stop_at(
        [ord(c) for c in "The cat, sat on THE mat. Then"]) == "The cat, sat on THE mat. Then"  # words as the rules see them
    llm = LLM(FakeBackend(), None, role=Role(name="optimizer", backend="hf", model="m"))
    assert controls.active() and not Controls().active()
    assert llm.key(ask(controls=controls)) != llm.key(ask()) != llm.key(ask(controls=Controls(
        stop_phrases=controls.stop_phrases, stop_phrases_at_least=1)))
    assert ChatRequest.from_json(ask(controls=controls).as_json()) == ask(controls=controls)
    assert controls_problems("openai", controls, "optimize.controls") == []


def assert_stop_phrases_end_answers(backend, prompts: list[str]) -> None:
    """On an in-process backend: a sampled answer asked again with stop phrases taken from its own words ends where it
    first holds them (a prefix of it, finish_reason "stop": the controls leave the request's seed as it was), and
    with phrases it never holds is the same answer."""
    from evolforge.core.text import plain_words

    def answer(prompt, **controls):
        request = ask(prompt, temperature=1.0, seed=7, max_tokens=40,
                      controls=Controls(**controls) if controls else None)
        return backend.generate([request])[0]

    free = {p: answer(p) for p in prompts}
    prompt = max(prompts, key=lambda p: len(plain_words(free[p].text).split()))
    words = plain_words(free[prompt].text).split()
    assert len(words) >= 9, f"the tiny model wrote too few words to test with: {free[prompt].text!r}"
    phrases = (" ".join(words[1:6]), " ".join(words[2:7]), "no answer holds this phrase")
    stopped = answer(prompt, stop_phrases=phrases, stop_phrases_at_least=2)
    assert stopped.finish_reason == "stop" and len(stopped.text) < len(free[prompt].text), (stopped, free[prompt])
    assert free[prompt].text.startswith(stopped.text) and plain_words(stopped.text).split()[:7] == words[:7]
    never = answer(prompt, stop_phrases=phrases[2:], stop_phrases_at_least=1)
    assert (never.text, never.finish_reason) == (free[prompt].text, free[prompt].finish_reason)


@pytest.mark.slow
def test_hf_stops_where_its_answer_holds_the_stop_phrases(tiny_model):
    from evolforge.llm.backends.hf.backend import HFBackend

    assert_stop_phrases_end_answers(HFBackend(str(tiny_model), threads=1), [
        "Rewrite this prompt to be harder: Name a color.", "Add one constraint to: Write a haiku.",
        "Rewrite the prompt: Explain what a leap year is.", "Make it more complex: Give three tips."])


@pytest.mark.slow
def test_hf_never_writes_a_banned_string_and_honours_stop_and_prefix(tiny_model):
    from collections import Counter

    from evolforge.llm.backends.hf.backend import HFBackend

    backend = HFBackend(str(tiny_model), threads=1)
    prompts = ["Rewrite this prompt to be harder: Name a color.", "Add one constraint to: Write a haiku.",
               "Rewrite the prompt: Explain what a leap year is.", "Make it more complex: Give three tips."]
    sampled = [ask(p, temperature=1.0, seed=s, max_tokens=40) for p in prompts for s in range(3)]
    free = [c.text for c in backend.generate(sampled)]
    # ban what the model writes most when free: its commonest words (and a template phrase)
    words = Counter(w for text in free for w in text.split() if len(w) >= 3)
    banned = tuple(w for w, _ in words.most_common(4)) + ("Given Prompt",)
    assert words, "the tiny model wrote nothing to ban"
    controlled = backend.generate([ChatRequest(r.messages, r.temperature, r.top_p, r.max_tokens, r.seed,
                                               controls=Controls(banned_strings=banned)) for r in sampled])
    for c in controlled:
        assert not any(b in c.text for b in banned), (c.text, banned)
    greedy = backend.generate([ask(p, max_tokens=40, controls=Controls(banned_strings=banned)) for p in prompts])
    assert all(not any(b in c.text for b in banned) for c in greedy)
    # stop strings: the answer ends before the first one
    stop = " "  # every answer of several words has one
    stopped = backend.generate([ask(p, max_tokens=40, controls=Controls(stop=(stop,))) for p in prompts])
    assert all(stop not in c.text for c in stopped)
    # an assistant prefix is continued and starts the returned text
    request = ask(prompts[0], max_tokens=8, controls=Controls(assistant_prefix="Step 1:"))
    assert backend.render(request).endswith("Step 1:")
    assert backend.generate([request])[0].text.startswith("Step 1:")


def test_each_server_kind_gets_each_control_in_its_own_parameters():
    from evolforge.llm.backends.openai.request import chat_body

    controls = Controls(banned_strings=("Given Prompt",), stop=("\n\n",), repetition_penalty=1.15,
                        assistant_prefix="```Method\n")
    request = ask(controls=controls)
    vllm = chat_body(request, "m", "response_format", "vllm")
    assert vllm["bad_words"] == ["Given Prompt"] and vllm["repetition_penalty"] == 1.15 and vllm["stop"] == ["\n\n"]
    assert vllm["messages"][-1] == {"role": "assistant", "content": "```Method\n"} and vllm["continue_final_message"]
    llama = chat_body(request, "m", "response_format", "llamacpp")
    assert llama["repeat_penalty"] == 1.15 and "bad_words" not in llama
    assert llama["grammar"].startswith('root ::= "```Method\\x0A" s0')
    with pytest.raises(ControlsError, match=r"banned_strings: backend 'openai' cannot honour"):
        chat_body(request, "m", "response_format", "openai")
    choices = ask(choices=("easy", "hard"))
    assert chat_body(choices, "m", "response_format", "llamacpp")["grammar"] == 'root ::= "easy" | "hard"'
    assert "response_format" not in chat_body(choices, "m", "response_format", "llamacpp")


def test_a_prefix_grammar_holds_the_stop_strings_after_the_prefix():
    """llama.cpp's server applies `stop` to the prefix its grammar wrote: the shipped optimize controls
    (prefix "```Optimized Method\\n", stop "```") would end every answer at its own opening fence. The stop
    strings go in the grammar instead, after the prefix, and come off the text as a server's stop would."""
    from evolforge.llm.backends.openai.request import chat_body, unwrap_answer
    from evolforge.llm.types import Completion

    prefix = "```Optimized Method\n"
    request = ask(controls=Controls(assistant_prefix=prefix, stop=("```",)))
    llama = chat_body(request, "m", "response_format", "llamacpp")
    assert "stop" not in llama
    assert llama["grammar"].startswith('root ::= "```Optimized Method\\x0A" s0') and '| "`"' in llama["grammar"]
    vllm = chat_body(request, "m", "response_format", "vllm")
    assert vllm["stop"] == ["```"] and vllm["continue_final_message"]  # vLLM applies it to the continuation only
    assert chat_body(ask(controls=Controls(stop=("```",))), "m", "response_format", "llamacpp")["stop"] == ["```"]
    written = Completion(prefix + "Step 1: list methods.\n```", "stop")
    out = unwrap_answer(request, written, "response_format", "llamacpp")
    assert out.text == "```Optimized Method\nStep 1: list methods." and out.finish_reason == "stop"
    open_block = Completion(prefix + "Step 1: list", "length")  # cut at max_tokens: left as it came
    assert unwrap_answer(request, open_block, "response_format", "llamacpp") == open_block


def test_a_stage_control_is_refused_where_it_is_written():
    from evolforge.config.servers import server_problems
    from evolforge.schema import asked_of_roles

    params = {"roles": {"evolver": {"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:8000/v1"},
                        "judge": {"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:8000/v1"}},
              "evolve": {"strategy": "evol", "controls": {"no_repeat_ngram_size": 4, "banned_strings": ["x"]}},
              "judge": {"probabilities": True}}
    asked = asked_of_roles(params)
    problems = server_problems(params, asked)
    assert any(p.startswith("evolve.controls.no_repeat_ngram_size: an OpenAI-compatible server (roles.evolver) "
                            "cannot honour") for p in problems)
    assert not any("banned_strings" in p for p in problems)
    assert not any(p.startswith("judge.probabilities") for p in problems)  # every kind ranks (a walk of top_logprobs)
    found = server_problems(params, asked, {"evolver": "openai", "judge": "openai"})
    assert any(p.startswith("evolve.controls.banned_strings: backend 'openai' (roles.evolver) cannot") for p in found)
    assert not any(p.startswith("judge.probabilities") for p in found)
    # vLLM's echoed prompt log-probabilities need the served model's tokenizer
    vllm = server_problems(params, asked, {"evolver": "vllm", "judge": "vllm"})
    assert any(p.startswith("judge.probabilities: on vLLM's server it needs roles.judge.tokenizer") for p in vllm)


def test_the_documented_server_blocks_are_valid_params():
    """docs/how-to/models.md "The chat roles on a server": each params block is valid and its server honours every
    setting."""
    import re
    from pathlib import Path

    import yaml

    from evolforge.config.servers import server_problems
    from evolforge.schema import asked_of_roles

    readme = (Path(__file__).resolve().parents[1] / "docs/how-to/models.md").read_text()
    section = readme.split("### The chat roles on a server", 1)[1].split("\n## ", 1)[0]
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", section, re.S)]
    assert len(blocks) == 2
    for block in blocks:
        for name, fields in block["roles"].items():
            role = Role.from_params(name, fields)
            assert role.settings.server in ("llamacpp", "vllm")
            params = {**block, "evolve": {"strategy": "evol", "controls": {
                **block["evolve"]["controls"], "banned_strings": ["Given Prompt"], "stop": ["\n\n"],
                "repetition_penalty": 1.15}}, "judge": {"probabilities": True}}
            assert server_problems(params, asked_of_roles(params)) == []
    assert all(b["optimize"]["controls"] == {"no_repeat_ngram_size": None} for b in blocks)
    assert "`dvc exp run -S` cannot do\nit" in section  # a role's batch_size cannot be removed with -S


@pytest.mark.parametrize("backend", sorted(SPECS))
def test_each_backend_honours_what_its_spec_declares_and_refuses_the_rest(backend):
    """One declared spec per backend (config/backend_specs.py) is what the role checks and the LLM layer's
    refusals read: a control it lists passes, any other is refused with the spec's reason; a ranking request
    goes through only where the spec says it ranks."""
    spec = SPECS[backend]
    for control, _ in EACH_CONTROL:
        name = next(iter(control))
        problems = controls_problems(backend, Controls(**control), "roles.judge")
        assert not problems if name in spec.controls else len(problems) == 1
        if name in spec.why_not:
            assert spec.why_not[name] in problems[0]
    ranking = [ask(choices=("yes", "no"), rank=True)]
    if spec.ranks:
        refuse_ranking(backend, ranking, "roles.judge")
    else:
        with pytest.raises(ControlsError, match="cannot score answers by their probabilities"):
            refuse_ranking(backend, ranking, "roles.judge")


def test_every_backend_a_role_can_name_and_every_server_kind_has_a_spec():
    assert set(BACKEND_NAMES) | {f"openai:{kind}" for kind in SERVER_KINDS if kind != "openai"} | {"openai:any"} \
        == set(SPECS)
    with pytest.raises(ParamsError, match=r"roles.scorer.backend: llamacpp serves the chat roles"):
        Role.from_params("scorer", {"backend": "llamacpp", "model": "m"})
    with pytest.raises(ParamsError, match=r"roles.judge.extra.speculative: got 'yes'; must be true or false"):
        Role.from_params("judge", {"backend": "llamacpp", "model": "m", "extra": {"speculative": "yes"}})


# --- what check refuses is what a stage would refuse ----------------------------------------------------------------

def test_a_backend_serves_the_scorer_exactly_where_it_runs_a_transformers_model():
    """The score stage takes the losses from a transformers model's logits in its own process: the spec's roles
    say so (every backend a role can name)."""
    for name in BACKEND_NAMES:
        spec = SPECS[name]
        assert (spec.roles is None or "scorer" in spec.roles) == spec.transformers, name


@pytest.mark.parametrize("backend", ["vllm", "openai", "ray"])
def test_check_and_the_score_stage_refuse_a_scorer_that_cannot_score_alike(backend, tmp_path, capsys):
    import yaml

    from evolforge.cli import main
    from evolforge.config.roles import load_role

    fields = {"backend": backend, "model": "org/m"}
    if backend == "openai":
        fields["base_url"] = "http://127.0.0.1:8000/v1"
    params = {"roles": {"scorer": fields}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    serves = "the chat roles (evolver, judge, optimizer, responder)" if backend == "vllm" else "every role but the scorer"
    says = (f"roles.scorer.backend: {backend} serves {serves}, not the scorer: the score stage "
            f"computes losses from the logits of a transformers model in its own process; use backend hf")
    with pytest.raises(SystemExit) as exit_:
        main(["check", str(tmp_path / "params.yaml")])
    assert exit_.value.code == 2 and says in capsys.readouterr().err
    with pytest.raises(ParamsError) as refused:  # a refusal for people (exit 2), before any item is read
        load_role(params, "scorer")
    assert says in str(refused.value)


SERVED_JUDGE = {"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:8000/v1"}


@pytest.mark.parametrize("judge, kinds, expected", [
    ({**SERVED_JUDGE, "server": "vllm"}, None,
     "verify.probabilities: on vLLM's server it needs roles.judge.tokenizer"),
    (SERVED_JUDGE, {"judge": "vllm"}, "verify.probabilities: on vLLM's server it needs roles.judge.tokenizer"),
    ({"backend": "ray", "model": "org/m"}, None,
     "verify.probabilities: backend 'ray' (roles.judge) cannot score answers by their probabilities"),
])
def test_verify_probabilities_is_held_to_the_judge_as_judge_probabilities_is(judge, kinds, expected):
    from evolforge.config.servers import server_problems
    from evolforge.schema import asked_of_roles

    params = {"roles": {"judge": judge}}  # verify.probabilities: true by default
    assert asked_of_roles(params).rankings == ("verify.probabilities",)
    problems = server_problems(params, asked_of_roles(params), kinds)
    assert [p for p in problems if "probabilities" in p] == [p for p in problems if p.startswith(expected)] != []
    assert not any("judge.probabilities" in p for p in problems)  # the setting written, not the judge stage's
    for off in ({"verify": {"probabilities": False}}, {"verify": {"enabled": False}}):
        assert server_problems({**params, **off}, asked_of_roles({**params, **off}), kinds) == []
    both = {**params, "judge": {"probabilities": True}}
    assert [p.split(":")[0] for p in server_problems(both, asked_of_roles(both), kinds)] == [
        "judge.probabilities", "verify.probabilities"]


def test_evolve_controls_are_checked_under_the_strategy_the_evolve_stage_defaults_to():
    """evolve.strategy defaults to evol (the hand-written methods), whose calls take evolve.controls."""
    from evolforge.config.servers import server_problems
    from evolforge.schema import asked_of_roles

    evolver = {"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:8000/v1", "server": "openai"}
    # the step-format calls (optimize's) take method_controls: here none, so only the evol calls take controls
    evolve = {"controls": {"repetition_penalty": 1.2}, "method_controls": {}}
    params = {"roles": {"evolver": evolver}, "evolve": evolve}
    assert asked_of_roles(params).strategy == "evol"
    assert [p.split(":")[0] for p in server_problems(params, asked_of_roles(params))] == [
        "evolve.controls.repetition_penalty"]
    auto = {**params, "evolve": {**evolve, "strategy": "auto"}}
    assert server_problems(auto, asked_of_roles(auto)) == []
