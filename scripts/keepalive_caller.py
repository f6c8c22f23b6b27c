"""A Twilio Media Stream caller built on the `websockets` library with its keepalive on.

websockets pings every PING_INTERVAL seconds and closes the connection (1011) when a pong
does not come back within PING_TIMEOUT: the way Python clients, and proxies with keep-alive,
treat a server that does not answer pings (RFC 6455 requires it to). The caller sends
`connected`, `start` and 20 ms frames of silence for SECONDS, reading what the server sends,
then `stop`. It prints JSON: whether the stream stayed open, the last ping's round trip, and
the close code if the connection was closed on it.

Usage: keepalive_caller.py URL PING_INTERVAL PING_TIMEOUT SECONDS < {"parameters": {...}}
(the stream's parameters from the call's TwiML, passed back in `start` as Twilio does).
"""

import base64
import json
import sys
import time

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

CALL_SID = "CA" + "1" * 32
STREAM_SID = "MZ" + "1" * 32
SILENCE = base64.b64encode(b"\xff" * 160).decode()


def main():
    url, interval, timeout, seconds = sys.argv[1], *map(float, sys.argv[2:5])
    parameters = json.load(sys.stdin).get("parameters", {})
    result = {"open": False, "latency": 0.0, "received": 0, "close": None}
    try:
        with connect(url, ping_interval=interval, ping_timeout=timeout,
                     open_timeout=5, close_timeout=2) as ws:
            ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            ws.send(json.dumps({
                "event": "start", "sequenceNumber": "1", "streamSid": STREAM_SID,
                "start": {"accountSid": "AC" + "1" * 32, "streamSid": STREAM_SID,
                          "callSid": CALL_SID, "tracks": ["inbound"],
                          "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                          "channels": 1},
                          "customParameters": parameters}}))
            started = time.monotonic()
            frame = 0
            while time.monotonic() - started < seconds:
                frame += 1
                ws.send(json.dumps({
                    "event": "media", "sequenceNumber": str(frame + 1), "streamSid": STREAM_SID,
                    "media": {"track": "inbound", "chunk": str(frame),
                              "timestamp": str(frame * 20), "payload": SILENCE}}))
                # Read what came, so the library keeps reading (and sees the pongs).
                while True:
                    try:
                        ws.recv(timeout=0)
                        result["received"] += 1
                    except TimeoutError:
                        break
                time.sleep(0.02)
            result["open"] = True
            result["latency"] = ws.latency
            ws.send(json.dumps({"event": "stop", "sequenceNumber": str(frame + 2),
                                "streamSid": STREAM_SID,
                                "stop": {"accountSid": "AC" + "1" * 32, "callSid": CALL_SID}}))
    except ConnectionClosed as closed:
        rcvd = closed.rcvd or closed.sent
        result["close"] = {"code": rcvd.code if rcvd else None,
                           "reason": rcvd.reason if rcvd else str(closed)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
