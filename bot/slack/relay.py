"""Delivering the outbox to Slack: retried on 429 and 5xx, never lost; messages never duplicated.

Every message carries Slack message metadata with its outbox key. A row left
"sending" by a relay that stopped mid-call is looked up in the channel's
history before it is sent again, so a restart neither loses nor repeats it.
Files (a report's picture) carry no message metadata to look them up by: one
left in doubt is uploaded again, so a relay that dies between an upload and
recording it can post that picture twice. It is never lost.
The relay's Web API client has no retry handlers of its own: the outbox
decides when to try again (Retry-After on 429, backoff on 5xx and network errors).
A file row is uploaded only if it names a PNG picture inside the runs folder (where the worker writes
report pictures): an outbox row is data, and one from a planted backup must not upload the bot's
environment or a run's copy of the messages.
"""

from __future__ import annotations

import logging
import os
import stat
import urllib.error
from pathlib import Path

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from storage import outbox

from . import metadata

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 300
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class RefusedFile(Exception):
    """A file row naming something the relay must not upload."""


def relay_client(settings) -> WebClient:
    return WebClient(token=settings.slack_bot_token or None, base_url=settings.slack_api_url, retry_handlers=[])


class Relay:
    def __init__(self, db_factory, client: WebClient, files_dir: Path | None = None):
        self.db_factory = db_factory  # the calling thread's connection
        self.client = client
        self.files_dir = files_dir  # the only folder files are uploaded from (settings.runs_dir); None: none

    def recover(self) -> int:
        """Settle rows a stopped relay left in doubt. Returns how many were found already delivered."""
        db = self.db_factory()
        found = 0
        for item in outbox.in_doubt(db):
            ts = self._find_delivered(item) if item.kind == "message" else None
            if ts:
                outbox.mark_sent(db, item, ts)
                found += 1
            else:
                outbox.retry_later(db, item.id, 0, "relay stopped before confirming delivery")
        return found

    def _find_delivered(self, item) -> str | None:
        if item.ts:  # an update of a message we know: sending it again is harmless
            return None
        try:
            history = self.client.conversations_history(channel=item.channel, limit=200, include_all_metadata=True)
        except SlackApiError as exc:
            log.warning("cannot check %s for an in-doubt message: %s", item.channel, exc.response.get("error"))
            return None
        found = metadata.find_tagged(history.get("messages", []), metadata.OUTBOX, "key", item.key)
        return found["ts"] if found else None

    def deliver_due(self) -> int:
        """Deliver what is due now. Returns how many rows were delivered."""
        db = self.db_factory()
        delivered = 0
        for item in outbox.claim_due(db):
            try:
                ts = self._send(db, item)
            except RefusedFile as exc:
                log.error("outbox %s not uploaded: %s", item.key, exc)
                outbox.give_up(db, item.id, f"refused: {exc}")
                continue
            except SlackApiError as exc:
                self._failed(
                    db, item, exc.response.status_code, exc.response.headers, exc.response.get("error") or str(exc)
                )
                continue
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
                self._failed(db, item, None, {}, f"network: {exc}")
                continue
            outbox.mark_sent(db, item, ts)
            delivered += 1
        return delivered

    def _send(self, db, item) -> str | None:
        payload = item.payload
        if item.kind == "file":
            parent = outbox.get(db, item.after_key) if item.after_key else None
            content = self._picture(payload.get("path"))
            self.client.files_upload_v2(
                channel=item.channel,
                file=content,
                title=payload.get("title"),
                filename=payload.get("filename") or "report.png",
                initial_comment=payload.get("initial_comment"),
                thread_ts=parent.ts if parent else None,
            )
            return None
        if item.ts:
            self.client.chat_update(
                channel=item.channel, ts=item.ts, text=payload["text"], blocks=payload.get("blocks")
            )
            return item.ts
        posted = self.client.chat_postMessage(
            channel=item.channel,
            text=payload["text"],
            blocks=payload.get("blocks"),
            metadata=metadata.tag(metadata.OUTBOX, key=item.key),
        )
        return posted["ts"]

    def _picture(self, path) -> bytes:
        """The bytes of the picture at `path`, read only if its real path is a regular PNG file inside
        `files_dir` (links resolved first, and not followed when opening). Raises RefusedFile otherwise."""
        if self.files_dir is None:
            raise RefusedFile("this relay uploads no files")
        if not isinstance(path, str) or not path:
            raise RefusedFile("the row names no file")
        real, root = os.path.realpath(path), os.path.realpath(self.files_dir)
        if os.path.commonpath([real, root]) != root or real == root:
            raise RefusedFile(f"{path} is not inside {self.files_dir}")
        try:
            fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except OSError as exc:
            raise RefusedFile(f"{path} cannot be opened: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise RefusedFile(f"{path} is not a regular file")
            content = f.read()
        if not content.startswith(PNG_SIGNATURE):
            raise RefusedFile(f"{path} is not a PNG picture")
        return content

    def _failed(self, db, item, status: int | None, headers, error: str) -> None:
        if status == 429:
            retry_after = _header(headers, "retry-after")
            delay = float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else 30.0
            outbox.retry_later(db, item.id, delay, f"rate limited (429), retrying after {delay:.0f} s")
        elif status is None or status >= 500 or error in ("internal_error", "fatal_error", "service_unavailable"):
            delay = min(MAX_BACKOFF_S, 2**item.attempts)
            outbox.retry_later(db, item.id, delay, f"{error} (attempt {item.attempts}), retrying in {delay} s")
        else:
            # A permanent error (channel_not_found, not_in_channel, invalid_auth): retrying will not help.
            log.error("outbox %s not delivered: %s", item.key, error)
            outbox.give_up(db, item.id, error)


def _header(headers, name: str) -> str | None:
    for key, value in (headers or {}).items():
        if key.lower() == name:
            return value[0] if isinstance(value, list) else value
    return None
