"""The stand-in as a process of its own (`python -m slack_standin --port N`), for whole-system runs.

Besides Slack's Web API it answers a small control API on the same port, for the harness
that drives it (loopback only):
- GET  /_standin/state: delivered messages, call counts per method, faults injected;
- POST /_standin/faults {"rate": 0.1, "methods": [...], "seed": 1}: random 429/5xx answers;
- POST /_standin/files {file}: what files.info answers for a file id;
- POST /_standin/channels {"C123": {"members": [...], "private": false}}: who is in which channel.
Prints "ready PORT" on stdout once it listens.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from collections import Counter
from urllib.parse import parse_qs, urlparse

from .server import SlackStandIn


def state(standin: SlackStandIn) -> dict:
    with standin._lock:
        calls = Counter(c.method for c in standin.calls)
        return {
            "messages": list(standin.messages.values()),
            "calls": dict(calls),
            "faults": dict(standin.faults_injected),
            "responses": len(standin.responses),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--bot-token", default="xoxb-standin")
    args = parser.parse_args()
    standin = SlackStandIn(bot_token=args.bot_token)
    original = standin._handle

    def handle(request):
        path = request.path.split("?")[0]
        if path in ("/_standin/faults", "/_standin/files", "/_standin/channels"):
            body = json.loads(request.rfile.read(int(request.headers.get("Content-Length") or 0)) or b"{}")
            if path == "/_standin/faults":
                standin.fail_randomly(
                    float(body.get("rate", 0)), tuple(body.get("methods", ())), int(body.get("seed", 0))
                )
            elif path == "/_standin/channels":
                for channel, spec in body.items():
                    standin.set_channel(channel, spec.get("members", ()), private=bool(spec.get("private")))
            else:
                standin.add_file(body)
            return _reply(request, {"ok": True})
        if path == "/_standin/state":
            return _reply(request, state(standin))
        if path == "/_standin/responded":  # ?key=K: what the bot posted to response_url(K)
            key = parse_qs(urlparse(request.path).query).get("key", [""])[0]
            with standin._lock:
                return _reply(request, {"responses": list(standin.responded.get(key, []))})
        return original(request)

    standin._handle = handle
    standin.start(args.port)
    print(f"ready {standin._server.server_address[1]}", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    stopped.wait()
    standin.stop()


def _reply(request, body: dict) -> None:
    data = json.dumps(body).encode()
    request.send_response(200)
    request.send_header("Content-Type", "application/json")
    request.send_header("Content-Length", str(len(data)))
    request.end_headers()
    request.wfile.write(data)


if __name__ == "__main__":
    main()
