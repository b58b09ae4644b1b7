"""GPU checks (a GPU machine only; never run by tests or CI): generation and scoring throughput of a ~1B model
against the device's bf16 peak.

Three phases, each in its own process so that one engine's GPU memory is free before the next starts:

1. ``engine``:   the vllm backend, one engine on one GPU, through the LLM layer as the stages call it;
2. ``replicas``: two data-parallel replicas behind the openai backend with a role ``base_urls`` list: two
   ``vllm serve`` processes started here (one per GPU with two GPUs, both on GPU 0 at half the memory
   each with one), or with ``--data-parallel-size`` one ``vllm serve --data-parallel-size 2`` (two GPUs);
3. ``score``:    the IFD scorer (:func:`evolforge.score.ifd.ifd_scores`, template raw) on synthetic items.

Prints, per phase, tokens/s (generated tokens; scored tokens for the scorer), tokens/s per GPU and the
fraction of the GPUs' dense bf16 peak that 2 x parameters FLOPs per token makes (attention's FLOPs left
out, so the fraction is a floor), and how many greedy texts of the replicas equal the single engine's.

    python bench/gpu.py [--model Qwen/Qwen2.5-1.5B-Instruct] [--n 512] [--max-tokens 256] [--phases engine,replicas,score]

Needs CUDA, the gpu extra (vllm, and its ``vllm`` command for the replicas) and the model in the hub
cache or a local folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
# Dense (no sparsity) bf16 tensor-core peaks, FLOP/s, from the vendors' data sheets; the first name found in
# torch.cuda.get_device_name wins, so the more specific names come first.
BF16_PEAK = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
             ("A100", 312e12), ("L40S", 362e12)]


def bf16_peak(device_name: str) -> float | None:
    return next((peak for name, peak in BF16_PEAK if name in device_name), None)


def requests(n: int, max_tokens: int):
    """Real evolving and response prompts over the demo seeds (bench/generation.py's), greedy."""
    sys.path.insert(0, str(BENCH))
    from generation import prompts_for

    from evolforge.llm.requests import ChatRequest

    return [ChatRequest.chat([{"role": "user", "content": p}], max_tokens=max_tokens) for p in prompts_for(n)]


def generated(llm, reqs) -> dict:
    start = time.perf_counter()
    out = llm.generate(reqs)
    seconds = time.perf_counter() - start
    failed = [c for c in out if c.failed]
    if failed:
        raise SystemExit(f"{len(failed)} of {len(reqs)} requests failed; first: {failed[0].failure_reason}: {failed[0].error}")
    return {"seconds": seconds, "tokens": sum(c.completion_tokens or 0 for c in out), "texts": [c.text for c in out]}


def phase_engine(args) -> dict:
    from evolforge.llm.cached import LLM
    from evolforge.llm.backends.vllm.backend import VLLMBackend

    backend = VLLMBackend(args.model, dtype="bfloat16", max_model_len=args.max_model_len)
    llm = LLM(backend, None, batch_size=len(args.reqs))
    llm.generate(args.reqs[:8])  # warm-up: CUDA graphs and the first batch
    return {**generated(llm, args.reqs), "gpus": 1}


def phase_replicas(args) -> dict:
    import torch

    from evolforge.config.backend_settings import OpenAISettings
    from evolforge.config.roles import Role
    from evolforge.llm.cached import LLM
    from evolforge.llm.backends.openai.served import wait_until_serving
    from evolforge.llm.registry import make_backend

    if "base_urls" not in {f.name for f in dataclasses.fields(OpenAISettings)}:
        raise SystemExit("this checkout's openai roles have no base_urls (several servers for one role): "
                         "the replicas phase needs it")
    vllm = shutil.which("vllm")
    if vllm is None:
        raise SystemExit("the replicas phase starts `vllm serve`; no `vllm` command on PATH (the gpu extra)")
    gpus = torch.cuda.device_count()
    if args.data_parallel_size and gpus < 2:
        raise SystemExit(f"--data-parallel-size needs two GPUs; this machine has {gpus}")
    common = ["serve", args.model, "--dtype", "bfloat16", "--max-model-len", str(args.max_model_len), "--seed", "0"]
    if args.data_parallel_size:
        plans = [({}, [*common, "--data-parallel-size", "2", "--port", str(args.port)])]
    else:  # two servers: a GPU each, or halves of one GPU
        share = "0.9" if gpus >= 2 else "0.42"
        plans = [({"CUDA_VISIBLE_DEVICES": str(i if gpus >= 2 else 0)},
                  [*common, "--gpu-memory-utilization", share, "--port", str(args.port + i)]) for i in range(2)]
    logs = Path(tempfile.mkdtemp(prefix="evolforge-gpu-bench-"))
    servers = []
    try:
        for i, (env, argv) in enumerate(plans):
            log = logs / f"server{i}.log"
            server = subprocess.Popen([vllm, *argv], env={**os.environ, **env}, stdout=log.open("w"),
                                      stderr=subprocess.STDOUT, start_new_session=True)
            servers.append((server, log, f"http://127.0.0.1:{argv[argv.index('--port') + 1]}/v1"))
        for server, log, url in servers:
            try:
                wait_until_serving(url, server, log, args.startup_timeout, every_s=3)
            except RuntimeError as err:
                raise SystemExit(f"vllm serve: {err}") from None
        role = Role(name="evolver", backend="openai", model=args.model, max_tokens=args.max_tokens,
                    settings=OpenAISettings(base_urls=[url for _, _, url in servers], concurrency=args.concurrency,
                                            timeout_s=600.0))
        llm = LLM(make_backend(role), None, role=role)
        llm.generate(args.reqs[:8])  # warm-up
        return {**generated(llm, args.reqs), "gpus": min(gpus, 2)}
    finally:
        for server, _, _ in servers:  # each server's whole process group (the API process and its engine)
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
        for server, _, _ in servers:
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)


def phase_score(args) -> dict:
    import torch

    sys.path.insert(0, str(BENCH))
    from score import synth_items

    from evolforge.core.models import load_scorer
    from evolforge.score.ifd import ifd_scores

    model, tokenizer = load_scorer(args.model, dtype="bfloat16", device="cuda")
    items = synth_items(args.score_items, seed=0)
    ifd_scores(model, tokenizer, **{k: v[:8] for k, v in items.items()}, progress=False)  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    ifd_scores(model, tokenizer, items["instructions"], items["inputs"], items["responses"], progress=False)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    # tokens of the two forward passes per item (raw template): Q + "\n" + A, and A alone
    tokens = 0
    for instruction, input_text, response in zip(items["instructions"], items["inputs"], items["responses"]):
        question = instruction + ("\n" + input_text if input_text else "")
        tokens += len(tokenizer(question + "\n" + response)["input_ids"]) + len(tokenizer(response)["input_ids"])
    return {"seconds": seconds, "tokens": tokens, "gpus": 1}


PHASES = {"engine": phase_engine, "replicas": phase_replicas, "score": phase_score}


def parameters(model: str) -> int:
    """The model's parameter count, from its config on the meta device (nothing is loaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model)).parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="Qwen/Qwen2.5-1.5B-Instruct", help="hub id or local folder")
    ap.add_argument("--n", type=int, default=512, help="generation requests per phase")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--score-items", type=int, default=1024)
    ap.add_argument("--concurrency", type=int, default=128, help="requests in flight per replica (openai backend)")
    ap.add_argument("--data-parallel-size", action="store_true", help="one `vllm serve --data-parallel-size 2`")
    ap.add_argument("--port", type=int, default=8100)
    ap.add_argument("--startup-timeout", type=float, default=900.0, help="seconds a server may take to load")
    ap.add_argument("--phases", default="engine,replicas,score")
    ap.add_argument("--phase", help=argparse.SUPPRESS)  # internal: run one phase, print its JSON result
    args = ap.parse_args()
    unknown = set(args.phases.split(",")) - set(PHASES)
    if unknown:
        ap.error(f"--phases: unknown {', '.join(sorted(unknown))}; choose from {', '.join(PHASES)}")

    import torch

    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py needs a CUDA GPU: torch.cuda.is_available() is False on this machine "
                         "(for CPU benchmarks see bench/generation.py and bench/score.py)")
    if args.phase:
        args.reqs = requests(args.n, args.max_tokens)
        print("RESULT " + json.dumps(PHASES[args.phase](args)), flush=True)
        return

    device = torch.cuda.get_device_name(0)
    peak, params = bf16_peak(device), parameters(args.model)
    print(f"{device} x {torch.cuda.device_count()}; bf16 peak {peak / 1e12:.0f} TFLOP/s per GPU" if peak else
          f"{device}: no bf16 peak on record (known: {', '.join(name for name, _ in BF16_PEAK)})")
    print(f"model {args.model}: {params / 1e9:.2f} B parameters; {args.n} greedy requests, max_tokens {args.max_tokens}")
    results = {}
    for phase in args.phases.split(","):
        # the child's own messages pass through; its last line holds the result
        child = subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--phase", phase], stdout=subprocess.PIPE,
                                 text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                     [str(REPO / "src"), os.environ.get("PYTHONPATH", "")])})
        lines = []
        for line in child.stdout:
            if line.startswith("RESULT "):
                lines.append(line)
            else:
                sys.stdout.write(line)
        if child.wait() != 0 or not lines:
            print(f"{phase:<9} failed (exit {child.returncode}); its own messages are above")
            continue
        results[phase] = result = json.loads(lines[-1][len("RESULT "):])
        rate = result["tokens"] / result["seconds"]
        per_gpu = rate / result["gpus"]
        share = f"{2 * params * per_gpu / peak:7.1%} of bf16 peak" if peak else ""
        print(f"{phase:<9} {result['seconds']:8.1f} s {rate:10.0f} tokens/s {per_gpu:10.0f} per GPU ({result['gpus']}) {share}")
    if "engine" in results and "replicas" in results:
        same = sum(a == b for a, b in zip(results["engine"]["texts"], results["replicas"]["texts"]))
        print(f"greedy texts of the replicas equal to the single engine's: {same} of {args.n}")


if __name__ == "__main__":
    main()
