"""A local stand-in for Slack's Web API on loopback: Slack's response shapes, recorded calls, injected faults.

Point `slack_sdk.WebClient(base_url=standin.api_url)` at it. Every call is
recorded (method, parameters, headers) so tests and the local workspace can
see what the bot sent. `fail(method, status, times)` makes the next calls of
a method answer 429 (with Retry-After) or 5xx.
"""

from __future__ import annotations

import base64
import itertools
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default 5 resets connections under a burst of concurrent calls


@dataclass
class Call:
    method: str
    params: dict
    headers: dict
    at: float = field(default_factory=time.time)


class SlackStandIn:
    def __init__(
        self,
        *,
        bot_token: str = "xoxb-standin",
        team_id: str = "T0STANDIN",
        bot_user_id: str = "U0BOT",
        bot_id: str = "B0BOT",
    ):
        self.bot_token, self.team_id, self.bot_user_id, self.bot_id = bot_token, team_id, bot_user_id, bot_id
        self.calls: list[Call] = []
        self.files: dict[str, dict] = {}  # files.info answers, by file id
        self.uploads: dict[str, bytes] = {}  # bytes uploaded through files.getUploadURLExternal
        self.messages: dict[tuple[str, str], dict] = {}  # (channel, ts) -> message as last posted or updated
        self.responses: list[dict] = []  # bodies posted to response_url
        self.responded: dict[str, list[dict]] = {}  # the same, by the response URL's key (`response_url(key)`)
        self.conversations: dict[str, dict] = {}  # id -> {"name", "members": set, "private": bool} (`set_channel`)
        self._faults: dict[str, list[tuple[int, int | None]]] = {}
        self._holds: dict[str, tuple[threading.Event, float]] = {}  # method -> (gate, longest wait) (`hold`)
        self.answered: Counter = Counter()  # held calls answered, per method
        self._random_faults: tuple[float, tuple[str, ...], random.Random] | None = None
        self.faults_injected: Counter = Counter()  # "method status" -> how many answers were faults
        self._ts = itertools.count(1)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.listeners: list = []  # callables notified of every recorded call (live pages)

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self, port: int = 0) -> "SlackStandIn":
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                if not standin.refused_from_elsewhere(self):
                    standin._handle(self)

            do_PUT = do_GET = do_POST

        self._server = _Server(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True, name="slack-standin").start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def refused_from_elsewhere(self, request: BaseHTTPRequestHandler) -> bool:
        """Answer 403 (and say True) to a request a web page elsewhere made: another `Host` (a DNS rebinding
        name pointed at loopback) or another `Origin` (a cross-origin fetch or form). Loopback clients
        without an Origin (the bot's Web API client, the tests) pass."""
        port = self._server.server_address[1]
        here = {f"127.0.0.1:{port}", f"localhost:{port}"}
        host, origin = request.headers.get("Host", ""), request.headers.get("Origin")
        if host not in here:
            reason = f"Host {host!r} is not this server: open http://127.0.0.1:{port}/"
        elif origin is not None and origin.removeprefix("http://") not in here:
            reason = f"requests from other pages ({origin!r}) are refused"
        else:
            return False
        _send(request, 403, json.dumps({"ok": False, "error": "forbidden", "detail": reason}))
        return True

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/"

    @property
    def api_url(self) -> str:
        return self.url + "api/"

    def response_url(self, key: str = "r") -> str:
        return f"{self.url}respond/{key}"

    # -- inspection ----------------------------------------------------------------------------------------
    def calls_to(self, method: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method]

    def wait_for(self, method: str, count: int = 1, timeout: float = 30.0) -> list[Call]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = self.calls_to(method)
            if len(found) >= count:
                return found
            time.sleep(0.02)
        raise TimeoutError(f"{method}: {len(self.calls_to(method))} calls after {timeout}s, expected {count}")

    def fail(self, method: str, status: int, times: int = 1, retry_after: int | None = 1) -> None:
        """The next `times` calls of `method` answer `status` (429 carries Retry-After)."""
        with self._lock:
            self._faults.setdefault(method, []).extend([(status, retry_after)] * times)

    def fail_randomly(self, rate: float, methods: tuple[str, ...], seed: int = 0) -> None:
        """From now on, each call of `methods` answers 429 or a 5xx with probability `rate` (0 stops it)."""
        with self._lock:
            self._random_faults = (rate, tuple(methods), random.Random(seed)) if rate > 0 else None

    def hold(self, method: str, longest_s: float = 5.0) -> threading.Event:
        """From now on, calls of `method` are answered only once the returned event is set (or after
        `longest_s`); `answered[method]` counts the held calls answered so far."""
        gate = threading.Event()
        with self._lock:
            self._holds[method] = (gate, longest_s)
        return gate

    def set_channel(self, channel: str, members, *, private: bool = False, name: str | None = None) -> None:
        """Who is in `channel` (conversations.members) and whether it is private (conversations.info)."""
        with self._lock:
            self.conversations[channel] = {
                "name": name or channel.lower(),
                "members": set(members) | {self.bot_user_id},
                "private": private,
            }

    def add_file(self, file: dict) -> None:
        self.files[file["id"]] = file

    def next_ts(self) -> str:
        return f"{int(time.time())}.{next(self._ts):06d}"

    # -- HTTP ----------------------------------------------------------------------------------------------
    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        path = urlparse(request.path).path
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length)
        headers = {k.lower(): v for k, v in request.headers.items()}
        if path.startswith("/respond/"):
            self._record("response_url", _parse(raw, headers), headers)
            self.responses.append(_parse(raw, headers))
            with self._lock:
                self.responded.setdefault(path[len("/respond/") :], []).append(_parse(raw, headers))
            return _send(request, 200, "ok", "text/plain")
        if path.startswith("/upload/"):
            self.uploads[path.rsplit("/", 1)[-1]] = raw
            self._record("upload", {"file_id": path.rsplit("/", 1)[-1], "bytes": len(raw)}, headers)
            return _send(request, 200, "OK - " + str(len(raw)), "text/plain")
        if not path.startswith("/api/"):
            return _send(request, 404, json.dumps({"ok": False, "error": "not_found"}))
        method = path[len("/api/") :]
        params = _parse(raw, headers)
        query = parse_qs(urlparse(request.path).query)
        params.update({k: v[0] for k, v in query.items() if k not in params})
        with self._lock:
            faults = self._faults.get(method)
            fault = faults.pop(0) if faults else None
            if fault is None and self._random_faults and method in self._random_faults[1]:
                rate, _, rng = self._random_faults
                if rng.random() < rate:
                    fault = rng.choice(((429, 1), (500, None), (503, None)))
            if fault:
                self.faults_injected[f"{method} {fault[0]}"] += 1
            held = self._holds.get(method)
        self._record(method, params, headers)
        if held:
            held[0].wait(held[1])
            with self._lock:
                self.answered[method] += 1
        if fault:
            status, retry_after = fault
            extra = {"Retry-After": str(retry_after)} if status == 429 and retry_after is not None else {}
            error = "ratelimited" if status == 429 else "internal_error"
            return _send(request, status, json.dumps({"ok": False, "error": error}), extra=extra)
        token = headers.get("authorization", "").removeprefix("Bearer ") or params.get("token", "")
        if token != self.bot_token:
            return _send(request, 200, json.dumps({"ok": False, "error": "invalid_auth"}))
        handler = getattr(self, "_api_" + method.replace(".", "_"), None)
        body = handler(params) if handler else {"ok": False, "error": "unknown_method"}
        _send(request, 200, json.dumps(body))

    def _record(self, method: str, params: dict, headers: dict) -> None:
        call = Call(method, params, headers)
        with self._lock:
            self.calls.append(call)
        for listener in list(self.listeners):
            listener(call)

    # -- Web API methods (Slack's response shapes) ---------------------------------------------------------
    def _api_auth_test(self, p):
        return {
            "ok": True,
            "url": "https://standin.slack.com/",
            "team": "Stand-in",
            "user": "supportbot",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
        }

    def _api_chat_postMessage(self, p):
        if not p.get("channel"):
            return {"ok": False, "error": "channel_not_found"}
        if not p.get("text") and not p.get("blocks"):
            return {"ok": False, "error": "no_text"}
        ts = self.next_ts()
        message = {
            "type": "message",
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "ts": ts,
            "text": p.get("text", ""),
            "blocks": _json(p.get("blocks")) or [],
            "channel": p["channel"],
        }
        if p.get("thread_ts"):
            message["thread_ts"] = p["thread_ts"]
        if p.get("metadata"):
            message["metadata"] = _json(p["metadata"])
        self.messages[(p["channel"], ts)] = message
        return {"ok": True, "channel": p["channel"], "ts": ts, "message": message}

    def _api_chat_update(self, p):
        key = (p.get("channel"), p.get("ts"))
        if key not in self.messages:
            return {"ok": False, "error": "message_not_found"}
        message = self.messages[key]
        message.update(
            {
                "text": p.get("text", message["text"]),
                "blocks": _json(p.get("blocks")) or message["blocks"],
                "edited": {"user": self.bot_user_id, "ts": self.next_ts()},
            }
        )
        return {"ok": True, "channel": key[0], "ts": key[1], "text": message["text"], "message": message}

    def _api_chat_postEphemeral(self, p):
        if not p.get("channel") or not p.get("user"):
            return {"ok": False, "error": "channel_not_found" if not p.get("channel") else "user_not_in_channel"}
        return {"ok": True, "message_ts": self.next_ts()}

    def _view(self, p):
        view = _json(p.get("view")) or {}
        return {"ok": True, "view": {**view, "id": f"V{next(self._ids):08d}", "team_id": self.team_id}}

    _api_views_publish = _view
    _api_views_open = _view
    _api_views_update = _view

    def _api_files_info(self, p):
        file = self.files.get(p.get("file", ""))
        return {"ok": True, "file": file} if file else {"ok": False, "error": "file_not_found"}

    def _api_users_info(self, p):
        user = p.get("user", "")
        return {
            "ok": True,
            "user": {"id": user, "name": user.lower(), "real_name": f"User {user}", "is_bot": user == self.bot_user_id},
        }

    def _api_conversations_info(self, p):
        channel = p.get("channel") or ""
        known = self.conversations.get(channel)
        if known is None and self.conversations:
            return {"ok": False, "error": "channel_not_found"}
        private = bool(known and known["private"])
        return {
            "ok": True,
            "channel": {
                "id": channel,
                "name": known["name"] if known else channel.lower(),
                "is_channel": not private,
                "is_group": private,
                "is_im": False,
                "is_mpim": False,
                "is_private": private,
                "is_archived": False,
                "is_general": False,
                "created": 1700000000,
                "creator": "U0CREATOR",
                "is_member": True,
                "num_members": len(known["members"]) if known else None,
            },
        }

    def _api_conversations_members(self, p):
        """Member ids of a channel, a page at a time (`limit`, `cursor`), as Slack pages them."""
        known = self.conversations.get(p.get("channel") or "")
        if known is None:
            return {"ok": False, "error": "channel_not_found"}
        members = sorted(known["members"])
        start = int(base64.b64decode(p["cursor"]).decode().split(":")[1]) if p.get("cursor") else 0
        limit = max(1, min(1000, int(p.get("limit") or 100)))
        page = members[start : start + limit]
        more = start + limit < len(members)
        cursor = base64.b64encode(f"offset:{start + limit}".encode()).decode() if more else ""
        return {"ok": True, "members": page, "response_metadata": {"next_cursor": cursor}}

    def _api_conversations_history(self, p):
        """Top-level messages of a channel, newest first (metadata only with include_all_metadata)."""
        channel = p.get("channel")
        found = [m for (c, _), m in self.messages.items() if c == channel and not m.get("thread_ts")]
        found.sort(key=lambda m: float(m["ts"]), reverse=True)
        limit = int(p.get("limit") or 100)
        with_metadata = str(p.get("include_all_metadata")).lower() in ("true", "1")
        return {
            "ok": True,
            "messages": [
                m if with_metadata else {k: v for k, v in m.items() if k != "metadata"} for m in found[:limit]
            ],
            "has_more": len(found) > limit,
        }

    def _api_conversations_replies(self, p):
        """A thread: its parent (when posted here) and replies, oldest first."""
        channel, ts = p.get("channel"), p.get("ts")
        found = [m for (c, t), m in self.messages.items() if c == channel and (t == ts or m.get("thread_ts") == ts)]
        found.sort(key=lambda m: float(m["ts"]))
        with_metadata = str(p.get("include_all_metadata")).lower() in ("true", "1")
        return {
            "ok": True,
            "messages": [m if with_metadata else {k: v for k, v in m.items() if k != "metadata"} for m in found],
            "has_more": False,
        }

    def _api_conversations_join(self, p):
        return self._api_conversations_info(p)

    def _api_files_getUploadURLExternal(self, p):
        file_id = f"F{next(self._ids):08d}"
        self.files[file_id] = {
            "id": file_id,
            "name": p.get("filename"),
            "title": p.get("filename"),
            "size": int(p.get("length") or 0),
        }
        return {"ok": True, "upload_url": f"{self.url}upload/{file_id}", "file_id": file_id}

    def _api_files_completeUploadExternal(self, p):
        files = _json(p.get("files")) or []
        done = []
        for f in files:
            stored = self.files.get(f.get("id"))
            if stored is None or f.get("id") not in self.uploads:
                return {"ok": False, "error": "file_not_found"}
            stored.update(
                {
                    "title": f.get("title") or stored["title"],
                    "channels": [p.get("channel_id")],
                    "initial_comment": p.get("initial_comment"),
                    "thread_ts": p.get("thread_ts"),
                }
            )
            done.append(stored)
            if p.get("channel_id"):  # sharing posts a message with the file, as Slack does
                ts = self.next_ts()
                self.messages[(p["channel_id"], ts)] = {
                    "type": "message",
                    "user": self.bot_user_id,
                    "bot_id": self.bot_id,
                    "ts": ts,
                    "text": p.get("initial_comment") or "",
                    "files": [stored],
                    "channel": p["channel_id"],
                    **({"thread_ts": p["thread_ts"]} if p.get("thread_ts") else {}),
                }
        return {"ok": True, "files": done}


def _json(value):
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return None
    return value


def _parse(raw: bytes, headers: dict) -> dict:
    if not raw:
        return {}
    if "json" in headers.get("content-type", ""):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return {}
    return {k: v[0] for k, v in parse_qs(raw.decode("utf-8", errors="replace")).items()}


def _send(request, status: int, body: str, content_type: str = "application/json", extra: dict | None = None):
    data = body.encode()
    request.send_response(status)
    request.send_header("Content-Type", content_type)
    request.send_header("Content-Length", str(len(data)))
    for k, v in (extra or {}).items():
        request.send_header(k, v)
    request.end_headers()
    request.wfile.write(data)
