"""The official `elevenlabs` Python SDK's WebSocket clients against our ElevenLabs simulator.

Usage: elevenlabs_ws_interop.py stt|tts|multi, with JSON on stdin; prints JSON. Ends by itself
within about 20 s whatever the simulator does (every wait is bounded).

stt — realtime speech-to-text (`client.speech_to_text.realtime.connect`, i.e.
  `elevenlabs/realtime/scribe.py` and `realtime/connection.py`), configured as our server
  configures it: ulaw_8000 at 8000 Hz, VAD commits. Input: {"base_url" (http://…),
  "api_key", "model_id", "language_code", "vad_silence_threshold_secs", "chunks": [base64
  μ-law, …], "wait_for_commits"}. Sends every chunk with `connection.send`, waits for
  `wait_for_commits` committed transcripts (at most 10 s), closes. Prints the URL the SDK
  opened, the events it emitted (type and data), and whether a wrong key was refused.

tts — streaming text-to-speech over `stream-input`
  (`client.text_to_speech.convert_realtime`, `elevenlabs/realtime_tts.py`). Input:
  {"base_url" (http://…), "ws_base_url" (ws://…), "api_key", "voice_id", "model_id",
  "text"}. The SDK always rewrites the client's base URL to `wss://`; the simulator speaks
  plain `ws://` on loopback, so the script points the client's `_ws_base_url` at it.
  Everything else (path, query, headers, messages, how the stream ends) is the SDK's own.
  Prints the URL and headers it sent, the bytes of audio it yielded, every message it
  received, and the error it raised, if any.

multi — the multi-context socket (`multi-stream-input`). The SDK has no client for it, only
  its message types (`InitialiseContext`, `KeepContextAlive`, `SendTextMulti`,
  `CloseContext`, `CloseSocket`; replies `AudioOutputMulti`, `FinalOutputMulti`). Input:
  {"ws_base_url", "api_key", "voice_id", "model_id", "text", "client_messages": [what our
  client sent, as JSON]}. Speaks `text` in one context with messages the SDK's types build
  and serialize, reads every reply through the SDK's reply types, then closes the socket.
  Also reads each of `client_messages` through the SDK's request type it claims to be. Asks
  for `sync_alignment`. Prints the replies' kinds and contexts, the audio bytes, the
  characters of their alignment, the close code, and every message (ours or the simulator's)
  the SDK's types refused.
"""

import asyncio
import base64
import json
import re
import sys
import threading
import time

import elevenlabs.realtime.scribe as scribe
import elevenlabs.realtime_tts as realtime_tts
from elevenlabs import ElevenLabs
from elevenlabs.realtime import AudioFormat, CommitStrategy, RealtimeEvents

STT_EVENTS = [
    RealtimeEvents.SESSION_STARTED,
    RealtimeEvents.PARTIAL_TRANSCRIPT,
    RealtimeEvents.COMMITTED_TRANSCRIPT,
    RealtimeEvents.COMMITTED_TRANSCRIPT_WITH_TIMESTAMPS,
    RealtimeEvents.ERROR,
]


async def stt(request):
    seen = {}
    original_connect = scribe.websocket_connect

    def spy_connect(url, **kwargs):
        seen["url"] = url
        seen["headers"] = sorted(kwargs.get("additional_headers", {}).keys())
        return original_connect(url, open_timeout=5, **kwargs)

    scribe.websocket_connect = spy_connect
    options = {
        "model_id": request["model_id"],
        "audio_format": AudioFormat.ULAW_8000,
        "sample_rate": 8000,
        "commit_strategy": CommitStrategy.VAD,
        "vad_silence_threshold_secs": request["vad_silence_threshold_secs"],
        "language_code": request["language_code"],
    }
    client = ElevenLabs(base_url=request["base_url"], api_key=request["api_key"], timeout=10)
    # Awaited directly (the handshake is bounded by open_timeout above): `connect` starts the
    # SDK's reader task, and handlers registered before the loop next runs see every event,
    # `session_started` included.
    connection = await client.speech_to_text.realtime.connect(options)

    events = []
    committed = asyncio.Event()
    closed = []

    def record(kind):
        def handler(data):
            events.append({"event": kind.value, "data": data})
            if kind == RealtimeEvents.COMMITTED_TRANSCRIPT and sum(
                    e["event"] == "committed_transcript" for e in events) >= request.get(
                        "wait_for_commits", 1):
                committed.set()
        return handler

    for kind in STT_EVENTS:
        connection.on(kind, record(kind))
    connection.on(RealtimeEvents.CLOSE, lambda info: closed.append(info))

    for chunk in request["chunks"]:
        await asyncio.wait_for(connection.send({"audio_base_64": chunk}), 5)
    try:
        await asyncio.wait_for(committed.wait(), 10)
    except asyncio.TimeoutError:
        pass
    await asyncio.wait_for(connection.close(), 5)

    # The same connection with a key the service does not know.
    wrong_key_status = None
    wrong = ElevenLabs(base_url=request["base_url"], api_key="not-the-key", timeout=10)
    try:
        refused = await asyncio.wait_for(wrong.speech_to_text.realtime.connect(options), 6)
        await refused.close()
    except Exception as err:  # websockets' InvalidStatus carries the HTTP response
        response = getattr(err, "response", None)
        wrong_key_status = getattr(response, "status_code", repr(err))
    return {
        "url": seen.get("url"),
        "headers": seen.get("headers"),
        "events": events,
        "close": closed[0] if closed else None,
        "wrong_key_status": wrong_key_status,
    }


class SpySocket:
    """The SDK's sync WebSocket, recording every message it receives."""

    def __init__(self, socket, received):
        self._socket = socket
        self._received = received

    def __enter__(self):
        self._socket.__enter__()
        return self

    def __exit__(self, *exc):
        return self._socket.__exit__(*exc)

    def send(self, message):
        return self._socket.send(message)

    def recv(self, timeout=None):
        # The SDK's final loop waits with no timeout; bound it so the script always ends.
        message = self._socket.recv(10 if timeout is None else timeout)
        self._received.append(json.loads(message))
        return message


def tts(request):
    seen = {"received": []}
    original_connect = realtime_tts.connect

    def spy_connect(url, **kwargs):
        seen["url"] = url
        seen["headers"] = sorted(kwargs.get("additional_headers", {}).keys())
        return SpySocket(original_connect(url, open_timeout=5, close_timeout=2, **kwargs),
                         seen["received"])

    realtime_tts.connect = spy_connect
    client = ElevenLabs(base_url=request["base_url"], api_key=request["api_key"], timeout=10)
    seen["sdk_ws_base_url"] = client.text_to_speech._ws_base_url
    client.text_to_speech._ws_base_url = request["ws_base_url"]

    # As a language model streams it: words with their trailing spaces (the SDK's
    # `text_chunker` joins what it is given as it is).
    words = iter(re.findall(r"\S+\s*", request["text"]))
    result = {}

    def run():
        audio = b""
        try:
            for piece in client.text_to_speech.convert_realtime(
                    request["voice_id"], text=words, model_id=request["model_id"],
                    output_format="ulaw_8000"):
                audio += piece
            result["error"] = None
        except Exception as err:
            result["error"] = "%s: %s" % (type(err).__name__, err)
        result["audio_bytes"] = len(audio)

    worker = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(15)
    return {
        "url": seen.get("url"),
        "headers": seen.get("headers"),
        "sdk_ws_base_url": seen.get("sdk_ws_base_url"),
        "finished": not worker.is_alive(),
        "seconds": round(time.monotonic() - started, 2),
        "audio_bytes": result.get("audio_bytes"),
        "error": result.get("error"),
        "received": [{k: ("<%d chars>" % len(v) if k == "audio" and v else v)
                      for k, v in m.items()} for m in seen["received"]],
        "saw_final": any(m.get("isFinal") is True for m in seen["received"]),
    }


def multi(request):
    from elevenlabs import (AudioOutputMulti, CloseContext, CloseSocket, FinalOutputMulti,
                            GenerationConfig, InitialiseContext, KeepContextAlive,
                            RealtimeVoiceSettings, SendTextMulti)
    from websockets.sync.client import connect

    refused = []

    def check(model, message, whose):
        try:
            return model.model_validate(message)
        except Exception as err:  # pydantic's ValidationError
            refused.append({"whose": whose, "message": message, "error": str(err)[:300]})
            return None

    # Ours: each message read as the request type its fields say it is.
    for message in request.get("client_messages", []):
        if message.get("close_socket"):
            check(CloseSocket, message, "client")
        elif message.get("close_context"):
            check(CloseContext, message, "client")
        elif "voice_settings" in message or "generation_config" in message:
            check(InitialiseContext, message, "client")
        elif message.get("text") == "" and "context_id" in message:
            check(KeepContextAlive, message, "client")
        else:
            check(SendTextMulti, message, "client")

    context = "sdk-1"
    sent = [
        InitialiseContext(text=" ", context_id=context,
                          voice_settings=RealtimeVoiceSettings(stability=0.5, similarity_boost=0.8),
                          generation_config=GenerationConfig(chunk_length_schedule=[50])),
        KeepContextAlive(context_id=context),
        SendTextMulti(text=request["text"] + " ", context_id=context, flush=True),
        CloseContext(context_id=context, close_context=True),
    ]
    url = ("%s/v1/text-to-speech/%s/multi-stream-input?model_id=%s&output_format=ulaw_8000"
           "&sync_alignment=true") % (request["ws_base_url"], request["voice_id"],
                                      request["model_id"])
    replies = []
    audio_bytes = 0
    # The characters of every chunk's alignment, as the SDK's `Alignment` type reads them.
    aligned = ""
    close_code = None
    with connect(url, additional_headers={"xi-api-key": request["api_key"]}, open_timeout=5,
                 close_timeout=2) as ws:
        for message in sent:
            ws.send(json.dumps(message.dict()))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            reply = json.loads(ws.recv(max(0.1, deadline - time.monotonic())))
            if reply.get("audio"):
                parsed = check(AudioOutputMulti, reply, "simulator")
                if parsed is not None:
                    audio_bytes += len(base64.b64decode(parsed.audio))
                    if parsed.alignment is not None:
                        aligned += "".join(parsed.alignment.chars or [])
                    replies.append({"kind": "audio", "context": parsed.context_id})
            else:
                parsed = check(FinalOutputMulti, reply, "simulator")
                if parsed is not None:
                    replies.append({"kind": "final", "context": parsed.context_id})
                    break
        ws.send(json.dumps(CloseSocket(close_socket=True).dict()))
        try:
            while True:
                ws.recv(5)
        except Exception:
            close_code = ws.close_code
    return {"replies": replies, "audio_bytes": audio_bytes, "close_code": close_code,
            "refused": refused, "sent": [m.dict() for m in sent], "aligned": aligned}


def main():
    mode = sys.argv[1]
    request = json.load(sys.stdin)
    if mode == "stt":
        result = asyncio.run(asyncio.wait_for(stt(request), 18))
    elif mode == "tts":
        result = tts(request)
    elif mode == "multi":
        result = multi(request)
    else:
        raise SystemExit("mode: stt, tts or multi")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
