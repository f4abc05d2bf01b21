"""What Slack says about channels (who is in one, whether it is private), remembered for CACHE_S seconds.

One per process, on the BotContext: permissions (bot.slack.permissions) ask it on every labelling
request, and a minute's memory keeps those checks off Slack's rate limits and the acknowledgement path.
"""

from __future__ import annotations

import threading
import time

CACHE_S = 60.0


class Channels:
    """Channel members and privacy, as Slack says, remembered for CACHE_S seconds."""

    def __init__(self):
        self._lock = threading.Lock()
        self._members: dict[str, tuple[float, frozenset]] = {}
        self._private: dict[str, tuple[float, bool]] = {}

    def members(self, client, channel: str) -> frozenset:
        with self._lock:
            hit = self._members.get(channel)
        if hit and time.monotonic() - hit[0] < CACHE_S:
            return hit[1]
        found, cursor = set(), None
        while True:
            page = client.conversations_members(channel=channel, limit=1000, **({"cursor": cursor} if cursor else {}))
            found.update(page.get("members") or [])
            cursor = (page.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                break
        with self._lock:
            self._members[channel] = (time.monotonic(), frozenset(found))
        return frozenset(found)

    def private(self, client, channel: str) -> bool:
        with self._lock:
            hit = self._private.get(channel)
        if hit and time.monotonic() - hit[0] < CACHE_S:
            return hit[1]
        info = client.conversations_info(channel=channel).get("channel") or {}
        private = bool(info.get("is_private") or info.get("is_group") or info.get("is_im") or info.get("is_mpim"))
        with self._lock:
            self._private[channel] = (time.monotonic(), private)
        return private
