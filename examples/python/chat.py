"""Chat through Stockyard with the official OpenAI Python SDK.

The only change from talking to OpenAI directly is `base_url`. Run Stockyard (`cargo run --release`),
then:

    pip install openai
    python3 examples/python/chat.py

Environment (all optional):
    OPENAI_BASE_URL   Stockyard's address (default http://localhost:4200/v1)
    OPENAI_API_KEY    one of Stockyard's `api_keys` if you set any; otherwise any string
    STOCKYARD_MODEL   the model or alias to ask for (default gpt-4o-mini)
"""

import os

from openai import OpenAI

client = OpenAI(
    base_url=os.environ.get("OPENAI_BASE_URL", "http://localhost:4200/v1"),
    api_key=os.environ.get("OPENAI_API_KEY", "stockyard"),
)
model = os.environ.get("STOCKYARD_MODEL", "gpt-4o-mini")
messages = [{"role": "user", "content": "Say hello in five words."}]

# 1. A plain request. `with_raw_response` is only here to show Stockyard's headers; a normal
#    `client.chat.completions.create(...)` works exactly the same.
raw = client.chat.completions.with_raw_response.create(model=model, messages=messages, max_tokens=32)
completion = raw.parse()
print("answer:", completion.choices[0].message.content)
print(
    "  provider: {}  model: {}  failover: {}  trace: {}".format(
        raw.headers.get("x-stockyard-provider"),
        raw.headers.get("x-stockyard-model"),
        raw.headers.get("x-stockyard-failover"),
        raw.headers.get("x-stockyard-trace-id"),
    )
)

# 2. Streaming: chunks arrive as the provider produces them. If the first provider fails before
#    its first token, Stockyard moves to the next one and the stream still looks like one answer.
stream = client.chat.completions.create(model=model, messages=messages, max_tokens=32, stream=True)
print("streamed: ", end="", flush=True)
finish = None
for chunk in stream:
    if not chunk.choices:
        continue
    choice = chunk.choices[0]
    if choice.delta.content:
        print(choice.delta.content, end="", flush=True)
    if choice.finish_reason:
        finish = choice.finish_reason
print()
print("  finish_reason:", finish)
