"""The LLM layer: chat requests in, completions out, in the same order, through the call cache.

Every stage talks to models the same way::

    llms = load_llm_params(params, ("evolver",))   # evolforge.config.runtime: roles, llm, cache; parsed once
    cache = open_cache(llms.cache)                   # evolforge.llm.cache
    llm = open_role(llms.roles["evolver"], cache, llms.llm)  # an LLM that carries its role's defaults
    texts = llm.complete([llm.request([{"role": "user", "content": prompt}]) for prompt in prompts])
    llm.stats  # {"calls": ..., "cache_hits": ..., "failures": ..., "prompt_tokens": ..., ...}

Backends (``role.backend``, :mod:`evolforge.llm.backends`): ``hf`` (transformers in-process), ``llamacpp`` (a
GGUF file through llama.cpp on the CPU), ``vllm`` (vLLM offline engine, GPU extra), ``openai`` (any
OpenAI-compatible ``/v1/chat/completions`` server) and ``ray`` (a Ray Data pipeline over several copies of the
model, ray extra; docs/how-to/scale-ray.md). Tests use ``FakeBackend`` (:mod:`evolforge.llm.backends.fake`).

A request with ``choices`` gets exactly one of them where the backend can enforce it: hf masks every
token that leaves the set (see :class:`~evolforge.llm.choices.ChoiceTrie`), vllm uses its structured outputs
(``choice``), and a server gets ``response_format`` with an enum (or vLLM's ``structured_outputs``, per the
role's ``choice_format``). Callers still parse the text, so a server that ignores the constraint falls back to
the free-text parser.

One item's failure is that item's: a prompt that cannot fit, a rejected request or exhausted retries
comes back as a :class:`~evolforge.llm.types.Completion` with ``failure_reason`` set (never cached), while every
other completion is committed as it arrives. ``LLM.generate`` raises ``LLMFailureError`` -- after
committing everything it got -- only when the failures pass ``max_failure_rate`` of its requests; the stage's
end judges the rest (:class:`~evolforge.llm.accounting.Accounting`, checked by the stage runner).

Spend (tokens, cost, time) is recorded in the cache database and caps in ``llm.budget`` are enforced before
sending (:mod:`evolforge.llm.budget`: the rest ``budget_exhausted``, then :class:`BudgetExhaustedError`);
under ``EVOLFORGE_DRY_RUN`` nothing is sent and the misses are counted (:mod:`evolforge.llm.backends.dryrun`).

Modules: :mod:`~evolforge.llm.types` (completions, failures, what a backend provides), :mod:`~evolforge.llm.cached`
(the LLM of a role behind the cache, ``open_role``), :mod:`~evolforge.llm.accounting` (what each LLM's calls came
to, ``llm.stats``, and the stage's failure threshold), :mod:`~evolforge.llm.keys` (request seeds, engine options),
:mod:`~evolforge.llm.identity` (the model a role names, ``models/identity.json``), :mod:`~evolforge.llm.registry`
(the backends: ``hf``, ``llamacpp``, ``vllm``, ``openai``, ``ray``) and the backends themselves, one module (or
package) each in :mod:`evolforge.llm.backends` (with ``dryrun`` and the test double ``fake``).
"""
