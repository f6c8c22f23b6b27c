"""The official `elevenlabs` Python SDK against our ElevenLabs simulator's REST text-to-speech.

Reads JSON on stdin: {"base_url", "api_key", "voice_id", "text"}. Converts the text with the
SDK's `text_to_speech.convert` (output `ulaw_8000`, as `generate-audio` asks for), then again
with a wrong key. Prints JSON: the bytes of audio received, and the status of the refusal.
"""

import json
import sys

from elevenlabs import ElevenLabs
from elevenlabs.core.api_error import ApiError


def main():
    request = json.load(sys.stdin)
    client = ElevenLabs(base_url=request["base_url"], api_key=request["api_key"], timeout=20)
    audio = b"".join(client.text_to_speech.convert(
        request["voice_id"], text=request["text"], model_id="eleven_flash_v2_5",
        output_format="ulaw_8000"))
    refused = None
    try:
        wrong = ElevenLabs(base_url=request["base_url"], api_key="not-the-key", timeout=20)
        b"".join(wrong.text_to_speech.convert(request["voice_id"], text=request["text"],
                                              output_format="ulaw_8000"))
    except ApiError as err:
        refused = err.status_code
    print(json.dumps({"audio_bytes": len(audio), "wrong_key_status": refused}))


if __name__ == "__main__":
    main()
