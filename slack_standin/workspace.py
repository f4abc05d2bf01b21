"""A local Slack workspace: the Web API stand-in plus a page to use the bot as a person would.

It delivers what a person does on the page (a message, a slash command, a
forwarded email, a button click or a select) to the bot's HTTP endpoint the
way Slack does: signed with the signing secret, in Slack's payload shapes, and
redelivered (with X-Slack-Retry-Num) when not acknowledged within 3 seconds.
The page polls /ui/state and renders the bot's Block Kit.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from . import payloads
from .server import SlackStandIn, _send

PAGE = Path(__file__).with_name("page.html")
ACK_TIMEOUT_S = 3.0
MAX_RETRIES = 3


class Workspace(SlackStandIn):
    def __init__(
        self, *, signing_secret: str, channels: dict[str, str], user: str = "U0YOU", user_name: str = "you", **kwargs
    ):
        super().__init__(**kwargs)
        self.signing_secret = signing_secret
        self.channels = channels  # id -> name
        self.user, self.user_name = user, user_name
        self.bot_url: str | None = None  # the bot's /slack/events
        self.ephemeral: list[dict] = []  # what only the page's user sees
        self.deliveries: list[dict] = []  # every delivery attempt to the bot: kind, status, retry, ms
        self._changes = 0
        self._email_ids = iter(range(1, 10**9))
        for channel, name in channels.items():  # the page's one person is in every channel
            self.set_channel(channel, {user}, name=name)

    # -- state for the page -----------------------------------------------------------------------------
    def _record(self, method, params, headers):
        super()._record(method, params, headers)
        self._changes += 1

    def state(self) -> dict:
        messages = sorted(self.messages.values(), key=lambda m: float(m["ts"]))
        return {
            "version": self._changes + len(self.ephemeral),
            "user": self.user,
            "channels": [{"id": cid, "name": name} for cid, name in self.channels.items()],
            "messages": messages,
            "ephemeral": self.ephemeral[-50:],
        }

    def _api_chat_postEphemeral(self, p):
        answer = super()._api_chat_postEphemeral(p)
        if answer["ok"] and p.get("user") == self.user:
            self.ephemeral.append(
                {
                    "channel": p["channel"],
                    "text": p.get("text", ""),
                    "blocks": _loads(p.get("blocks")) or [],
                    "ts": answer["message_ts"],
                }
            )
        return answer

    # -- delivering to the bot, as Slack does -------------------------------------------------------------
    def deliver(self, kind: str, body_and_type: tuple[str, str]) -> tuple[int, str]:
        """POST to the bot, signed; redeliver up to 3 times when not acknowledged in 3 s. Returns (status, body)."""
        body, content_type = body_and_type
        status, text = 0, ""
        for retry in range(MAX_RETRIES + 1):
            headers = payloads.signed_headers(self.signing_secret, body, content_type, retry_num=retry or None)
            request = urllib.request.Request(self.bot_url, data=body.encode(), headers=headers, method="POST")
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(request, timeout=ACK_TIMEOUT_S) as response:
                    status, text = response.status, response.read().decode()
            except urllib.error.HTTPError as exc:
                status, text = exc.code, exc.read().decode(errors="replace")
            except (urllib.error.URLError, TimeoutError, OSError):
                status, text = 0, "not acknowledged within 3 s"
            self.deliveries.append(
                {"kind": kind, "status": status, "retry": retry, "ms": (time.perf_counter() - started) * 1000}
            )
            # Slack redelivers events only; commands and interactions show the user an error instead.
            if status == 200 or kind != "event":
                break
        return status, text

    def _ack_to_ephemeral(self, channel: str, status: int, text: str) -> None:
        if status != 200:
            self.ephemeral.append(
                {
                    "channel": channel,
                    "text": f"The app did not respond ({status or 'timeout'}).",
                    "blocks": [],
                    "ts": self.next_ts(),
                }
            )
            return
        if text.strip().startswith("{"):
            answer = json.loads(text)
            if answer.get("text") or answer.get("blocks"):
                self.ephemeral.append(
                    {
                        "channel": channel,
                        "text": answer.get("text", ""),
                        "blocks": answer.get("blocks") or [],
                        "ts": self.next_ts(),
                    }
                )

    # -- what the person does on the page ------------------------------------------------------------------
    def user_message(self, channel: str, text: str) -> str:
        ts = self.next_ts()
        self.messages[(channel, ts)] = {
            "type": "message",
            "user": self.user,
            "text": text,
            "ts": ts,
            "channel": channel,
        }
        self._changes += 1
        threading.Thread(
            target=self.deliver,
            args=(
                "event",
                payloads.event_callback(payloads.message_event(channel, self.user, text, ts), team_id=self.team_id),
            ),
            daemon=True,
        ).start()
        return ts

    def forward_email(self, channel: str, sender: str, subject: str, body: str) -> str:
        ts = self.next_ts()
        file = payloads.email_file(f"F0EMAIL{next(self._email_ids):05d}", subject=subject, sender=sender, body=body)
        self.add_file(file)
        event = payloads.email_event(channel, ts, file)
        self.messages[(channel, ts)] = {**event, "user_name": "Email"}
        self._changes += 1
        threading.Thread(
            target=self.deliver, args=("event", payloads.event_callback(event, team_id=self.team_id)), daemon=True
        ).start()
        return ts

    def slash_command(self, channel: str, text: str) -> None:
        command, _, rest = text.strip().partition(" ")
        status, body = self.deliver(
            "command",
            payloads.slash_command(
                command,
                rest.strip(),
                user=self.user,
                channel=channel,
                response_url=self.response_url(channel),
                team_id=self.team_id,
            ),
        )
        self._ack_to_ephemeral(channel, status, body)

    def block_action(self, channel: str, ts: str, action: dict) -> None:
        message = self.messages.get((channel, ts))
        if message is None:
            return
        status, body = self.deliver(
            "interaction",
            payloads.block_action(
                action,
                user=self.user,
                channel=channel,
                message=message,
                response_url=self.response_url(channel),
                team_id=self.team_id,
            ),
        )
        if status != 200:
            self._ack_to_ephemeral(channel, status, body)

    # -- HTTP: the page and its calls ------------------------------------------------------------------------
    def _handle(self, request):
        path = request.path.split("?")[0]
        if path.startswith("/respond/"):
            length = int(request.headers.get("Content-Length") or 0)
            answer = _loads(request.rfile.read(length).decode()) or {}
            channel = path.rsplit("/", 1)[-1]
            self.ephemeral.append(
                {
                    "channel": channel,
                    "text": answer.get("text", ""),
                    "blocks": answer.get("blocks") or [],
                    "ts": self.next_ts(),
                }
            )
            self.responses.append(answer)
            return _send(request, 200, "ok", "text/plain")
        if not path.startswith("/ui/"):
            return super()._handle(request)
        if not request.headers.get("Content-Type", "").startswith("application/json"):
            # A page elsewhere can post text/plain without asking; JSON needs a preflight this server never allows.
            return _send(
                request,
                415,
                json.dumps({"ok": False, "error": "the page's requests are JSON (Content-Type: application/json)"}),
            )
        length = int(request.headers.get("Content-Length") or 0)
        data = _loads(request.rfile.read(length).decode()) or {} if length else {}
        if path == "/ui/post":
            text, channel = (data.get("text") or "").strip(), data.get("channel")
            if channel in self.channels and text:
                (self.slash_command if text.startswith("/") else self.user_message)(channel, text)
        elif path == "/ui/email":
            if data.get("channel") in self.channels and (data.get("body") or data.get("subject")):
                self.forward_email(
                    data["channel"],
                    data.get("from") or "customer@example.com",
                    data.get("subject") or "(no subject)",
                    data.get("body") or "",
                )
        elif path == "/ui/action":
            self.block_action(data.get("channel"), data.get("ts"), data.get("action") or {})
        _send(request, 200, json.dumps({"ok": True}))

    def start(self, port: int = 0) -> "Workspace":
        super().start(port)
        handler = self._server.RequestHandlerClass
        workspace = self

        def do_GET(request):
            if workspace.refused_from_elsewhere(request):
                return None
            path = request.path.split("?")[0]
            if path in ("/", "/index.html"):
                return _send(request, 200, PAGE.read_text(encoding="utf-8"), "text/html; charset=utf-8")
            if path == "/ui/state":
                return _send(request, 200, json.dumps(workspace.state()))
            if path.startswith("/files/"):
                data = workspace.uploads.get(path.rsplit("/", 1)[-1])
                if data is None:
                    return _send(request, 404, "no such file", "text/plain")
                request.send_response(200)
                request.send_header("Content-Type", "image/png")
                request.send_header("Content-Length", str(len(data)))
                request.end_headers()
                request.wfile.write(data)
                return None
            return _send(request, 404, "not found", "text/plain")

        handler.do_GET = do_GET
        return self


def _loads(value):
    if isinstance(value, (dict, list)):
        return value
    try:
        return json.loads(value) if value else None
    except json.JSONDecodeError:
        return None
