"""models stage: pin every role's model to an identity, without loading any model.

Reads:  params.yaml, checked whole (the stages after it type only their own sections), for its `roles`;
        each role's local model folder, the local Hugging Face cache or the hub (hub ids), or `GET /models`
Writes: models/identity.json -- {role: {backend, model, revision, identity, engine}}: identity is a sha256 of a
        local folder's weights, config and tokenizer files, a hub revision's commit sha, or the model id a server
        serves (never its URL); engine the options its cache keys carry (hf `auto` device, dtype resolved here)
Every model stage depends on its roles' entries of this file, never on a model folder. Always run (`always_changed`):
weights replaced in place, a moved hub branch, a server serving another model are noticed here; an unchanged
folder costs a `stat` per file (digests remembered in .evolforge/model_hashes.json).
"""

import json

from evolforge.core.errors import run_stage
from evolforge.config.roles import load_role
from evolforge.io.records import write_json
from evolforge.core.stage import arguments
from evolforge.schema import load_params
from evolforge.llm.identity import identity_entry
from evolforge.llm.pinning import resolve_identity
from evolforge.llm.keys import resolved_engine

MEMO = ".evolforge/model_hashes.json"


def main() -> None:
    args = arguments(__doc__, writes=["--out"])
    params = load_params(args.params)
    entries = {}
    for name in sorted(params.get("roles") or {}):
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
