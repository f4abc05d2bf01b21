"""The soak's hostile traffic (bench/soak.py), sent to the app under test over HTTP: the requests are the ones
the soak sends, and what the soak counts holds (nothing accepted from outsiders, nothing live, nothing lost)."""

import json
import threading
import time

from storage import messages

from .test_bot import INTAKE, SECRET, bot  # noqa: F401


class InProcessSystem:
    """The parts of bench.soak.System the traffic uses, over the in-process app and stand-in."""

    def __init__(self, bot, url):
        self.bot, self.bot_url, self.standin_url = bot, url, bot.standin.url

    def state(self):
        return {"messages": list(self.bot.standin.messages.values())}


def test_soak_hostile_mix_is_refused_stored_and_escaped(bot, monkeypatch):
    from bench import soak
    from bot.slack.server import make_http_server

    monkeypatch.setattr(soak, "SECRET", SECRET)  # the app under test's signing secret
    bot.standin.set_channel(soak.OTHER, {soak.AGENT, soak.OUTSIDER})
    server = make_http_server(bot.ctx, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        traffic = soak.Traffic(
            InProcessSystem(bot, f"http://127.0.0.1:{server.server_port}/slack/events"),
            1,
            ["where is my card", "my transfer failed"],
            ["complaint", "question"],
        )
        traffic.email(True, "injected_mention")
        traffic.email(True, "u2028")
        traffic.message()
        deadline = time.time() + 60
        while len([m for m in bot.standin.messages.values() if m.get("thread_ts")]) < 3 and time.time() < deadline:
            time.sleep(0.1)
        bot.settle()
        traffic.outsider_click()
        traffic.hostile_ts.clear()
        for _ in range(3):  # the outsider's /label from another channel, by the soak's own code path
            traffic.rng.choice = lambda options: "outsider_label" if "outsider_label" in options else options[0]
            traffic.hostile()
        bot.settle()
    finally:
        server.shutdown()
        getattr(server, "server_close", lambda: None)()  # waitress's server closes on shutdown
    kinds = [r["kind"] for r in traffic.requests]
    assert kinds.count("outsider_click") == 1 and kinds.count("outsider_label") == 3
    assert not [k for k in kinds if k.endswith("_accepted") or k == "injected_mention_echoed"]
    assert bot.db.execute("SELECT COUNT(*) FROM labels WHERE labeled_by = ?", [soak.OUTSIDER]).fetchone()[0] == 0
    for ts, sent in traffic.messages.items():
        assert messages.find_message(bot.db, messages.slack_external_id(INTAKE, ts)) is not None, sent["kind"]
    posted = [json.dumps(m.get("blocks")) + m.get("text", "") for m in bot.standin.messages.values()]
    assert not [p for p in posted if any(live in p for live in soak.INJECTED)]
