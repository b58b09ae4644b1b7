# `make setup` builds llama-cpp-python from its sdist (PyPI has no wheel of it) with this file as
# CMAKE_PROJECT_llama.cpp_INCLUDE: it runs right after llama.cpp's project() call and turns off llama.cpp's
# `common` library (argument parsing, chat templates, downloads over cpp-httplib), which llama-cpp-python
# forces on but never loads. Only libllama and the ggml libraries it needs are compiled.
set(LLAMA_BUILD_COMMON OFF)
# libllama builds the compute graph, loads the model, tokenizes and manages the KV cache: no per-token arithmetic,
# which is all in ggml's libraries (their optimization unchanged). Compiled at -O1 (after the build type's -O3, so
# it wins) its compile takes about 70 % of the time it takes at -O3, and the logits are the same bit for bit
# (docs/reference/dependencies.md). Deferred to the end of llama.cpp's CMakeLists, where the target exists.
cmake_language(DEFER CALL target_compile_options llama PRIVATE -O1)
