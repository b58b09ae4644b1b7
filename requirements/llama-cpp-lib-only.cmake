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
# llama.cpp compiles its model files (src/models/*.cpp) as unity batches of 16, one compiler run a batch, and its
# other 32 sources one run each, every run parsing the same headers again. EVOLFORGE_LLAMA_UNITY (on by default)
# puts those 32 in the batches too: the pinned sdist then compiles 12 batches instead of 10 batches and 32 files,
# libllama's compile about a quarter shorter, the logits the same bit for bit. Upstream keeps them out because two
# of them can define the same static function (batches of 32 put llama-graph.cpp and llama-kv-cache-dsv4.cpp
# together, and the compile fails); the pinned sdist's batches of 16 do not. Where another version fails so:
# `make setup CMAKE_ARGS=-DEVOLFORGE_LLAMA_UNITY=OFF`.
option(EVOLFORGE_LLAMA_UNITY "compile libllama's own sources in llama.cpp's unity batches too" ON)
function(evolforge_llama_unity)
  get_target_property(sources llama SOURCES)
  get_target_property(dir llama SOURCE_DIR)
  # the sources are named relative to src/, where their properties live; a relative name here would mean this folder
  list(TRANSFORM sources PREPEND "${dir}/" REGEX "^[^/]")
  set_source_files_properties(${sources} DIRECTORY "${dir}" PROPERTIES SKIP_UNITY_BUILD_INCLUSION OFF)
endfunction()
if(EVOLFORGE_LLAMA_UNITY)
  cmake_language(DEFER CALL evolforge_llama_unity)
endif()
