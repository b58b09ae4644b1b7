"""Which generation controls each backend honours, and why not where it does not (docs/controls.md): the tables
:func:`evolforge.config.roles.controls_problems` reads. An ``openai`` role's server is ``openai:<kind>`` once its
kind is known (``Role.server``, or found by the models stage); ``openai:any`` while it is not."""

# Generation controls each backend honours (docs/controls.md); any other is refused with one message.
CONTROL_NAMES = ("banned_strings", "assistant_prefix", "stop", "repetition_penalty", "no_repeat_ngram_size",
                 "frequency_penalty")
SUPPORTED_CONTROLS = {
    "hf": set(CONTROL_NAMES),
    "llamacpp": set(CONTROL_NAMES),
    "vllm": {"banned_strings", "assistant_prefix", "stop", "repetition_penalty", "frequency_penalty"},
    "openai": {"stop", "frequency_penalty"},
    # an openai role on a server whose kind is known (``server``, or found by the models stage): what its API offers
    "openai:vllm": {"banned_strings", "assistant_prefix", "stop", "repetition_penalty", "frequency_penalty"},
    "openai:llamacpp": {"banned_strings", "assistant_prefix", "stop", "repetition_penalty", "frequency_penalty"},
    # a server of a kind not known yet (server: auto): held to what vllm and llamacpp offer; the models stage,
    # which asks the server, checks what it is
    "openai:any": {"banned_strings", "assistant_prefix", "stop", "repetition_penalty", "frequency_penalty"},
    "ray": set(),
}
SERVER_KINDS = ("vllm", "llamacpp", "openai")  # what an openai role's server is (Role.server)
WHY_NOT = {
    ("vllm", "no_repeat_ngram_size"): "vLLM's sampling parameters have no n-gram ban; use repetition_penalty",
    ("openai", "banned_strings"): ("OpenAI's logit_bias bans single tokens of its own tokenizer, not strings; vLLM's "
                                    "server (bad_words) and llama.cpp's (a grammar) can: set the role's server"),
    ("openai", "assistant_prefix"): ("OpenAI's chat completions API cannot continue an assistant turn; vLLM's server "
                                      "(continue_final_message) and llama.cpp's (a grammar) can: set the role's "
                                      "server"),
    ("openai", "repetition_penalty"): ("not an OpenAI API parameter (use frequency_penalty); vLLM's and llama.cpp's "
                                        "servers take it: set the role's server"),
    ("openai", "no_repeat_ngram_size"): "no OpenAI-compatible server offers an n-gram ban; use repetition_penalty",
    ("openai:any", "no_repeat_ngram_size"): ("no OpenAI-compatible server (vLLM, llama.cpp, OpenAI) offers an n-gram "
                                             "ban; use repetition_penalty, or an in-process backend"),
    ("openai:vllm", "no_repeat_ngram_size"): ("vLLM's server has no n-gram ban among its request parameters; use "
                                              "repetition_penalty"),
    ("openai:llamacpp", "no_repeat_ngram_size"): ("llama.cpp's server has no n-gram ban among its request "
                                                  "parameters; use repetition_penalty"),
}
