#!/usr/bin/env bash
# Runs the whole test suite: unit tests, integration tests through the real server against mock
# upstreams, CLI tests, and the official OpenAI Python SDK streaming through Stockyard.
set -euo pipefail
cd "$(dirname "$0")/.."

# The SDK tests drive the proxy with the official `openai` Python package.
if ! python3 -c "import openai, anthropic" >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check -r tests/sdk/requirements.txt
fi

cargo test --locked "$@"
