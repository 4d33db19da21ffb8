"""Streams chat completions through Stockyard with the official OpenAI Python SDK.

Usage: python3 tests/sdk/openai_stream.py BASE_URL   (e.g. http://127.0.0.1:4200)

Driven by tests/streaming.rs, which scripts the upstream mocks:
  1. provider a answers 503, b streams "The answer is 42.";
  2. provider a fails inside the stream before any content, b streams the answer;
  3. provider a is interrupted after "Partial": the SDK must raise, not end quietly.
Prints one line per request; exits non-zero on anything unexpected.
"""

import sys

import openai


def run(client: openai.OpenAI, n: int) -> str:
    parts = []
    finish = None
    stream = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "What is the answer?"}],
        stream=True,
    )
    try:
        for chunk in stream:
            for choice in chunk.choices:
                if choice.delta is not None and choice.delta.content:
                    parts.append(choice.delta.content)
                if choice.finish_reason:
                    finish = choice.finish_reason
    except openai.APIError as e:
        if n != 3:
            raise
        return f"{n}: {''.join(parts)} [{type(e).__name__}]"
    return f"{n}: {''.join(parts)} [finish={finish}]"


def main() -> int:
    base = sys.argv[1].rstrip("/")
    # No SDK retries: the proxy alone must hide the failing provider.
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="stockyard-test-key", max_retries=0, timeout=20)
    for n in (1, 2, 3):
        print(run(client, n), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
