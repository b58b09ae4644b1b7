"""Build what a GPU machine without a package index needs beside the checkout to run ``bench/gpu_probe.py``
(docs/how-to/gpu-probe.md), once, on a machine that has the checkout and the shipped Qwen model.

Writes two folders into the checkout and adds them to ``.git/info/exclude`` (git ignores them: copy them with the
checkout's tracked files)::

    tok-qwen/   the shipped Qwen GGUF folder's tokenizer: tokenizer.json gzipped, its config, its chat template
    .whl/       the wheels the GPU image lacks, for CPython 3.12 on manylinux x86-64, without dependencies

The wheels' versions are the GPU lock's (requirements/gpu.txt), except polars (1.20.0: polars 2's runtime wheel
alone would take most of ``LIMIT_MIB``, the size the two folders are kept under so that they travel with the
checkout) and liger-kernel (not in the lock: its Triton kernels are what the probe measures against eager
PyTorch). Prints the folders' size against ``LIMIT_MIB``.

    python tools/gpu_carry.py [--tokenizer models/Qwen2.5-Coder-1.5B-Instruct-GGUF]

Then copy ``tok-qwen`` and ``.whl`` with the checkout to the GPU machine and run the how-to's commands.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import subprocess
import sys
from pathlib import Path

from check_lock import read_lock  # this folder's lock reader (python puts a script's folder on the path)

ROOT = Path(__file__).resolve().parents[1]
FROM_LOCK = ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "orjson", "trl", "datasets", "dill",
             "multiprocess")
FIXED = {"polars": "1.20.0", "liger-kernel": "0.8.5"}
LIMIT_MIB = 64
TOKENIZER_FILES = ("tokenizer_config.json", "chat_template.jinja")


def locked_versions(lock: Path, names: tuple[str, ...]) -> dict[str, str]:
    """``name -> version`` of ``names`` (canonical names) as ``lock`` (a uv-compiled requirements file) pins them."""
    pins = read_lock(lock)
    missing = [n for n in names if n not in pins]
    if missing:
        raise SystemExit(f"{lock}: no pin for {', '.join(missing)}")
    return {n: pins[n]["version"] for n in names}


def tokenizer_folder(source: Path, out: Path) -> None:
    """``out`` holds ``source``'s tokenizer.json gzipped and its config and chat template as they are."""
    if not (source / "tokenizer.json").is_file():
        raise SystemExit(f"{source}: no tokenizer.json (run `dvc repro fetch_evolver` first, or give --tokenizer)")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with (source / "tokenizer.json").open("rb") as src, gzip.open(out / "tokenizer.json.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)


def download_wheels(pins: dict[str, str], out: Path) -> None:
    """Each ``name==version`` of ``pins`` as a CPython 3.12 manylinux x86-64 wheel in ``out``, no dependencies."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_17_x86_64",
                    "--dest", str(out), *(f"{n}=={v}" for n, v in pins.items())], check=True)


def exclude(root: Path, names: list[str]) -> None:
    """Add ``names`` to the checkout's ``.git/info/exclude`` (once each)."""
    path = root / ".git" / "info" / "exclude"
    path.parent.mkdir(parents=True, exist_ok=True)
    have = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    extra = [f"/{n}/" for n in names if f"/{n}/" not in have]
    if extra:
        path.write_text("\n".join([*have, *extra]) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, default=ROOT / "models/Qwen2.5-Coder-1.5B-Instruct-GGUF",
                        help="a folder with tokenizer.json (default: the shipped Qwen GGUF folder)")
    args = parser.parse_args()
    tokenizer_folder(args.tokenizer, ROOT / "tok-qwen")
    download_wheels({**locked_versions(ROOT / "requirements/gpu.txt", FROM_LOCK), **FIXED}, ROOT / ".whl")
    exclude(ROOT, ["tok-qwen", ".whl"])
    size = sum(f.stat().st_size for d in ("tok-qwen", ".whl") for f in (ROOT / d).rglob("*") if f.is_file())
    print(f"tok-qwen/ and .whl/: {size / 2**20:.1f} MiB to carry, beside the tracked files, of {LIMIT_MIB} MiB")


if __name__ == "__main__":
    main()
