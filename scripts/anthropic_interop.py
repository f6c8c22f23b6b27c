"""The official `anthropic` Python SDK against our Anthropic simulator.

Reads {"base_url", "key", "wrong_key"} as JSON on stdin; streams one reply with `api_key=`, one
with `auth_token=`, and tries a wrong key; prints what the SDK saw as JSON for the Rust test.
"""

import json
import sys

import anthropic
from anthropic import _constants


def stream(client):
    with client.messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=64,
        messages=[{"role": "user", "content": "Hello, are you there?"}],
    ) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    return {
        "text": text,
        "stop_reason": final.stop_reason,
        "final_text": "".join(b.text for b in final.content if b.type == "text"),
        "output_tokens": final.usage.output_tokens,
    }


def main():
    args = json.load(sys.stdin)
    common = {"base_url": args["base_url"], "timeout": 20.0, "max_retries": 0}
    out = {
        "sdk_version": anthropic.__version__,
        "api_version": _constants.ANTHROPIC_API_VERSION,
        "api_key": stream(anthropic.Anthropic(api_key=args["key"], **common)),
        "auth_token": stream(
            anthropic.Anthropic(api_key=None, auth_token=args["key"], **common)
        ),
    }
    try:
        stream(anthropic.Anthropic(api_key=args["wrong_key"], **common))
        out["wrong_key"] = "accepted"
    except anthropic.APIStatusError as err:
        out["wrong_key"] = {"status": err.status_code, "type": err.body["error"]["type"]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
