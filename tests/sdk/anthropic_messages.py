"""Calls Stockyard's /v1/messages with the official Anthropic Python SDK, answered by an
OpenAI-compatible upstream (driven by tests/anthropic.rs).

Usage: python3 tests/sdk/anthropic_messages.py BASE_URL
Prints the text of a non-streaming and a streaming answer; exits non-zero on anything unexpected.
"""

import sys

import anthropic


def main() -> None:
    client = anthropic.Anthropic(base_url=sys.argv[1], api_key="stockyard-test-key", max_retries=0)
    msg = client.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=64,
        system="be brief",
        messages=[{"role": "user", "content": "hi"}],
    )
    assert msg.type == "message", msg
    assert msg.stop_reason == "end_turn", msg.stop_reason
    text = "".join(b.text for b in msg.content if b.type == "text")
    print("plain:", text)
    print("usage:", msg.usage.input_tokens, msg.usage.output_tokens)

    with client.messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=64,
        messages=[{"role": "user", "content": "hi"}],
    ) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    print("stream:", streamed)
    print("stream stop:", final.stop_reason)


if __name__ == "__main__":
    main()
