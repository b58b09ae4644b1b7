"""docs/how-to/servers.md "vLLM's server, step by step" as written: its params block, applied to the shipped
params.yaml as the page says (the four chat roles' blocks replaced, the n-gram bans of evolve.controls and
optimize.controls set to null), passes `evolforge check`, and the server command is one vLLM's entry point takes.
tests/test_vllm_server.py starts that command and runs the stages on those params (make test-vllm)."""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from evolforge.schema import load_params

REPO = Path(__file__).resolve().parents[1]
SECTION = "## vLLM's server, step by step"
CHAT_ROLES = ("evolver", "optimizer", "responder", "judge")


def section(repo: Path = REPO) -> str:
    page = (repo / "docs/how-to/servers.md").read_text(encoding="utf-8")
    return page.split(SECTION, 1)[1].split("\n## ", 1)[0]


def docs_block(repo: Path = REPO) -> dict:
    """The section's params block."""
    return yaml.safe_load(re.findall(r"```yaml\n(.*?)```", section(repo), re.S)[0])


def docs_params(repo: Path = REPO) -> dict:
    """The shipped params.yaml with the section's block applied as the page says."""
    params = copy.deepcopy(load_params(repo / "params.yaml"))
    block = docs_block(repo)
    for name in CHAT_ROLES:
        params["roles"][name] = copy.deepcopy(block["roles"][name])
    for part in ("evolve", "optimize"):
        params[part]["controls"].update(block[part]["controls"])
    return params


def docs_server_command(repo: Path = REPO) -> list[str]:
    """The CPU build's server command (the section's first bash block), as words, without its ``&``."""
    command = re.findall(r"```bash\n(.*?)```", section(repo), re.S)[0]
    words = shlex.split(command.replace("\\\n", " "))
    return words[:-1] if words[-1] == "&" else words


def test_the_docs_params_block_passes_the_check(tmp_path):
    params = docs_params()
    assert set(docs_block()["roles"]) == set(CHAT_ROLES)
    for name in CHAT_ROLES:
        role = params["roles"][name]
        assert role["server"] == "vllm" and role["send_seed"] is False and "batch_size" not in role
        shipped = load_params(REPO / "params.yaml")["roles"][name]  # the shipped sampling, kept
        assert {k: role.get(k) for k in ("temperature", "top_p", "max_tokens")} == \
            {k: shipped.get(k) for k in ("temperature", "top_p", "max_tokens")}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "evolforge.cli", "check", str(path)], capture_output=True, text=True,
                          cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr

    # what the page says cannot go to a server is refused as written: a role's batch_size, an n-gram ban
    for edit, refused in ((lambda p: p["roles"]["judge"].update(batch_size=6), "roles.judge.batch_size"),
                          (lambda p: p["optimize"]["controls"].update(no_repeat_ngram_size=8),
                           "optimize.controls.no_repeat_ngram_size")):
        wrong = docs_params()
        edit(wrong)
        path.write_text(yaml.safe_dump(wrong), encoding="utf-8")
        done = subprocess.run([sys.executable, "-m", "evolforge.cli", "check", str(path)], capture_output=True,
                              text=True, cwd=REPO)
        assert done.returncode != 0 and refused in done.stderr + done.stdout, done.stderr


def test_the_docs_server_command_is_vllms_entry_point_with_float32():
    words = docs_server_command()
    assert words[:3] == [".venv-vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    options = dict(zip(words[3::2], words[4::2]))
    assert options["--dtype"] == "float32" and options["--served-model-name"] == docs_block()["roles"]["judge"]["model"]
    assert options["--model"] == docs_block()["roles"]["judge"]["tokenizer"]
    assert int(options["--max-model-len"]) == docs_block()["roles"]["judge"]["max_model_len"]
    assert docs_block()["roles"]["judge"]["base_url"] == f"http://{options['--host']}:{options['--port']}/v1"
