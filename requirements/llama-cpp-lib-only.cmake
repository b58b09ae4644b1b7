# `make setup` builds llama-cpp-python from its sdist (PyPI has no wheel of it) with this file as
# CMAKE_PROJECT_llama.cpp_INCLUDE: it runs right after llama.cpp's project() call and turns off llama.cpp's
# `common` library (argument parsing, chat templates, downloads over cpp-httplib), which llama-cpp-python
# forces on but never loads. Only libllama and the ggml libraries it needs are compiled.
set(LLAMA_BUILD_COMMON OFF)
