"""Whether llama.cpp's extra buffer types run a model on this CPU, found once in a child process.

llama.cpp keeps a CPU's quantized weights in "extra" buffer types where it can: repacked for its CPU-repack
kernels (interleaved rows for AVX2 / AVX-512) and, in a build compiled with AMX (``-march=native`` on a Xeon
that has it), laid out for its AMX matrix kernels. Those kernels run only on quantized weights and only for a
batch of several rows (a prompt, several sequences), and one of them has crashed on some CPUs (the AMX kernels
on Q4_K_M: llama.cpp issue 20824, a segmentation fault in ``ggml_backend_amx_mul_mat``; ``make setup`` now
builds without them, docs/explanation/cpu-kernels.md). A crash in native code cannot be caught in the process
where it happens, so :func:`verdict` runs the model in a child process first, through the backend's own
:class:`~evolforge.llm.backends.llamacpp.context.LlamaCppContext`: a batched prompt evaluation of
:data:`PROMPT_TOKENS` tokens, then :data:`STEPS` steps of :data:`SEQUENCES` sequences together (one of them fed a
draft of several tokens). When the child dies by a signal, or its logits are not finite, the backend loads the
model with the extra buffer types off (llama.cpp's ``use_extra_bufts``: the plain kernels, a slower prefill)
and every cache key records it (``extra_bufts: false`` among the engine options,
:func:`evolforge.llm.keys.resolved_engine`), since other kernels round logits differently.

The verdict is kept in :data:`VERDICTS` (under the working directory, like the call cache) with a key of what
decides it: the llama.cpp build (llama-cpp-python's version and the sha256 of its native libraries), the CPU
(its name and flags), the model file (its path, size and modification time) and the GPU layers; so the child
runs once per build, CPU and model. It is kept for the machine too (:func:`machine_verdicts`: beside the
llama-cpp-python builds ``make setup`` keeps, under ``$XDG_CACHE_HOME`` or ``~/.cache``), keyed by the model folder's
digest (:func:`~evolforge.core.models.hash_model_dir`, the one ``models/identity.json`` pins, read from the models
stage's memo) instead of the file's path and time: a fresh clone on the same machine, build and CPU reads it there
rather than run the child again. A child that fails for another reason (the model does not load) decides nothing:
the backend then loads as usual and says what is wrong itself.

A role that sets ``extra.extra_bufts`` (true or false) is loaded as it says and never probed.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.util
import json
import math
import os
import platform
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the child imports this module: it needs no params layer
    from evolforge.config.roles import Role

VERDICTS = Path(".evolforge/llamacpp_kernels.json")
MACHINE_VERDICTS_ENV = "EVOLFORGE_KERNEL_VERDICTS"  # the machine's store instead of the default; empty: none
PROMPT_TOKENS = 96  # the batched prompt evaluation: over 64 rows, as a real prompt takes the matrix kernels
SEQUENCES = 4  # decoded together after it
STEPS = 3
CHILD_TIMEOUT_S = 600
NOT_FINITE = 3  # the child's exit status when a logit came back NaN or infinite
CRASHES = ("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT")  # signals of a fault in the code the child ran


@dataclass(frozen=True)
class Verdict:
    extra_bufts: bool  # load the model with llama.cpp's extra buffer types
    outcome: str  # what the child did: "ran", "killed by SIGSEGV", "logits not finite", "failed: ..."
    cpu: str  # the CPU's name, for messages
    probed: bool = False  # the child ran in this call (False: the verdict was kept)


def gguf_of(model: str) -> Path | None:
    """The one ``*.gguf`` file of a model folder (None when it has none or several: the backend refuses it)."""
    folder = Path(model)
    found = sorted(folder.glob("*.gguf")) if folder.is_dir() else []
    return found[0] if len(found) == 1 else None


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo's, else what the platform says)."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The CPU's feature flags as /proc/cpuinfo lists them (empty elsewhere: the name and machine stand in)."""
    return sorted(set((_cpuinfo().get("flags") or "").split()))


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


@functools.lru_cache(maxsize=1)
def build_identity() -> dict[str, str]:
    """llama-cpp-python's version and the sha256 of each native library it ships (the compiled llama.cpp)."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return {"llama_cpp": "missing"}
    package = Path(spec.origin).parent
    found = {"llama_cpp": _version(package)}
    for lib in sorted(p for p in package.rglob("*") if p.suffix in (".so", ".dylib", ".dll") and p.is_file()):
        found[lib.relative_to(package).as_posix()] = hashlib.sha256(lib.read_bytes()).hexdigest()
    return found


def _version(package: Path) -> str:
    for line in (package / "__init__.py").read_text(encoding="utf-8").splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    return "?"


def probe_key(path: Path, gpu_layers: int = 0, content: bool = False) -> str:
    """What decides the verdict, hashed: the build, the CPU, the model file (its path, size and time; ``content``:
    its folder's digest, as the machine's store keys it) and the GPU layers."""
    if content:
        from evolforge.core.models import MODEL_HASHES, hash_model_dir  # not in the child, which needs neither

        model: list = ["folder_sha256", hash_model_dir(path.parent, memo=MODEL_HASHES)]
    else:
        stat = path.stat()
        model = [str(path.resolve()), stat.st_size, stat.st_mtime_ns]
    what = {"build": build_identity(), "cpu": [cpu_name(), platform.machine(), cpu_flags()], "model": model,
            "gpu_layers": gpu_layers}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode("utf-8")).hexdigest()


def machine_verdicts() -> Path | None:
    """The machine's store of verdicts: ``$EVOLFORGE_KERNEL_VERDICTS`` (empty: none), else
    ``evolforge/llamacpp_kernels.json`` under ``$XDG_CACHE_HOME`` or ``~/.cache``."""
    chosen = os.environ.get(MACHINE_VERDICTS_ENV)
    if chosen is not None:
        return Path(chosen) if chosen else None
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "evolforge" / "llamacpp_kernels.json"


_SEEN: dict[str, Verdict] = {}  # this process's verdicts, undecided ones included (a failed child runs once)


def verdict(path: Path, gpu_layers: int = 0, threads: int = 2, store: Path | None = None) -> Verdict:
    """Whether the model at ``path`` runs with llama.cpp's extra buffer types here: kept in ``store``
    (:data:`VERDICTS`), else found by a child process (and kept, when it decided)."""
    store = VERDICTS if store is None else store
    key = probe_key(path, gpu_layers)
    if key in _SEEN:
        return _SEEN[key]
    kept = _read(store).get(key)
    machine = machine_verdicts()
    content = probe_key(path, gpu_layers, content=True) if kept is None and machine is not None else None
    if content is not None and (kept := _read(machine).get(content)) is not None:
        _write(store, key, kept)  # the machine's verdict on these bytes; from now on found by the cheap key
    if kept is not None:
        found = Verdict(bool(kept["extra_bufts"]), str(kept["outcome"]), str(kept["cpu"]))
    else:
        outcome = _run_child(path, gpu_layers, threads)
        found = Verdict(not outcome.startswith(("killed", "logits")), outcome, cpu_name(), probed=True)
        if not outcome.startswith("failed"):
            entry = {"extra_bufts": found.extra_bufts, "outcome": outcome, "cpu": found.cpu, "model": str(path),
                     "llama_cpp": build_identity()["llama_cpp"]}
            _write(store, key, entry)
            if content is not None:
                try:
                    _write(machine, content, entry)
                except OSError:  # a home without a writable cache: the working directory's store still has it
                    pass
        then = "" if found.extra_bufts else "; it loads with them off"
        print(f"llamacpp: {path.name} on this CPU ({found.cpu}) with llama.cpp's extra buffer types: {outcome} "
              f"({PROMPT_TOKENS}-token prompt, {SEQUENCES} sequences){then}", file=sys.stderr, flush=True)
    _SEEN[key] = found
    return found


def probed_extra_bufts(role: Role) -> bool:
    """Whether ``role`` (a llamacpp role that leaves ``extra.extra_bufts`` unset) loads its model with the
    extra buffer types: the probe's verdict, true where the folder has no single GGUF (the backend refuses it)."""
    path = gguf_of(role.model)
    if path is None:
        return True
    return verdict(path, int(role.extra.get("gpu_layers", 0)), threads=role.settings.threads or 2).extra_bufts


def _run_child(path: Path, gpu_layers: int, threads: int) -> str:
    command = [sys.executable, "-m", "evolforge.llm.backends.llamacpp.probe", str(path),
               "--gpu-layers", str(gpu_layers), "--threads", str(threads)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"failed: no answer in {CHILD_TIMEOUT_S} s"
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        # a fault of the code that ran decides; a kill from outside (the OOM killer's SIGKILL, a SIGTERM) does not
        return f"killed by {name}" if name in CRASHES else f"failed: killed by {name}"
    if done.returncode == NOT_FINITE:
        return "logits not finite"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return f"failed: exit status {done.returncode}: {last}"
    return "ran"


def _read(store: Path) -> dict:
    try:
        found = json.loads(store.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _write(store: Path, key: str, entry: dict) -> None:
    """Add one verdict (written beside the file, then renamed: never a half file)."""
    store.parent.mkdir(parents=True, exist_ok=True)
    found = {**_read(store), key: entry}
    part = store.with_name(f".{store.name}.{os.getpid()}")
    part.write_text(json.dumps(found, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(part, store)


def main(argv: list[str] | None = None) -> None:
    """The child: load the model with the extra buffer types, evaluate a batched prompt in one sequence and
    parts of others, then decode a few steps of all of them together (one sequence fed a three-token draft)."""
    ap = argparse.ArgumentParser(description="llamacpp's kernel probe (run by verdict(), in a child process)")
    ap.add_argument("gguf")
    ap.add_argument("--gpu-layers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    from evolforge.llm.backends.llamacpp.context import LlamaCppContext

    cache = LlamaCppContext(Path(args.gguf), tokens=4 * PROMPT_TOKENS * SEQUENCES, threads=args.threads,
                            gpu_layers=args.gpu_layers, extra_bufts=True)
    vocab = cache.n_vocab
    prompt = [(17 + 7919 * i) % vocab for i in range(PROMPT_TOKENS)]  # any tokens: the kernels are what is run
    rows = [cache.prefill(0, prompt, reuse=False)]
    for seq in range(1, SEQUENCES):  # half shared with sequence 0, half its own: another batch of many rows
        rows.append(cache.prefill(seq, prompt[:PROMPT_TOKENS // 2] + prompt[PROMPT_TOKENS // 2 + seq:], reuse=True))
    for _ in range(STEPS):
        feeds = [(seq, [int(row.argmax()), *(prompt[:3] if seq == 0 else [])]) for seq, row in enumerate(rows)]
        rows = [list(logits)[-1] for logits in cache.extend(feeds)]
    finite = all(math.isfinite(float(row.sum())) for row in rows)
    sys.exit(0 if finite else NOT_FINITE)


if __name__ == "__main__":
    main()
