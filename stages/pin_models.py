"""models stage: pin every role's model to an identity, without loading any model.

Reads:  params.yaml `roles`; each role's local model folder, the local Hugging Face cache or the hub
        (hub ids), or the server's `GET /models` (openai roles)
Writes: models/identity.json -- {role: {backend, model, revision, identity, engine}}: identity is a sha256 of a
        local folder's weights, config and tokenizer files, the commit sha of a hub revision, or the model id a
        server serves (never its URL); engine the options the role's cache keys carry, with an hf role's
        `device: auto` / `dtype: auto` resolved on this machine (cpu/float32, or cuda/bfloat16 with a GPU)
Every model stage depends on its roles' entries of this file, never on a model folder. The stage always runs
(`always_changed`): weights replaced in place, a moved hub branch, a server serving another model are noticed
here; an unchanged folder costs a `stat` per file (digests remembered in .evolforge/model_hashes.json).
"""

import json

from evolforge.core.errors import run_stage
from evolforge.config.loader import load_params, load_role, section
from evolforge.io.records import write_json
from evolforge.core.stage import arguments
from evolforge.llm.identity import identity_entry, resolve_identity
from evolforge.llm.keys import resolved_engine

MEMO = ".evolforge/model_hashes.json"


def main() -> None:
    args = arguments(__doc__, writes=["--out"])
    params = load_params(args.params)
    entries = {}
    for name in sorted(section(params, "roles")):
        role = load_role(params, name)
        entries[name] = identity_entry(role, resolve_identity(role, memo=MEMO), engine=resolved_engine(role))
    # what each server is, as found: every setting it cannot honour, named where it is written, before any request
    from evolforge.config.bounds import ParamsError
    from evolforge.config.servers import server_problems

    kinds = {n: e["identity"].get("server", "openai") for n, e in entries.items() if e["backend"] == "openai"}
    problems = server_problems(params, kinds)
    if problems:
        raise ParamsError(problems)
    write_json(args.out, entries)
    for name, entry in entries.items():
        print(f"models: {name:<9} {entry['backend']:<6} {entry['model']} -> {json.dumps(entry['identity'])[:80]}")


if __name__ == "__main__":
    run_stage(main)
