"""User text in Slack's mrkdwn: the one escaping helper, and the limits a message must fit.

Everything a person or an email wrote (subjects, bodies, label names and
descriptions, command arguments, error text that may quote them) goes through
`escape` before it meets mrkdwn, so `<!channel>`, `<@U123>` and `<https://x|y>`
arrive as text, never as a live mention or link. Slack's rule: escape `&`, `<`
and `>`; nothing else is needed (https://api.slack.com/reference/surfaces/formatting#escaping).
"""

from __future__ import annotations

SECTION_CHARS = 3000  # Slack's limit for a section's text
MAX_BLOCKS = 50  # Slack's limit for blocks in a message


def escape(text) -> str:
    """`text` with `&`, `<` and `>` escaped: shown as written, never a mention, link or command."""
    return str(text if text is not None else "").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def quote(text, limit: int | None = None) -> str:
    """A block quote of `text` (at most `limit` characters): every line is quoted, so a newline cannot end it."""
    body = str(text or "")
    if limit is not None and len(body) > limit:
        body = body[:limit] + "…"
    # splitlines on purpose: it also breaks at U+2028 and friends, which a client may show as a line end
    return "\n".join(">" + escape(line) for line in body.splitlines() or [""])


def code(text) -> str:
    """`text` as an inline code span; a backtick in it cannot close the span (it becomes a look-alike)."""
    return "`" + escape(str(text).replace("`", "ˋ").replace("\n", " ")) + "`"


def plain(text, limit: int = 3000) -> dict:
    """A plain_text object (no formatting at all), cut to `limit` characters."""
    value = str(text or " ")
    return {"type": "plain_text", "text": value if len(value) <= limit else value[: limit - 1] + "…", "emoji": False}


def fit(text: str, limit: int = SECTION_CHARS) -> str:
    """Cut already-escaped mrkdwn to `limit` characters (at a line end when one is near)."""
    if len(text) <= limit:
        return text
    cut = text.rfind("\n", 0, limit - 1)
    return text[: cut if cut > limit // 2 else limit - 1] + "…"


def joined(items: list[str], limit: int = 1500, more: str = "") -> str:
    """`items` joined with commas, cut to about `limit` characters with a count of what was left out."""
    out, used = [], 0
    for i, item in enumerate(items):
        if used + len(item) + 2 > limit:
            return ", ".join(out) + f" and {len(items) - i} more" + (f" ({more})" if more else "")
        out.append(item)
        used += len(item) + 2
    return ", ".join(out)
