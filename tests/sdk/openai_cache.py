"""Reads cached answers through Stockyard with the official OpenAI Python SDK.

Usage: python3 tests/sdk/openai_cache.py BASE_URL   (e.g. http://127.0.0.1:4200)

Driven by tests/cache.rs (`openai_python_sdk_reads_cache_replays`), which scripts the mock upstream
and checks how many requests reached it. Every request has temperature 0, so it is cacheable:
  1. non-streamed Q1 (miss: the upstream answers and the answer is stored);
  2. streamed Q1 (hit: the stored JSON answer replayed as a chunk stream);
  3. streamed Q2 with include_usage (miss: stored once the stream completed);
  4. non-streamed Q2 (hit: answered from what the stream stored);
  5. streamed Q2 with include_usage (hit: the replay ends with the usage chunk);
  6. streamed Q3 with tools (miss: the upstream streams a tool call);
  7. streamed Q3 with tools (hit: the tool call replayed).
Prints one line per request; exits non-zero on anything unexpected.
"""

import sys

import openai

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def ask(q: str) -> list:
    return [{"role": "user", "content": q}]


def plain(client: openai.OpenAI, n: int, q: str) -> str:
    r = client.chat.completions.create(model="m", messages=ask(q), temperature=0)
    c = r.choices[0]
    return f"{n}: {c.message.content} [finish={c.finish_reason}] usage={r.usage.prompt_tokens}/{r.usage.completion_tokens}"


def streamed(client: openai.OpenAI, n: int, q: str, usage: bool = False, tools=None) -> str:
    kw = {}
    if usage:
        kw["stream_options"] = {"include_usage": True}
    if tools:
        kw["tools"] = tools
    stream = client.chat.completions.create(
        model="m", messages=ask(q), temperature=0, stream=True, **kw
    )
    parts, finish, seen_usage = [], None, None
    calls = {}
    role = None
    for chunk in stream:
        if chunk.usage is not None:
            seen_usage = f"{chunk.usage.prompt_tokens}/{chunk.usage.completion_tokens}"
        for choice in chunk.choices:
            d = choice.delta
            if d is not None:
                if d.role:
                    role = d.role
                if d.content:
                    parts.append(d.content)
                for tc in d.tool_calls or []:
                    slot = calls.setdefault(tc.index, {"id": None, "name": "", "args": ""})
                    if tc.id:
                        slot["id"] = tc.id
                    if tc.function is not None:
                        slot["name"] += tc.function.name or ""
                        slot["args"] += tc.function.arguments or ""
            if choice.finish_reason:
                finish = choice.finish_reason
    out = f"{n}: {''.join(parts)} [finish={finish}] role={role}"
    for i in sorted(calls):
        c = calls[i]
        out += f" tool={c['id']}:{c['name']}({c['args']})"
    if usage:
        out += f" usage={seen_usage}"
    return out


def main() -> int:
    base = sys.argv[1].rstrip("/")
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="stockyard-test-key", max_retries=0, timeout=20)
    print(plain(client, 1, "Q1"), flush=True)
    print(streamed(client, 2, "Q1"), flush=True)
    print(streamed(client, 3, "Q2", usage=True), flush=True)
    print(plain(client, 4, "Q2"), flush=True)
    print(streamed(client, 5, "Q2", usage=True), flush=True)
    print(streamed(client, 6, "Q3", tools=TOOLS), flush=True)
    print(streamed(client, 7, "Q3", tools=TOOLS), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
