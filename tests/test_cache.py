"""The call cache: what goes into a key, per-batch commits, resuming a killed run, two processes at once."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing as mp
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from evolforge.llm.cache import CallCache, KeyFrame, cache_key
from evolforge.config.backend_settings import HfSettings, OpenAISettings, RaySettings
from evolforge.config.roles import Role
from evolforge.llm.requests import ChatRequest
from evolforge.llm.cached import LLM
from evolforge.llm.backends.fake import FakeBackend
from evolforge.llm.types import Capabilities

BASE = dict(backend="hf", model={"name": "m", "revision": "r1"}, messages=[{"role": "user", "content": "hi"}],
            temperature=0.7, top_p=0.95, max_tokens=32, seed=1, sample_index=0)
VARIANTS = {
    "backend": "vllm",
    "model": {"name": "m", "revision": "r2"},
    "messages": [{"role": "user", "content": "hi!"}],
    "temperature": 0.6,
    "top_p": 0.9,
    "max_tokens": 33,
    "seed": 2,
    "sample_index": 1,
}


@pytest.mark.parametrize("part", sorted(VARIANTS))
def test_key_changes_with_each_part(part):
    assert cache_key(**{**BASE, part: VARIANTS[part]}) != cache_key(**BASE)


def test_key_ignores_everything_else():
    same = dict(BASE, model=dict(reversed(list(BASE["model"].items()))), temperature=0.7000, max_tokens=32.0)
    assert cache_key(**same) == cache_key(**BASE)
    # extra keys in a message (e.g. a name a client adds) and weights hash vs revision are distinct identities
    assert cache_key(**dict(BASE, messages=[{"role": "user", "content": "hi", "x": 1}])) == cache_key(**BASE)
    assert cache_key(**dict(BASE, model={"name": "m", "weights_sha256": "r1"})) != cache_key(**BASE)


def req(i: int, **kw) -> ChatRequest:
    return ChatRequest.chat([{"role": "user", "content": f"prompt {i}"}], **kw)


def test_llm_caches_in_order_and_counts(tmp_path):
    fake = FakeBackend(lambda r: r.messages[0][1].upper())
    llm = LLM(fake, CallCache(tmp_path / "c.sqlite"), batch_size=3)
    requests = [req(i) for i in range(7)] + [req(0)]
    out = llm.complete(requests)
    assert out == [f"PROMPT {i}" for i in range(7)] + ["PROMPT 0"]
    assert (llm.stats["calls"], llm.stats["cache_hits"]) == (7, 0)  # the duplicate is generated once, not twice
    assert fake.batches == [3, 3, 1]

    again = LLM(FakeBackend([]), CallCache(tmp_path / "c.sqlite"), batch_size=3)
    assert again.complete(requests) == out
    assert (again.stats["calls"], again.stats["cache_hits"]) == (0, 8)
    # a different sample index is a different call
    fresh = LLM(FakeBackend(["other"]), CallCache(tmp_path / "c.sqlite"))
    assert fresh.complete([req(0, sample_index=1)]) == ["other"]


class Boom(RuntimeError):
    pass


def test_failure_mid_run_keeps_finished_batches(tmp_path):
    calls = []

    def reply(r):
        calls.append(r)
        if len(calls) == 7:
            raise Boom("backend died")
        return "ok " + r.messages[0][1]

    requests = [req(i) for i in range(10)]
    with pytest.raises(Boom):
        LLM(FakeBackend(reply), CallCache(tmp_path / "c.sqlite"), batch_size=3).complete(requests)
    assert len(CallCache(tmp_path / "c.sqlite")) == 6  # two finished batches were committed

    rerun = FakeBackend(lambda r: "ok " + r.messages[0][1])
    out = LLM(rerun, CallCache(tmp_path / "c.sqlite"), batch_size=3).complete(requests)
    assert out == [f"ok prompt {i}" for i in range(10)]
    assert len(rerun.sent) == 4  # nothing already committed is generated again


class StreamingFake(FakeBackend):
    """A FakeBackend with ``stream``: finishes the requests in flight one at a time, last admitted first."""

    capabilities = Capabilities(stream=True)

    def __init__(self, replies):
        super().__init__(replies)
        self.slots: list[int] = []

    def stream(self, requests, slots):
        self.slots.append(slots)
        waiting, flight = list(range(len(requests))), []
        while waiting or flight:
            while waiting and len(flight) < slots:
                flight.append(waiting.pop(0))
            i = flight.pop()
            yield [(i, self.generate([requests[i]])[0])]


def test_streaming_backend_commits_each_completion_as_it_ends(tmp_path):
    def reply(r):
        if r.messages[0][1] == "prompt 5":
            raise Boom("backend died")
        return "ok " + r.messages[0][1]

    requests = [req(i) for i in range(8)]
    backend = StreamingFake(reply)
    with pytest.raises(Boom):
        LLM(backend, CallCache(tmp_path / "c.sqlite"), batch_size=3).complete(requests)
    assert backend.slots == [3]
    # 0, 1, 2 in flight; 2 ends, 3 joins and ends, 4 joins and ends, 5 joins and fails
    assert [r.messages[0][1] for r in backend.sent] == ["prompt 2", "prompt 3", "prompt 4", "prompt 5"]
    assert len(CallCache(tmp_path / "c.sqlite")) == 3  # each one committed as it ended

    rerun = StreamingFake(lambda r: "ok " + r.messages[0][1])
    llm = LLM(rerun, CallCache(tmp_path / "c.sqlite"), batch_size=3)
    assert llm.complete(requests + [req(2)]) == [f"ok prompt {i}" for i in range(8)] + ["ok prompt 2"]
    assert sorted(r.messages[0][1] for r in rerun.sent) == [f"prompt {i}" for i in (0, 1, 5, 6, 7)]
    assert (llm.stats["calls"], llm.stats["cache_hits"]) == (5, 4)


KILLED_RUN = textwrap.dedent("""
    import sys, time
    from evolforge.llm.cache import CallCache
    from evolforge.llm.requests import ChatRequest
    from evolforge.config.runtime import LLMSettings
    from evolforge.llm.cached import LLM
    from evolforge.llm.backends.fake import FakeBackend

    def slow(r):
        time.sleep(0.05)
        with open(sys.argv[2], "a") as fh:
            fh.write(r.messages[0][1] + "\\n")
        return "done " + r.messages[0][1]

    requests = [ChatRequest.chat([{"role": "user", "content": f"prompt {i}"}]) for i in range(400)]
    settings = LLMSettings(commit_every=4, commit_interval_s=600)  # commits by count only
    LLM(FakeBackend(slow), CallCache(sys.argv[1]), batch_size=4, settings=settings).complete(requests)
""")


def test_killed_run_repeats_no_finished_batch(tmp_path):
    db, log = tmp_path / "c.sqlite", tmp_path / "generated.txt"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(db), str(log)])
    deadline = time.time() + 60
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 30):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    committed = len(CallCache(db))
    assert 20 <= committed < 400

    rerun = FakeBackend(lambda r: "done " + r.messages[0][1])
    requests = [req(i) for i in range(400)]
    out = LLM(rerun, CallCache(db), batch_size=4).complete(requests)
    assert out == [f"done prompt {i}" for i in range(400)]
    assert len(rerun.sent) == 400 - committed  # finished batches are not generated again
    # at most the batch in flight was lost (commit_every = the batch size)
    assert len(log.read_text().splitlines()) - committed <= 4


def _writer(path, worker, n):
    cache = CallCache(path)
    for b in range(n):
        cache.put_many([(f"{worker}-{b}-{i}", "x", "stop", "m") for i in range(20)])


def test_two_processes_share_the_cache(tmp_path):
    path = tmp_path / "c.sqlite"
    CallCache(path)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), w, 50)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert len(CallCache(path)) == 2 * 50 * 20


def test_queued_experiments_share_the_repository_cache(tmp_path, monkeypatch):
    from evolforge.config.runtime import CacheSettings
    from evolforge.llm.cache import open_cache, repo_root

    queued = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpabc123"
    queued.mkdir(parents=True)
    assert repo_root(queued) == (tmp_path / "repo").resolve()
    assert repo_root(tmp_path) == tmp_path.resolve()
    monkeypatch.delenv("EVOLFORGE_CACHE", raising=False)
    monkeypatch.chdir(queued)
    cache = open_cache(CacheSettings(path=".evolforge/cache.sqlite"))
    assert cache.path == (tmp_path / "repo" / ".evolforge" / "cache.sqlite").resolve()


def test_key_drops_top_p_and_seed_at_temperature_zero_and_keeps_engine_options():
    greedy = dict(BASE, temperature=0.0)
    assert cache_key(**dict(greedy, top_p=0.5, seed=9)) == cache_key(**greedy)
    assert cache_key(**dict(greedy, sample_index=1)) != cache_key(**greedy)
    assert cache_key(**dict(BASE, engine={"dtype": "bfloat16"})) != cache_key(**dict(BASE, engine={"dtype": "float32"}))
    assert cache_key(**dict(BASE, engine={"quantization": "awq"})) != cache_key(**BASE)


def test_engine_options_per_backend():
    from evolforge.config.roles import Role
    from evolforge.llm.keys import engine_options

    hf = Role(name="r", backend="hf", model="m", settings=HfSettings(dtype="bfloat16", device="cpu"))
    vllm = Role(name="r", backend="vllm", model="m", max_model_len=4096, extra={"quantization": "awq"})
    server = Role(name="r", backend="openai", model="m", settings=OpenAISettings(base_url="http://127.0.0.1:1/v1"))
    assert engine_options(hf) == {"dtype": "bfloat16", "device": "cpu"}
    assert engine_options(vllm)["quantization"] == "awq" and engine_options(vllm)["max_model_len"] == 4096
    assert engine_options(server) == {}  # the served model id stands for the server's engine
    def key(role):
        return LLM(FakeBackend(), None, role=role, identity={"name": "m"}).key(req(0))
    assert key(hf) != key(Role(name="r", backend="hf", model="m", settings=HfSettings(dtype="float32", device="cpu")))
    assert key(server) == key(Role(name="other", backend="openai", model="m",
                                   settings=OpenAISettings(base_url="http://10.0.0.1/v1")))
    # hf cuts answers where max_model_len ends: a limit set is in the key, no limit keeps the key it had
    short = Role(name="r", backend="hf", model="m", max_model_len=512,
                 settings=HfSettings(dtype="bfloat16", device="cpu"))
    assert engine_options(short)["max_model_len"] == 512 and key(short) != key(hf)
    ray_hf = Role(name="r", backend="ray", model="m", max_model_len=512, settings=RaySettings(engine="hf"))
    assert engine_options(ray_hf)["max_model_len"] == 512



def test_a_sampled_hf_call_names_the_sampler_in_its_key_and_a_greedy_one_does_not():
    """The hf backend's sampler decides a sampled answer: its name is in the engine of every sampled hf (and ray hf /
    auto) key, so a cache filled by another sampler is not served; greedy keys, and other backends', stay as they were."""
    from evolforge.config.backend_settings import HF_SAMPLER

    engine = {"dtype": "float32", "device": "cpu"}
    messages = [{"role": "user", "content": "hi"}]

    def keys(role, engine):
        llm = LLM(FakeBackend(), None, role=role, identity={"name": "m"}, engine=engine)
        sampled = llm.request(messages, temperature=0.7, top_p=0.9, seed=3)
        greedy = llm.request(messages, temperature=0.0)
        frame = dict(backend=role.backend, model={"name": "m"}, messages=messages, max_tokens=sampled.max_tokens,
                     sample_index=0)
        return (llm.key(sampled) == cache_key(**frame, engine={**engine, "sampler": HF_SAMPLER}, temperature=0.7,
                                              top_p=0.9, seed=3),
                llm.key(sampled) == cache_key(**frame, engine=engine, temperature=0.7, top_p=0.9, seed=3),
                llm.key(greedy) == cache_key(**frame, engine=engine, temperature=0.0, top_p=1.0, seed=0))

    hf = Role(name="r", backend="hf", model="m", settings=HfSettings(dtype="float32", device="cpu"))
    assert keys(hf, engine) == (True, False, True)
    for ray_engine in ("hf", "auto"):
        ray = Role(name="r", backend="ray", model="m", settings=RaySettings(engine=ray_engine))
        assert keys(ray, {"engine": ray_engine}) == (True, False, True)
    vllm = Role(name="r", backend="vllm", model="m")
    ray_vllm = Role(name="r", backend="ray", model="m", settings=RaySettings(engine="vllm"))
    for role in (vllm, ray_vllm):
        assert keys(role, {"dtype": "auto"}) == (False, True, True)


def test_an_hf_roles_auto_device_and_dtype_are_keyed_as_resolved():
    """``device: auto`` / ``dtype: auto`` are keyed as what they become on this machine, so completions made
    on a GPU (bf16) and on the CPU (fp32) are never served for each other."""
    from evolforge.core.models import dtype_name, pick_device, pick_dtype
    from evolforge.llm.keys import resolved_engine

    device = pick_device("auto")  # cpu here; cuda where torch sees a GPU
    auto = Role(name="r", backend="hf", model="m")
    assert resolved_engine(auto) == {"device": device, "dtype": dtype_name(pick_dtype("auto", device))}
    assert resolved_engine(dataclasses.replace(auto, settings=dataclasses.replace(auto.settings, dtype="bfloat16"))) == {"device": device, "dtype": "bfloat16"}
    explicit = Role(name="r", backend="hf", model="m", settings=HfSettings(device="cpu", dtype="float32"))
    assert resolved_engine(explicit) == {"device": "cpu", "dtype": "float32"}
    assert resolved_engine(Role(name="r", backend="vllm", model="m"))["dtype"] == "auto"  # vLLM: the model's dtype
    def key(role, engine=None):
        return LLM(FakeBackend(), None, role=role, identity={"name": "m"}, engine=engine).key(req(0))
    assert key(auto) == key(dataclasses.replace(auto, settings=dataclasses.replace(auto.settings, device=device, dtype=resolved_engine(auto)["dtype"])))
    assert key(auto, engine={"device": "cuda", "dtype": "bfloat16"}) != key(auto, engine={"device": "cpu", "dtype": "float32"})


def test_a_model_loaded_otherwise_than_its_keys_say_is_refused(monkeypatch):
    """Keys resolved where the models stage ran (models/identity.json) must match what loads here."""
    import evolforge.llm.registry as registry
    from evolforge.core.models import ModelError

    class LoadedOnGPU(FakeBackend):
        capabilities = Capabilities(runs_with=True)

        def runs_with(self):
            return {"device": "cuda", "dtype": "bfloat16"}

    monkeypatch.setattr(registry, "_LOADED", {})
    monkeypatch.setitem(registry.BACKENDS, "hf", lambda role: LoadedOnGPU(["answer"]))
    role = Role(name="evolver", backend="hf", model="m")
    pinned_on_cpu = LLM(None, None, role=role, identity={"name": "m"}, engine={"device": "cpu", "dtype": "float32"})
    with pytest.raises(ModelError, match=r"loaded with \{'device': 'cuda', 'dtype': 'bfloat16'\}.*dvc repro models"):
        pinned_on_cpu.complete([req(0)])
    monkeypatch.setattr(registry, "_LOADED", {})
    pinned_on_gpu = LLM(None, None, role=role, identity={"name": "m"}, engine={"device": "cuda", "dtype": "bfloat16"})
    assert pinned_on_gpu.complete([req(0)]) == ["answer"]
    monkeypatch.setattr(registry, "_LOADED", {})
    chosen = dataclasses.replace(role, settings=dataclasses.replace(role.settings, device="cuda:0", dtype="bf16"))  # written out: keyed as written, not checked
    assert LLM(None, None, role=chosen, identity={"name": "m"}).complete([req(0)]) == ["answer"]

def test_first_stored_completion_wins(tmp_path):
    first, second = CallCache(tmp_path / "c.sqlite"), CallCache(tmp_path / "c.sqlite")
    assert first.put_many([("k", "first", "stop", "m")]) == {}
    assert second.put_many([("k", "second", "length", "m"), ("j", "new", "stop", "m")]) == {"k": ("first", "stop")}
    assert second.get_many(["k", "j"]) == {"k": ("first", "stop"), "j": ("new", "stop")}

    # an LLM whose completion lost the race returns the stored one
    class Racing(FakeBackend):
        def generate(self, requests):
            out = super().generate(requests)
            first.put_many([(llm.key(r), "stored by another process", "stop", "m") for r in requests])
            return out

    llm = LLM(Racing(["mine"]), second)
    assert llm.complete([req(5)]) == ["stored by another process"]


def test_commits_every_interval_while_a_stream_runs(tmp_path):
    from evolforge.config.runtime import LLMSettings

    seen_committed = []

    class Slow(FakeBackend):
        capabilities = Capabilities(stream=True)

        def stream(self, requests, slots):
            for i, r in enumerate(requests):
                time.sleep(0.03)
                seen_committed.append(len(CallCache(tmp_path / "c.sqlite")))
                yield [(i, self.generate([r])[0])]

    settings = LLMSettings(commit_every=10_000, commit_interval_s=0.1)
    LLM(Slow(lambda r: "x"), CallCache(tmp_path / "c.sqlite"), settings=settings).complete([req(i) for i in range(20)])
    # committed by time while the stream ran (commit_every is never reached), not only at its end
    assert seen_committed[0] == 0 and seen_committed[-1] > 0
    assert len(CallCache(tmp_path / "c.sqlite")) == 20


def test_a_slow_commit_spaces_the_next(tmp_path):
    """When a commit takes longer than a fraction of the interval (a large cache, answers faster than SQLite
    stores them), the next one waits COMMIT_SPACING times as long: fewer, larger commits."""
    from evolforge.config.runtime import LLMSettings
    from evolforge.llm.cache import COMMIT_SPACING

    commits = []

    class SlowCache(CallCache):
        def put_many(self, rows):
            commits.append((time.monotonic(), len(rows)))
            time.sleep(0.05)
            return super().put_many(rows)

    class Fast(FakeBackend):
        capabilities = Capabilities(stream=True)

        def stream(self, requests, slots):
            for i, r in enumerate(requests):
                time.sleep(0.005)
                yield [(i, self.generate([r])[0])]

    settings = LLMSettings(commit_every=10_000, commit_interval_s=0.01)
    texts = LLM(Fast(lambda r: "x"), SlowCache(tmp_path / "c.sqlite"), settings=settings).complete([req(i) for i in range(120)])
    assert texts == ["x"] * 120 and len(CallCache(tmp_path / "c.sqlite")) == 120
    gaps = [b - a for (a, _), (b, _) in zip(commits, commits[1:-1])]  # the last commit is the final one
    assert gaps and min(gaps) >= COMMIT_SPACING * 0.05  # each waited 4 commit durations, not 0.01 s


def test_llm_settings_refuse_unknown_keys_and_bad_values():
    from evolforge.config.loader import load_section
    from evolforge.config.runtime import LLMSettings

    assert load_section({}, "llm", LLMSettings).max_failure_rate == 0.05
    with pytest.raises(ValueError, match="llm.max_failure_rat: unknown key; did you mean `max_failure_rate`"):
        load_section({"llm": {"max_failure_rat": 0.1}}, "llm", LLMSettings)
    with pytest.raises(ValueError, match="llm.max_failure_rate: got 1.5"):
        load_section({"llm": {"max_failure_rate": 1.5}}, "llm", LLMSettings)


def test_keys_and_seeds_never_change():
    """Golden values: a key or a seed that changes makes every user's cached completion unreachable (a paid
    recompute) and every sampled completion different, so the encoding of both is pinned here."""
    from evolforge.llm.keys import request_seed

    assert cache_key(backend="hf", model={"weights_sha256": "ab" * 32}, engine={"dtype": "float32", "device": "cpu"},
                     messages=[{"role": "user", "content": "Rewrite \"this\"\n\tin ü, 😀 and \u2028."}],
                     temperature=0.7, top_p=0.9, max_tokens=64, seed=3, sample_index=1) == \
        "1af5035eb0b19263333c62e50b4e06fbbaab34ecd414d05faaad1ab285161377"
    assert cache_key(backend="openai", model={"served_model": "m"}, messages=[{"role": "user", "content": "Level?"}],
                     temperature=0.0, top_p=0.5, max_tokens=8, seed=9, sample_index=0,
                     constraint={"choices": ["Yes", "No"], "format": "response_format"}) == \
        "c9e5dc5b020c80ce092730d6b2ec432b7de7022982f0733d52f44e168a5f78a9"
    sampled = ChatRequest(messages=(("user", "Rewrite \"this\"\n\tin ü, 😀."),), temperature=0.7, top_p=0.9,
                          max_tokens=64, seed=3, sample_index=1)
    constrained = ChatRequest(messages=(("user", "Yes or no?"),), max_tokens=4, choices=("Yes", "No"))
    assert (request_seed(sampled), request_seed(constrained)) == (545409889953350155, 230081632491158778)


# -- the fast encoding of keys and seeds against the plain json one they must equal byte for byte ----------

def old_cache_key(*, backend, model, engine=None, messages, temperature, top_p, max_tokens, seed, sample_index,
                  constraint=None):
    """cache_key as first written: json.dumps of the whole payload."""
    greedy = float(temperature) == 0.0
    payload = {"backend": backend, "model": dict(model), "messages": [{"role": m["role"], "content": m["content"]}
                                                                        for m in messages],
               "temperature": float(temperature), "top_p": 1.0 if greedy else float(top_p),
               "max_tokens": int(max_tokens), "seed": 0 if greedy else int(seed), "sample_index": int(sample_index)}
    if engine:
        payload["engine"] = dict(engine)
    if constraint:
        payload["constraint"] = dict(constraint)
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def old_request_seed(request):
    """request_seed as first written: json.dumps (default separators) of the request's fields."""
    fields = {"messages": request.messages, "temperature": request.temperature, "top_p": request.top_p,
              "max_tokens": request.max_tokens, "seed": request.seed, "sample_index": request.sample_index}
    if request.choices is not None:
        fields["choices"] = request.choices
    return int(hashlib.sha256(json.dumps(fields, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()[:15], 16)


# every control char, DEL, quotes, backslashes, the stand-in NUL, line/paragraph separators, BOM, non-BMP
NASTY = [chr(c) for c in range(0x20)] + list('"\\/\x7f\u2028\u2029\ufeff\uffff\u00e9\u4e2d😀𝄞\U0010ffff') + [" ", "a", "Z"]


def random_text(rng: random.Random) -> str:
    return "".join(rng.choice(NASTY) for _ in range(rng.choice([0, 1, 5, 40, 700])))


def random_key_args(rng: random.Random) -> dict:
    args = dict(backend=rng.choice(["hf", "openai", "v\"llm"]),
                model=rng.choice([{"name": "m"}, {"served_model": random_text(rng), "x": 1e-07}, {"name": "\0"}]),
                messages=[{"role": rng.choice(["user", "system", "assistant", random_text(rng)]),
                           "content": random_text(rng)} for _ in range(rng.randint(0, 4))],
                temperature=rng.choice([0.0, 0, 0.7, 1e16]), top_p=rng.choice([1.0, 0.95, 1e-07]),
                max_tokens=rng.randint(1, 4096), seed=rng.randint(0, 2**40), sample_index=rng.randint(0, 3))
    if rng.random() < 0.5:
        args["engine"] = rng.choice([{"dtype": "bfloat16", "device": "cpu"}, {"extra": {"messages": "\0", "q": 1}}])
    if rng.random() < 0.5:
        args["constraint"] = {"choices": [random_text(rng) for _ in range(3)], "format": "response_format"}
    return args


def random_request(rng: random.Random) -> ChatRequest:
    messages = tuple((rng.choice(["user", "system", random_text(rng)]), random_text(rng))
                     for _ in range(rng.randint(0, 4)))
    choices = rng.choice([None, ("Yes", "No"), tuple(random_text(rng) for _ in range(2))])
    return ChatRequest(messages=messages, temperature=rng.choice([0.0, 0.7]), top_p=rng.choice([1.0, 0.9]),
                       max_tokens=rng.randint(1, 512), seed=rng.randint(0, 99), sample_index=rng.randint(0, 3),
                       choices=choices)


def outcome(fn, *args, **kwargs):
    """What a call gives: its result, or the type of what it raised."""
    try:
        return fn(*args, **kwargs)
    except Exception as error:  # compared below: the same type must come out of both encodings
        return type(error)


def test_keys_and_seeds_equal_the_plain_json_encoding_on_random_payloads():
    from evolforge.llm.cached import LLM
    from evolforge.llm.keys import _SEED_FRAMES, request_seed

    rng = random.Random(20240611)
    for _ in range(600):
        args = random_key_args(rng)
        assert cache_key(**args) == old_cache_key(**args), args
        request = random_request(rng)
        assert request_seed(request) == old_request_seed(request), request
    # the spliced encoding was the one taken: frames were made (the stand-in is rare in these payloads)
    assert sum(around is not None for around in _SEED_FRAMES.values()) > 100
    rest = {k: v for k, v in random_key_args(rng).items() if k != "messages"}
    assert KeyFrame(**dict(rest, model={"name": "m"}, engine=None))._around is not None

    # an LLM's frames, one per sampling signature, reused by requests that differ in their messages only
    role = Role(name="judge", backend="openai", model="m")
    llm = LLM(None, None, role=role, identity={"served_model": "m"})
    for _ in range(300):
        request = random_request(rng)
        frames = len(llm._frames)
        for variant in (request, dataclasses.replace(request, messages=(("user", random_text(rng)),))):
            assert llm.key(variant) == old_cache_key(
                backend="openai", model={"served_model": "m"}, messages=variant.message_dicts,
                temperature=variant.temperature, top_p=variant.top_p, max_tokens=variant.max_tokens,
                seed=variant.seed, sample_index=variant.sample_index,
                constraint=None if variant.choices is None else {"choices": list(variant.choices),
                                                                 "format": role.settings.choice_format})
        assert len(llm._frames) <= frames + 1  # the variant found the request's frame
    assert len(llm._frames) > 100


def test_numbers_that_compare_equal_get_their_own_frames():
    """1, 1.0 and True are equal keys of a dict but json writes them apart: a seed (which sees the raw
    numbers) or a key made with one must not be reused for the other."""
    from evolforge.llm.cached import LLM
    from evolforge.llm.keys import request_seed

    llm = LLM(None, None, role=Role(name="judge", backend="openai", model="m"), identity={"served_model": "m"})
    for fields in ({"temperature": 1}, {"temperature": 1.0}, {"temperature": True}, {"max_tokens": 1},
                   {"max_tokens": True}, {"choices": (1,)}, {"choices": (1.0,)}, {"choices": ("1",)}):
        request = ChatRequest(messages=(("user", "same text"),), **fields)
        assert request_seed(request) == old_request_seed(request), fields
        key = llm.key(request)
        assert key == old_cache_key(backend="openai", model={"served_model": "m"}, messages=request.message_dicts,
                                    temperature=request.temperature, top_p=request.top_p,
                                    max_tokens=request.max_tokens, seed=request.seed, sample_index=0,
                                    constraint=None if request.choices is None else
                                    {"choices": list(request.choices), "format": "response_format"}), fields


LONE_SURROGATES = ["\ud800", "a\udfff\"", "\ud83d\ude00"]  # the last: a UTF-16 pair, two code points in Python


@pytest.mark.parametrize("content", LONE_SURROGATES + [5, None, ["list"], "\0"])
def test_unusual_contents_key_and_seed_as_the_plain_json_encoding_did(content):
    """Lone surrogates (orjson refuses them, json's string cannot be UTF-8 encoded), non-str contents and
    the NUL the fast path uses as a stand-in: the same key or seed, or the same error, as before."""
    from evolforge.llm.keys import request_seed

    args = dict(BASE, messages=[{"role": "user", "content": "x"}, {"role": "user", "content": content}])
    assert outcome(cache_key, **args) == outcome(old_cache_key, **args)
    request = ChatRequest(messages=(("user", "x"), ("user", content)), choices=("Yes", "No"))
    assert outcome(request_seed, request) == outcome(old_request_seed, request)
    as_lists = ChatRequest(messages=[["user", "x"], ["user", content]])  # lists, not tuples: the plain path
    assert outcome(request_seed, as_lists) == outcome(old_request_seed, as_lists)
    if content in LONE_SURROGATES:  # json writes them, UTF-8 cannot: it raised and still does
        assert outcome(cache_key, **args) is outcome(request_seed, request) is UnicodeEncodeError
