#!/usr/bin/env bash
# Runs the whole test suite: unit tests, integration tests through the real server against mock
# upstreams, CLI tests, the official OpenAI/Anthropic Python SDKs and the examples/ apps through
# Stockyard, a real llama.cpp server as a local provider, and the README-vs-schema check.
set -euo pipefail
cd "$(dirname "$0")/.."

# The SDK tests and examples/python drive the proxy with the official `openai` and `anthropic`
# Python packages.
if ! python3 -c "import openai, anthropic" >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check -r tests/sdk/requirements.txt
fi

# tests/llama_cpp.rs runs a real llama.cpp server (llama-cpp-python) as a local provider; the
# wheel builds from source once (several minutes), then pip's cache serves it.
if ! python3 -c "import llama_cpp.server.app, gguf" >/dev/null 2>&1; then
  echo "installing llama-cpp-python[server] and gguf (builds llama.cpp from source once)..." >&2
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" python3 -m pip install --quiet --disable-pip-version-check \
    'llama-cpp-python[server]==0.3.36' 'gguf==0.19.0'
fi

cargo test --locked "$@"
