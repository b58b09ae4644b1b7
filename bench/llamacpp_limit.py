"""How far the llamacpp backend is from the machine's limit: one run, one machine, one model.

    flock /tmp/evolforge.lock python bench/llamacpp_limit.py \
        [--model /work/main/models/Qwen2.5-Coder-1.5B-Instruct-GGUF] [--batch-size 6] [--threads 2]
        [--prompt-tokens 400] [--steps 48] [--json out.json] [--extra-bufts probe|on|off]

Three rates of prefill (prompt tokens/s) and decode (generated tokens/s, one sequence and ``--batch-size``
sequences together), measured in the same process on the same threads:

- **backend**: :class:`evolforge.llm.backends.llamacpp.backend.LlamaCppBackend` generating as a stage does (chat
  template, tokenizer, every token chosen in Python, sampled at the evolver's temperature 0.7 / top-p 0.95;
  no speculation, so that the loop itself is measured). Prefill time is the time spent in the context's
  ``prefill_many``; decode rate = generated tokens / (wall - prefill time), so the Python side of every token
  (logits read, controls, sampling, batch assembly) is in it.
- **llama.cpp**: llama.cpp's own loop through llama-cpp-python's low-level API with no Python-side
  sampling: ``llama_decode`` on a batch, then llama.cpp's sampler chain (top-p 0.95, temperature 0.7, dist)
  picks each sequence's token in C. Same context parameters as the backend's.
- **bound**: the arithmetic limit. Decode: the weights one step reads (the GGUF's tensors; the token
  embedding only as one row when the output has its own matrix) / the measured memory bandwidth (a numpy
  copy of a 512 MiB array, read + write, on the same threads), times the sequences that step serves,
  capped by the compute bound. Prefill: the measured peak float32 matmul rate (torch, 2048x2048, same
  threads) / 2 x the parameters a token multiplies. The float32 matmul is only a proxy for llama.cpp's
  int8 / q4_K dot kernels (which can do more or fewer operations per second than float32 FMA).

Prints a table of rates and the ratios backend / llama.cpp and llama.cpp / bound; ``--json`` writes them.
Run it on an idle machine (under the lock on a shared one): the figures are throughputs.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np

from evolforge.llm.requests import ChatRequest
from evolforge.llm.backends.llamacpp.backend import LlamaCppBackend, gguf_file
from evolforge.llm.backends.llamacpp.context import LlamaCppContext

DEFAULT_MODEL = "/work/main/models/Qwen2.5-Coder-1.5B-Instruct-GGUF"
TEMPERATURE, TOP_P = 0.7, 0.95  # the shipped evolver's


# ---------------------------------------------------------------- the arithmetic bound

def weight_bytes_and_params(path: Path) -> tuple[int, int]:
    """(bytes a decode step reads, parameters a token multiplies) from the GGUF's tensors. The token
    embedding is a lookup (one row) unless the output projection is tied to it."""
    from gguf import GGUFReader

    tensors = {t.name: t for t in GGUFReader(str(path)).tensors}
    tied = "output.weight" not in tensors
    read = params = 0
    for name, t in tensors.items():
        if name == "token_embd.weight" and not tied:
            read += int(t.n_bytes) // int(t.shape[-1] if len(t.shape) > 1 else 1)  # one row
            continue
        read += int(t.n_bytes)
        if len(t.shape) > 1:  # matrices: a multiply-add per element per token; vectors are negligible
            params += int(t.n_elements)
    return read, params


def bandwidth(threads: int, mib: int = 512, repeats: int = 5) -> float:
    """Memory bandwidth in bytes/s: the best of ``repeats`` copies of a ``mib`` MiB array (read + write),
    split over ``threads`` threads (numpy releases the GIL while it copies)."""
    src = np.ones(mib * 2**20 // 8, dtype=np.float64)
    dst = np.empty_like(src)
    parts = np.array_split(np.arange(src.size), threads)
    bounds = [(int(p[0]), int(p[-1]) + 1) for p in parts]

    def copy(lo: int, hi: int) -> None:
        np.copyto(dst[lo:hi], src[lo:hi])

    best = float("inf")
    for _ in range(repeats):
        workers = [threading.Thread(target=copy, args=b) for b in bounds]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best


def peak_flops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """float32 matmul FLOP/s on ``threads`` threads (torch): a proxy for llama.cpp's quantized dot kernels."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    torch.set_num_threads(before)
    return 2 * n**3 / best


# ---------------------------------------------------------------- llama.cpp's own loop

def own_loop(cache: LlamaCppContext, prompt: list[int], sequences: int, steps: int, seed: int = 1) -> dict[str, float]:
    """llama.cpp decoding with its own sampler chain, no Python per token beyond the batch: prefill
    ``prompt`` in sequence 0 (timed), share it with ``sequences`` sequences, then ``steps`` steps of one
    token per sequence, each sampled in C (top-p, temperature, dist)."""
    import llama_cpp

    ctx, memory = cache.context.ctx, cache.memory
    llama_cpp.llama_memory_clear(memory, True)
    cache.held.clear()
    batch = llama_cpp.llama_batch_init(max(len(prompt), sequences), 0, max(sequences, 1))
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    for sampler in (llama_cpp.llama_sampler_init_top_p(TOP_P, 1), llama_cpp.llama_sampler_init_temp(TEMPERATURE),
                    llama_cpp.llama_sampler_init_dist(seed)):
        llama_cpp.llama_sampler_chain_add(chain, sampler)

    def fill(items: list[tuple[int, int, int, bool]]) -> None:
        batch.n_tokens = len(items)
        for j, (token, pos, seq, logits) in enumerate(items):
            batch.token[j], batch.pos[j], batch.n_seq_id[j], batch.logits[j] = token, pos, 1, logits
            batch.seq_id[j][0] = seq

    try:
        start = time.perf_counter()
        for lo in range(0, len(prompt), 512):
            chunk = prompt[lo:lo + 512]
            fill([(t, lo + j, 0, lo + j == len(prompt) - 1) for j, t in enumerate(chunk)])
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed on the prompt")
        prefill_s = time.perf_counter() - start
        first = llama_cpp.llama_sampler_sample(chain, ctx, batch.n_tokens - 1)
        for seq in range(1, sequences):
            llama_cpp.llama_memory_seq_cp(memory, 0, seq, -1, -1)
        last = [first] * sequences
        start = time.perf_counter()
        for step in range(steps):
            fill([(last[s], len(prompt) + step, s, True) for s in range(sequences)])
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed on a step")
            last = [llama_cpp.llama_sampler_sample(chain, ctx, s) for s in range(sequences)]
        decode_s = time.perf_counter() - start
    finally:
        llama_cpp.llama_sampler_free(chain)
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_memory_clear(memory, True)
    return {"prefill_tps": len(prompt) / prefill_s, "decode_tps": sequences * steps / decode_s}


# ---------------------------------------------------------------- the backend

LONG_TASK = ("Write a long, detailed tutorial on Python's asyncio with many code examples. Cover the event loop, "
             "tasks, gather, queues, cancellation, timeouts and testing. ")


def backend_run(backend: LlamaCppBackend, prompt_text: str, sequences: int, steps: int, tag: str) -> dict[str, float]:
    """The backend generating ``sequences`` sampled answers of up to ``steps`` tokens to one prompt (the
    first evaluates the prompt, the others share it); prefill time is what the context's prefill took."""
    cache = backend.cache
    spent = {"s": 0.0}
    plain = cache.prefill_many

    def timed_prefill(prompts, reuse):
        start = time.perf_counter()
        out = plain(prompts, reuse)
        spent["s"] += time.perf_counter() - start
        return out

    evaluated = cache.evaluated
    cache.keep_only(-1)
    cache.prefill_many = timed_prefill
    try:
        requests = [ChatRequest.chat([{"role": "user", "content": f"{prompt_text} ({tag})"}], temperature=TEMPERATURE,
                                     top_p=TOP_P, max_tokens=steps, seed=s) for s in range(sequences)]
        start = time.perf_counter()
        out = backend.generate(requests)
        wall = time.perf_counter() - start
    finally:
        del cache.prefill_many
    generated = sum(c.completion_tokens for c in out)
    evaluated = cache.evaluated - evaluated
    return {"prefill_tps": evaluated / spent["s"], "decode_tps": generated / (wall - spent["s"]),
            "generated": generated, "prompt_tokens": evaluated}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--batch-size", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=400)
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--json", default=None, help="write the figures here")
    ap.add_argument("--extra-bufts", choices=("probe", "on", "off"), default="probe",
                    help="llama.cpp's extra buffer types (CPU-repack kernels): as the kernel probe finds (as a stage "
                         "loads), or forced; off measures the plain kernels a crash falls back to")
    args = ap.parse_args()

    path = gguf_file(args.model)
    read, params = weight_bytes_and_params(path)
    bw, peak = bandwidth(args.threads), peak_flops(args.threads)

    backend = LlamaCppBackend(args.model, threads=args.threads, batch_size=args.batch_size,
                              max_model_len=max(2048, args.prompt_tokens + args.steps + 64),
                              extra_bufts={"probe": None, "on": True, "off": False}[args.extra_bufts])
    backend.speculative = False  # the plain loop (no-op before speculation exists)
    words = (LONG_TASK * 200).split()
    text = " ".join(words[:args.prompt_tokens * 3 // 4])
    while len(backend.render(ChatRequest.chat([{"role": "user", "content": text}]))) > args.prompt_tokens:
        text = text.rsplit(" ", 8)[0]
    prompt_ids = backend.render(ChatRequest.chat([{"role": "user", "content": text}]))

    backend_run(backend, "Say hi.", 1, 2, "warm-up")
    rows = {}
    for n in (1, args.batch_size):
        mine = backend_run(backend, text, n, args.steps, f"{n} sequences")
        theirs = own_loop(backend.cache, prompt_ids, n, args.steps)
        rows[n] = (mine, theirs)

    decode_bound = lambda n: min(n * bw / read, peak / (2 * params))  # noqa: E731
    prefill_bound = peak / (2 * params)
    table = []
    for n, (mine, theirs) in rows.items():
        table.append({"what": f"decode, {n} seq", "backend": mine["decode_tps"], "llama_cpp": theirs["decode_tps"],
                      "bound": decode_bound(n)})
    mine1, theirs1 = rows[1]
    table.insert(0, {"what": "prefill", "backend": mine1["prefill_tps"], "llama_cpp": theirs1["prefill_tps"],
                     "bound": prefill_bound})
    print(f"model: {path.name} ({read / 1e9:.2f} GB read per decode step, {params / 1e9:.2f} G parameters "
          f"multiplied per token); threads {args.threads}; extra buffer types {'on' if backend.extra_bufts else 'off'}")
    print(f"memory bandwidth {bw / 1e9:.1f} GB/s (numpy copy), float32 matmul peak {peak / 1e9:.1f} GFLOP/s "
          f"(torch; a proxy for the q4/int8 kernels)")
    print(f"prompt {len(prompt_ids)} tokens, {args.steps} decode steps, sampled (t {TEMPERATURE}, top-p {TOP_P})")
    print(f"{'tokens/s':<16}{'backend':>9}{'llama.cpp':>11}{'bound':>9}{'backend/llama.cpp':>19}"
          f"{'llama.cpp/bound':>17}")
    for r in table:
        r["backend_vs_llama_cpp"] = r["backend"] / r["llama_cpp"]
        r["llama_cpp_vs_bound"] = r["llama_cpp"] / r["bound"]
        print(f"{r['what']:<16}{r['backend']:>9.1f}{r['llama_cpp']:>11.1f}{r['bound']:>9.1f}"
              f"{r['backend_vs_llama_cpp']:>19.2f}{r['llama_cpp_vs_bound']:>17.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "model": str(path), "threads": args.threads, "batch_size": args.batch_size,
            "prompt_tokens": len(prompt_ids), "steps": args.steps, "extra_bufts": backend.extra_bufts, "bytes_per_step": read, "parameters": params,
            "bandwidth_bytes_s": bw, "peak_flops": peak, "rows": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
