"""The Slack app, driven by signed requests in Slack's shapes against the local Web API stand-in."""

import json
import re
import threading
import time
import urllib.request

import pytest
from slack_bolt.request import BoltRequest
from slack_sdk import WebClient

from bot.settings import load_settings
from bot.slack.app import create_app
from bot.slack.context import BotContext
from bot.slack.listeners.commands import CHECKING
from slack_standin import payloads
from slack_standin.server import SlackStandIn
from storage import adapters, labels, messages, predictions, runs

SECRET = "test-signing-secret"
INTAKE, OTHER, PRIVATE = "C0INTAKE", "C0OTHER", "G0PRIVATE"
ADMIN, AGENT = "U0ADMIN", "U0AGENT"
OUTSIDER, INSIDER = "U0OUTSIDER", "U0INSIDER"  # in a channel outside intake; in the private intake channel only


class Bot:
    """The app under test, the stand-in it talks to, and helpers that send it what Slack sends."""

    def __init__(self, app, ctx, standin):
        self.app, self.ctx, self.standin = app, ctx, standin
        self._ts = 1700000000

    def next_ts(self) -> str:
        self._ts += 1
        return f"{self._ts}.000100"

    def send(self, body_and_type, **sign):
        body, content_type = body_and_type
        response = self.app.dispatch(
            BoltRequest(body=body, headers=payloads.signed_headers(SECRET, body, content_type, **sign))
        )
        return response

    def event(self, event, **kwargs):
        return self.send(payloads.event_callback(event, event_id=kwargs.pop("event_id", None)), **kwargs)

    def post(self, text, channel=INTAKE, user=AGENT, **extra):
        ts = self.next_ts()
        self.event(payloads.message_event(channel, user, text, ts, **extra))
        return ts

    def command(self, command, text="", user=AGENT, channel=INTAKE):
        """What the person sees: the acknowledgement, or for a command answered after it (CHECKING), that answer."""
        answered = len(self.standin.responses)
        acked = self.command_ack(command, text, user=user, channel=channel)
        if acked.get("text") != CHECKING:
            return acked
        self.settle()
        later = self.standin.responses[answered:]
        assert len(later) == 1, later
        return later[0]

    def command_ack(self, command, text="", user=AGENT, channel=INTAKE):
        response = self.send(
            payloads.slash_command(command, text, user=user, channel=channel, response_url=self.standin.response_url())
        )
        assert response.status == 200
        return json.loads(response.body) if response.body else {}

    def settle(self):
        self.ctx.drain()

    @property
    def db(self):
        return self.ctx.db()


@pytest.fixture
def bot(env, tiny_model_dir, monkeypatch):
    standin = SlackStandIn().start()
    standin.set_channel(INTAKE, {ADMIN, AGENT})
    standin.set_channel(OTHER, {OUTSIDER, AGENT})
    standin.set_channel(PRIVATE, {INSIDER}, private=True)
    monkeypatch.setenv("SUPPORTBOT_BASE_MODEL", tiny_model_dir)
    monkeypatch.setenv("SUPPORTBOT_ZERO_SHOT_MODEL", tiny_model_dir)
    settings = load_settings(
        {
            "SUPPORTBOT_DATA_DIR": str(env / "data"),
            "SUPPORTBOT_BASE_MODEL": tiny_model_dir,
            "SUPPORTBOT_ZERO_SHOT_MODEL": tiny_model_dir,
            "SLACK_BOT_TOKEN": standin.bot_token,
            "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_API_URL": standin.api_url,
            "SUPPORTBOT_ADMINS": ADMIN,
            "SUPPORTBOT_INTAKE_CHANNELS": f"{INTAKE},{PRIVATE}",
            "SUPPORTBOT_REVIEW_THRESHOLD": "0.5",
        },
        env_file=None,
    )
    ctx = BotContext(settings)
    for name, description in (
        ("complaint", "Unhappy customer"),
        ("question", "Asks how or why"),
        ("feedback", "Opinion or praise"),
    ):
        labels.add_label_def(ctx.db(), name, description)
    app = create_app(ctx, WebClient(token=standin.bot_token, base_url=standin.api_url))
    yield Bot(app, ctx, standin)
    ctx.drain()
    ctx.close()
    standin.stop()


def as_json(value):
    """A parameter as sent: JSON-encoded in form posts, already structured in JSON posts."""
    return json.loads(value) if isinstance(value, str) else value


def reply_to(bot, ts):
    """The bot's thread reply under message `ts`."""
    posted = [c for c in bot.standin.wait_for("chat.postMessage") if c.params.get("thread_ts") == ts]
    assert len(posted) == 1
    return posted[0]


def test_channel_message_is_stored_classified_and_answered_in_thread(bot):
    ts = bot.post("The app crashed twice today and I lost my work")
    bot.settle()
    stored = messages.find_message(bot.db, messages.slack_external_id(INTAKE, ts))
    assert stored.source == "slack_message" and stored.sender == AGENT
    call = reply_to(bot, ts)
    assert call.params["channel"] == INTAKE
    reply = as_json(call.params["blocks"])
    prediction = predictions.latest_prediction(bot.db, stored.id)
    assert prediction.label in ("complaint", "question", "feedback")
    assert f"`{prediction.label}`" in reply[0]["text"]["text"]
    assert "zero-shot" in reply[1]["elements"][0]["text"]  # no adapter yet, and it says so
    actions = reply[-1]["elements"]
    assert actions[0]["action_id"] == "label_confirm" and actions[1]["action_id"] == "label_pick"
    assert [o["text"]["text"] for o in actions[1]["options"]] == ["complaint", "feedback", "question"]


def test_forwarded_email_with_body_in_the_event(bot):
    ts = bot.next_ts()
    file = payloads.email_file(
        "F0MAIL1",
        subject="Refund for order 1234",
        sender="ann@example.com",
        sender_name="Ann",
        body="<p>I was charged <b>twice</b>.</p>",
    )
    bot.event(payloads.email_event(INTAKE, ts, file))
    bot.settle()
    stored = messages.find_message(bot.db, messages.slack_external_id(INTAKE, ts))
    assert (stored.source, stored.subject, stored.sender) == ("email", "Refund for order 1234", "Ann <ann@example.com>")
    assert stored.raw_body == "<p>I was charged <b>twice</b>.</p>" and stored.clean_body == "I was charged twice."
    assert bot.standin.calls_to("files.info") == []
    reply_to(bot, ts)


def test_forwarded_email_without_body_is_fetched_with_files_info(bot):
    full = payloads.email_file(
        "F0MAIL2",
        subject="Login broken",
        sender="bob@example.com",
        body="I cannot log in since the update.\n\n-- \nBob",
    )
    bot.standin.add_file(full)
    ts = bot.next_ts()
    bot.event(
        payloads.email_event(
            INTAKE, ts, payloads.email_file("F0MAIL2", subject="Login broken", sender="bob@example.com", body=None)
        )
    )
    bot.settle()
    assert bot.standin.calls_to("files.info")[0].params["file"] == "F0MAIL2"
    stored = messages.find_message(bot.db, messages.slack_external_id(INTAKE, ts))
    assert stored.raw_body.startswith("I cannot log in since the update.")
    reply_to(bot, ts)


def test_commands_are_acknowledged_while_cleaning_is_stuck(bot, monkeypatch):
    """Cleaning runs on the intake pool, after the acknowledgement: more stuck messages than Bolt has
    listener threads leave a slash command answered, and every message is stored once cleaning resumes."""
    release, real_clean = threading.Event(), bot.ctx.clean
    monkeypatch.setattr(bot.ctx, "clean", lambda raw: release.wait(60) and real_clean(raw))
    try:
        stamps = [bot.post(f"message {i} about my order") for i in range(bot.ctx.listener_executor._max_workers + 2)]
        started = time.monotonic()
        answered = len(bot.standin.responses)
        assert bot.command_ack("/labels")["text"] == CHECKING  # 200 and an acknowledgement, not Bolt's timeout
        assert time.monotonic() - started < 2.5
        deadline = time.monotonic() + 20  # the answer comes from the command pool, not the stuck intake pool
        while len(bot.standin.responses) == answered and time.monotonic() < deadline:
            time.sleep(0.05)
        assert bot.standin.responses[answered:][0]["text"] == "3 labels"
    finally:
        release.set()
    bot.settle()
    for ts in stamps:
        assert messages.find_message(bot.db, messages.slack_external_id(INTAKE, ts)).clean_body.startswith("message")


def test_a_huge_email_from_files_info_is_stored_cut_and_answered(bot):
    from bench.hostile import huge_body

    body = huge_body(600_000)
    bot.standin.add_file(payloads.email_file("F0HUGE", subject="Where is my order", sender="c@example.com", body=body))
    ts = bot.next_ts()
    bot.event(
        payloads.email_event(
            INTAKE, ts, payloads.email_file("F0HUGE", subject="Where is my order", sender="c@example.com", body=None)
        )
    )
    bot.settle()
    stored = messages.find_message(bot.db, messages.slack_external_id(INTAKE, ts))
    assert stored.raw_body == body[: messages.MAX_RAW_CHARS] + messages.cut_note(len(body))
    assert stored.clean_body == body[: messages.MAX_CLEAN_CHARS].strip()
    reply_to(bot, ts)


def test_duplicate_delivery_is_stored_and_answered_once(bot):
    ts = bot.next_ts()
    event = payloads.message_event(INTAKE, AGENT, "Where is my parcel?", ts)
    for retry in (None, 1, 2):
        assert bot.event(event, event_id="Ev0SAME", retry_num=retry).status == 200
    bot.settle()
    time.sleep(0.2)
    assert messages.count_messages(bot.db) == 1
    assert len([c for c in bot.standin.calls_to("chat.postMessage") if c.params.get("thread_ts") == ts]) == 1


def test_edits_update_text_and_deletes_keep_labels(bot):
    ts = bot.post("My card is brokn")
    bot.settle()
    message = messages.find_message(bot.db, messages.slack_external_id(INTAKE, ts))
    labels.add_label(bot.db, message.id, "complaint", by=AGENT, method="button")
    bot.event(
        {
            "type": "message",
            "subtype": "message_changed",
            "channel": INTAKE,
            "ts": bot.next_ts(),
            "message": {"type": "message", "user": AGENT, "text": "My card is broken", "ts": ts},
            "previous_message": {"type": "message", "user": AGENT, "text": "My card is brokn", "ts": ts},
        }
    )
    bot.settle()
    assert messages.get_message(bot.db, message.id).clean_body == "My card is broken"
    bot.event(
        {
            "type": "message",
            "subtype": "message_deleted",
            "channel": INTAKE,
            "ts": bot.next_ts(),
            "deleted_ts": ts,
            "previous_message": {"type": "message", "user": AGENT, "ts": ts},
        }
    )
    bot.settle()
    gone = messages.get_message(bot.db, message.id)
    assert gone.deleted_at and labels.current_label(bot.db, message.id).label == "complaint"


def test_bots_threads_and_other_channels_are_ignored(bot):
    bot.post("I am the bot", user=bot.standin.bot_user_id)
    bot.post("I am another bot", bot_id="B0OTHER", subtype="bot_message")
    bot.post("Not an intake channel", channel=OTHER)
    parent = bot.post("A real request")
    bot.post("a reply in the thread", thread_ts=parent)
    bot.settle()
    assert [
        m.clean_body
        for m in map(lambda r: messages.get_message(bot.db, r[0]), bot.db.execute("SELECT id FROM messages").fetchall())
    ] == ["A real request"]


def test_label_command_latest_unlabeled_and_by_link(bot):
    first = bot.post("Where do I change my address?")
    second = bot.post("You charged me twice!")
    bot.settle()
    answer = bot.command("/label", "Complaint")
    assert answer["response_type"] == "ephemeral" and answer["text"].startswith("Labeled `complaint`")
    latest = messages.find_message(bot.db, messages.slack_external_id(INTAKE, second))
    assert labels.current_label(bot.db, latest.id).method == "slash_command"
    link = f"https://standin.slack.com/archives/{INTAKE}/p{first.replace('.', '')}"
    assert bot.command("/label", f"question {link}")["text"].startswith("Labeled `question`")
    earlier = messages.find_message(bot.db, messages.slack_external_id(INTAKE, first))
    assert labels.current_label(bot.db, earlier.id).label == "question"
    updated = bot.standin.wait_for("chat.update", 2)
    assert any("Labeled `question` by <@U0AGENT>" in json.dumps(c.params["blocks"]) for c in updated)


def test_label_command_errors_are_ephemeral_and_list_what_is_valid(bot):
    bot.post("hello")
    bot.settle()
    unknown = bot.command("/label", "praise")
    assert unknown["response_type"] == "ephemeral"
    assert unknown["text"] == "Unknown label `praise`. Valid labels: `complaint`, `feedback`, `question`"
    assert "Usage: `/label LABEL [message link]`" in bot.command("/label")["text"]
    other = f"https://standin.slack.com/archives/{OTHER}/p1700000000000100"
    assert "is not an intake channel" in bot.command("/label", f"question {other}")["text"]
    assert "not a Slack message link" in bot.command("/label", "question http://example.com/x")["text"]
    assert bot.db.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 0


def test_buttons_and_picker_store_human_labels_and_update_the_reply(bot):
    ts = bot.post("Thanks, the new dashboard is lovely")
    bot.settle()
    reply = reply_to(bot, ts)
    blocks = as_json(reply.params["blocks"])
    message = {
        "type": "message",
        "ts": bot.standin.calls_to("chat.postMessage")[-1].params
        and next(ts_ for (ch, ts_), m in bot.standin.messages.items() if m.get("thread_ts") == ts),
        "text": reply.params["text"],
        "blocks": blocks,
    }
    confirm, picker = blocks[-1]["elements"]
    bot.send(
        payloads.block_action(
            {**confirm, "block_id": "label_actions"},
            user=AGENT,
            channel=INTAKE,
            message=message,
            response_url=bot.standin.response_url(),
        )
    )
    bot.settle()
    stored = messages.find_message(bot.db, messages.slack_external_id(INTAKE, ts))
    predicted = predictions.latest_prediction(bot.db, stored.id).label
    assert labels.current_label(bot.db, stored.id).label == predicted
    choice = next(o for o in picker["options"] if o["text"]["text"] == "feedback")
    bot.send(
        payloads.block_action(
            {
                "type": "static_select",
                "action_id": "label_pick",
                "block_id": "label_actions",
                "selected_option": choice,
            },
            user=ADMIN,
            channel=INTAKE,
            message=message,
            response_url=bot.standin.response_url(),
        )
    )
    bot.settle()
    history = labels.label_history(bot.db, stored.id)
    assert [(e.label, e.labeled_by, e.method) for e in history][-1] == ("feedback", ADMIN, "button")
    update = bot.standin.wait_for("chat.update", 2)[-1]
    assert update.params["ts"] == message["ts"]
    assert "Labeled `feedback` by <@U0ADMIN>" in json.dumps(update.params["blocks"])


def test_message_shortcut_opens_the_picker_and_the_modal_saves_the_label(bot):
    target = {"type": "message", "user": AGENT, "text": "old message from before", "ts": "1690000000.000200"}
    bot.send(payloads.message_shortcut("label_message", user=AGENT, channel=INTAKE, message=target))
    bot.settle()
    view = as_json(bot.standin.wait_for("views.open")[0].params["view"])
    assert view["callback_id"] == "label_modal"
    stored = messages.find_message(bot.db, messages.slack_external_id(INTAKE, target["ts"]))
    option = next(o for o in view["blocks"][1]["element"]["options"] if o["text"]["text"] == "question")
    response = bot.send(
        payloads.view_submission(
            view, {"label": {"choice": {"type": "static_select", "selected_option": option}}}, user=AGENT
        )
    )
    assert response.status == 200
    bot.settle()
    assert labels.current_label(bot.db, stored.id).method == "shortcut"


def test_retrain_admins_only_queues_once_and_reports_status(bot):
    refused = bot.command("/retrain", user=AGENT)
    assert refused["text"].startswith("Only admins can retrain") and "<@U0ADMIN>" in refused["text"]
    assert "Cannot train: training data is empty" in bot.command("/retrain", user=ADMIN)["text"]
    for i in range(3):
        for name in ("complaint", "question"):
            m, _ = messages.add_message(bot.db, source="import", external_id=f"i:{name}{i}", raw_body=f"{name} {i}")
            labels.add_label(bot.db, m.id, name, by=ADMIN, method="cli")
    dry = bot.command("/retrain", "dry-run", user=ADMIN)["text"]
    assert dry.startswith("Data check passed: 6 labeled messages") and runs.list_runs(bot.db) == []
    queued = bot.command("/retrain", "epochs=2", user=ADMIN)["text"]
    assert queued.startswith("Queued training run 1 on 6 labeled messages: `complaint` 3, `question` 3")
    assert runs.get_run(bot.db, 1).params == {"epochs": 2}
    again = bot.command("/retrain", user=ADMIN)["text"]
    assert again.startswith("A training run is already active") and "Run 1: *queued*" in again
    assert "Run 1: *queued*" in bot.command("/retrain", "status", user=AGENT)["text"]
    assert "`epochs` takes a whole number from 1 to 99" in bot.command("/retrain", "epochs=lots", user=ADMIN)["text"]
    assert (
        "`unlabelled_max` takes a whole number from 0 to 10000"
        in (bot.command("/retrain", "unlabelled_max=-1", user=ADMIN)["text"])
    )
    assert bot.command("/retrain", "cancel", user=ADMIN)["text"] == "Run 1 was queued; it is cancelled."
    assert runs.get_run(bot.db, 1).status == "cancelled"


def test_datacheck_finds_conflicts_and_its_buttons_fix_them(bot):
    pairs = (
        [("Where is my parcel?", "question"), ("where is my parcel", "complaint")]
        + [(f"the app crashed again {i}", "complaint") for i in range(3)]
        + [(f"how do I pay {i}", "question") for i in range(3)]
    )
    for i, (text, label) in enumerate(pairs):
        m, _ = messages.add_message(bot.db, source="import", external_id=f"i:{i}", raw_body=text)
        labels.add_label(bot.db, m.id, label, by=AGENT, method="cli")
    refused = bot.command("/retrain", user=ADMIN)["text"]
    assert refused.startswith("Cannot train: 8 labeled messages checked: 1 conflict") and runs.list_runs(bot.db) == []
    assert bot.command("/datacheck", user=ADMIN)["text"] == "Checking 8 labeled messages..."
    bot.settle()
    answer = bot.standin.responses[-1]
    blocks = json.dumps(answer["blocks"])
    assert "*conflict*" in blocks and "complaint by U0AGENT" not in answer["text"]
    conflict_actions = next(b for b in answer["blocks"] if b["type"] == "actions")
    exclude = next(e for e in conflict_actions["elements"] if e["action_id"] == "datacheck_exclude")
    bot.send(
        payloads.block_action(
            {**exclude, "block_id": conflict_actions["block_id"]},
            user=ADMIN,
            channel=INTAKE,
            message={"type": "message", "ts": "1.1", "text": ""},
            response_url=bot.standin.response_url(),
        )
    )
    bot.settle()
    assert bot.standin.responses[-1]["text"] == "Data check: excluded 2 message(s) from training."
    assert [e.excluded and e.method == "datacheck" for e in labels.label_history(bot.db, 1)] == [False, True]
    assert len(labels.labeled_messages(bot.db)) == 6
    assert bot.command("/retrain", user=ADMIN)["text"].startswith("Queued training run 1 on 6 labeled messages")


def test_model_command_and_rollback(bot):
    assert "zero-shot" in bot.command("/model")["text"]
    for metrics in ({"accuracy": 0.8, "macro_f1": 0.7, "n": 10}, {"accuracy": 0.9, "macro_f1": 0.8, "n": 10}):
        a = adapters.register_adapter(bot.db, path="/x", base_model="m", labels=["a"], metrics=metrics)
        adapters.promote(bot.db, a.version)
    shown = bot.command("/model")["text"]
    assert shown.startswith("*Serving:* adapter v2") and "v1: accuracy 80.0%" in shown
    assert bot.command("/model", "rollback", user=AGENT)["text"] == "Only admins can roll back the model."
    assert adapters.current_adapter(bot.db).version == 2
    assert bot.command("/model", "rollback", user=ADMIN)["text"] == "Rolled back: adapter v1 is serving again."
    assert adapters.current_adapter(bot.db).version == 1


def test_classify_labels_and_stats_commands(bot):
    assert bot.command("/classify", "where is my parcel")["text"] == "Classifying..."
    bot.settle()
    answer = bot.standin.responses[-1]
    assert answer["response_type"] == "ephemeral" and "zero-shot" in answer["text"]
    assert bot.command("/classify")["text"] == "Usage: `/classify TEXT`"
    assert (
        bot.command("/labels", "add refund Wants money back", user=ADMIN)["text"]
        == "Label `refund` is active: Wants money back"
    )
    assert "`refund` (0): Wants money back" in json.dumps(bot.command("/labels")["blocks"])
    assert "Cannot add that label" in bot.command("/labels", "add " + "x" * 70, user=ADMIN)["text"]
    bot.post("The invoice is wrong")
    bot.settle()
    stats = bot.command("/stats")
    text = json.dumps(stats["blocks"])
    assert "*Messages:* 1" in text and "`refund` 0" in text


def test_app_home_shows_the_dashboard(bot):
    bot.event(
        {"type": "app_home_opened", "user": AGENT, "channel": "D0HOME", "tab": "home", "event_ts": "1700000000.1"}
    )
    bot.settle()
    view = as_json(bot.standin.wait_for("views.publish")[0].params["view"])
    assert view["type"] == "home" and "*Messages:* 0" in json.dumps(view["blocks"])


@pytest.mark.parametrize(
    "sign",
    [
        {"secret": "wrong-secret"},
        {"timestamp": int(time.time()) - 6 * 60},  # older than Slack's 5 minutes: a replay
    ],
)
def test_forged_and_expired_requests_are_rejected_and_nothing_is_stored(bot, sign):
    body, content_type = payloads.event_callback(payloads.message_event(INTAKE, AGENT, "forged", bot.next_ts()))
    headers = payloads.signed_headers(sign.get("secret", SECRET), body, content_type, timestamp=sign.get("timestamp"))
    response = bot.app.dispatch(BoltRequest(body=body, headers=headers))
    command_body, command_type = payloads.slash_command(
        "/label", "complaint", user=AGENT, channel=INTAKE, response_url=bot.standin.response_url()
    )
    command = bot.app.dispatch(
        BoltRequest(
            body=command_body,
            headers=payloads.signed_headers(
                sign.get("secret", SECRET), command_body, command_type, timestamp=sign.get("timestamp")
            ),
        )
    )
    bot.settle()
    assert response.status == 401 and command.status == 401
    assert messages.count_messages(bot.db, include_deleted=True) == 0
    assert bot.standin.calls_to("chat.postMessage") == []


def test_http_mode_serves_signed_requests_on_slack_events(bot):
    from bot.slack.server import make_http_server

    server = make_http_server(bot.ctx, "127.0.0.1", 0)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    try:
        body, content_type = payloads.event_callback(payloads.message_event(INTAKE, AGENT, "over http", "1700000500.1"))
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.server_port}/slack/events",
            data=body.encode(),
            headers=payloads.signed_headers(SECRET, body, content_type),
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200 and response.headers["Server"] == "waitress"  # not wsgiref's server
        bad = urllib.request.Request(
            request.full_url,
            data=body.encode(),
            method="POST",
            headers=payloads.signed_headers("nope", body, content_type),
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(bad, timeout=10)
        assert err.value.code == 401
        bot.standin.wait_for("chat.postMessage")
    finally:
        server.shutdown()
        bot.settle()
    serving.join(10)
    assert not serving.is_alive()  # shutdown ends serve_forever (SIGTERM relies on it)
    assert messages.count_messages(bot.db) == 1


def test_http_mode_takes_a_burst_of_50_concurrent_requests(bot):
    from concurrent.futures import ThreadPoolExecutor

    from bot.slack.server import make_http_server

    server = make_http_server(bot.ctx, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/slack/events"

    def send(i):
        body, content_type = payloads.slash_command(
            "/labels", "", user=AGENT, channel=INTAKE, response_url=bot.standin.response_url()
        )
        request = urllib.request.Request(
            url, data=body.encode(), method="POST", headers=payloads.signed_headers(SECRET, body, content_type)
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status

    try:
        with ThreadPoolExecutor(max_workers=50) as pool:
            statuses = list(pool.map(send, range(50)))
    finally:
        server.shutdown()
    assert statuses == [200] * 50


def test_manifest_declares_exactly_what_the_app_handles(bot):
    import yaml

    from .conftest import REPO

    manifest = yaml.safe_load((REPO / "manifest.yml").read_text())
    declared = {c["command"] for c in manifest["features"]["slash_commands"]}
    for command in declared:
        bot.command(command, "", user=AGENT)  # asserts 200: a command no listener handles gets 404
    assert declared == {"/label", "/retrain", "/model", "/classify", "/labels", "/stats", "/datacheck"}
    assert [s["callback_id"] for s in manifest["features"]["shortcuts"]] == ["label_message"]
    assert set(manifest["settings"]["event_subscriptions"]["bot_events"]) == {
        "message.channels",
        "message.groups",
        "app_home_opened",
    }
    unknown = bot.send(
        payloads.slash_command("/unknown", "", user=AGENT, channel=INTAKE, response_url=bot.standin.response_url())
    )
    assert unknown.status == 404  # Bolt answers what no listener handles with 404


def test_logs_at_info_never_contain_tokens_or_email_bodies(bot, caplog):
    import logging

    secret_body = "My account number is 12345678 and I am furious about the fees"
    caplog.set_level(logging.INFO)
    ts = bot.next_ts()
    bot.event(
        payloads.email_event(
            INTAKE, ts, payloads.email_file("F0LOG", subject="Fees", sender="z@example.com", body=secret_body)
        )
    )
    bot.settle()
    reply_to(bot, ts)
    bot.command("/label", "complaint")
    bot.command("/retrain", user=AGENT)  # refused: logged with the user id only
    text = caplog.text
    assert "stored email" in text and "refused /retrain by U0AGENT" in text  # the logs do say what happened
    assert secret_body not in text and "12345678" not in text
    assert bot.standin.bot_token not in text and SECRET not in text


def thread_replies(bot, ts):
    return [c for c in bot.standin.calls_to("chat.postMessage") if c.params.get("thread_ts") == ts]


def test_failed_answer_is_retried_by_the_backlog_sweep_once(bot):
    from bot.slack.listeners.intake import answer_backlog

    bot.standin.fail("chat.postMessage", 500, times=1)  # this client does not retry: the answer fails
    ts = bot.post("The invoice total is wrong again")
    bot.settle()
    stored = messages.find_message(bot.db, messages.slack_external_id(INTAKE, ts))
    from storage import replies

    assert replies.get_reply(bot.db, stored.id) is None  # unanswered, and its claim was given back
    assert answer_backlog(bot.ctx, bot.app.client, older_than_s=0) == 1
    bot.settle()
    assert answer_backlog(bot.ctx, bot.app.client, older_than_s=0) == 0  # answered: nothing left
    bot.settle()
    assert replies.get_reply(bot.db, stored.id) is not None
    delivered = [m for m in bot.standin.messages.values() if m.get("thread_ts") == ts]
    assert len(delivered) == 1 and len(thread_replies(bot, ts)) == 2  # one refused attempt, one delivered
    assert delivered[0]["metadata"]["event_payload"] == {"message_id": stored.id}


def test_bot_stopped_between_claim_and_post_answers_after_restart_exactly_once(bot):
    from bot.slack.listeners.intake import answer_backlog, recover_replies
    from storage import replies

    # Two messages whose answers were claimed by a bot that then died: one never posted,
    # one posted but not recorded (the reply is in Slack, with its metadata).
    stored = []
    for text in ("Where is my parcel?", "Your support was great, thanks"):
        ts = bot.next_ts()
        message, _ = messages.add_message(
            bot.db,
            source="slack_message",
            external_id=messages.slack_external_id(INTAKE, ts),
            raw_body=text,
            clean_body=text,
            subject=None,
            sender=AGENT,
            team="T0STANDIN",
            channel=INTAKE,
            ts=ts,
            thread_ts=None,
            event_id=None,
        )
        assert replies.claim_reply(bot.db, message.id, INTAKE)
        stored.append(message)
    posted = bot.app.client.chat_postMessage(
        channel=INTAKE,
        thread_ts=stored[1].ts,
        text="earlier answer",
        metadata={"event_type": "supportbot_reply", "event_payload": {"message_id": stored[1].id}},
    )
    assert answer_backlog(bot.ctx, bot.app.client, older_than_s=0) == 0  # claimed: not touched before recovery
    assert recover_replies(bot.ctx, bot.app.client) == (1, 1)
    assert replies.get_reply(bot.db, stored[1].id)["ts"] == posted["ts"]
    assert answer_backlog(bot.ctx, bot.app.client, older_than_s=0) == 1
    bot.settle()
    for message in stored:
        in_thread = [m for m in bot.standin.messages.values() if m.get("thread_ts") == message.ts]
        assert len(in_thread) == 1
    assert replies.get_reply(bot.db, stored[0].id) is not None


def test_http_mode_refuses_oversized_non_utf8_and_malformed_bodies_before_parsing(bot):
    from bot.slack.server import MAX_BODY_BYTES, make_http_server

    server = make_http_server(bot.ctx, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/slack/events"

    def status(data: bytes, headers: dict) -> int:
        request = urllib.request.Request(url, data=data, method="POST", headers=headers)
        try:
            return urllib.request.urlopen(request, timeout=10).status
        except urllib.error.HTTPError as err:
            return err.code

    try:
        big = "x" * (MAX_BODY_BYTES + 1)
        body, content_type = payloads.event_callback(payloads.message_event(INTAKE, AGENT, big, "1700000600.1"))
        assert status(body.encode(), payloads.signed_headers(SECRET, body, content_type)) == 413
        raw = b'{"type": "event_callback", "event": {"text": "caf\\xe9 \xff\xfe"}}'
        assert status(raw, payloads.signed_headers(SECRET, raw.decode("latin-1"), "application/json")) == 400
        cut = '{"type": "event_callback", "event": {"ts": "1"'
        assert status(cut.encode(), payloads.signed_headers(SECRET, cut, "application/json")) == 400
        form = "payload=%7Bnot+json"
        assert status(form.encode(), payloads.signed_headers(SECRET, form, "application/x-www-form-urlencoded")) == 400
        # A normal request still goes through on the same server.
        body, content_type = payloads.event_callback(payloads.message_event(INTAKE, AGENT, "café ok", "1700000601.1"))
        assert status(body.encode(), payloads.signed_headers(SECRET, body, content_type)) == 200
    finally:
        server.shutdown()
        bot.settle()
    assert messages.count_messages(bot.db) == 1


def test_http_mode_checks_the_signature_before_parsing_and_deep_nesting_is_a_400(bot):
    """A body nested too deeply for the parser: unsigned it is refused before parsing (401), signed a 400."""
    from bot.slack.server import make_http_server

    server = make_http_server(bot.ctx, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/slack/events"

    def status(data: str, headers: dict) -> int:
        request = urllib.request.Request(url, data=data.encode(), method="POST", headers=headers)
        try:
            return urllib.request.urlopen(request, timeout=10).status
        except urllib.error.HTTPError as err:
            return err.code

    deep = '{"type": "event_callback", "event": ' + "[" * 100_000 + "]" * 100_000 + "}"
    form = "payload=" + "%5B" * 100_000
    try:
        assert status(deep, {"content-type": "application/json"}) == 401
        assert (
            status(
                deep, {**payloads.signed_headers(SECRET, deep, "application/json"), "x-slack-request-timestamp": "soon"}
            )
            == 401
        )
        assert status(form, {"content-type": "application/x-www-form-urlencoded"}) == 401
        assert status(deep, payloads.signed_headers(SECRET, deep, "application/json")) == 400
        assert status(form, payloads.signed_headers(SECRET, form, "application/x-www-form-urlencoded")) == 400
    finally:
        server.shutdown()
    assert messages.count_messages(bot.db, include_deleted=True) == 0


def test_http_mode_logs_the_port_it_listens_on(bot, monkeypatch, caplog):
    import logging

    from bot.slack import scheduler, server

    class NoSchedule:
        def shutdown(self, wait=True):
            pass

    monkeypatch.setattr(scheduler, "start_scheduler", lambda ctx, client: NoSchedule())
    monkeypatch.setattr(server.HttpServer, "serve_forever", lambda self: None)
    monkeypatch.setattr(server.signal, "signal", lambda *args: None)  # the test run keeps its own SIGTERM
    with caplog.at_level(logging.INFO, logger="bot.slack.server"):
        server.serve(bot.ctx.settings, http=True, host="127.0.0.1", port=0)
    listening = [r.getMessage() for r in caplog.records if "listening" in r.msg]
    assert len(listening) == 1 and re.fullmatch(
        r"supportbot listening on http://127\.0\.0\.1:\d+/slack/events", listening[0]
    )


def test_retrain_takes_the_options_its_out_of_memory_advice_names(bot):
    """The out-of-memory message suggests /retrain commands: each must be accepted and reach the run's config."""
    import re

    from bot.runs.execute import OOM_HINT

    for i in range(3):
        for name in ("complaint", "question"):
            m, _ = messages.add_message(bot.db, source="import", external_id=f"i:{name}{i}", raw_body=f"{name} {i}")
            labels.add_label(bot.db, m.id, name, by=ADMIN, method="cli")
    suggested = re.findall(r"`/retrain ([^`]*)`", OOM_HINT)
    assert len(suggested) == 2
    for options in suggested:
        answer = bot.command("/retrain", options, user=ADMIN)["text"]
        assert answer.startswith("Queued training run"), answer
        run = runs.active_run(bot.db)
        expected = {k: (json.loads(v)) for k, v in (o.split("=") for o in options.split())}
        assert run.params == expected
        runs.finish_run(bot.db, run.id, "cancelled")
    for bad, says in (
        ("batch_size=0", "`batch_size` takes a whole number from 1 to 64, got `0`"),
        ("grad_accum=x", "`grad_accum` takes a whole number from 1 to 64"),
        ("gradient_checkpointing=maybe", "`gradient_checkpointing` takes `true` or `false`"),
        ("learning_rate=1", "Unknown option `learning_rate=1`"),
    ):
        answer = bot.command("/retrain", bad, user=ADMIN)["text"]
        assert answer.startswith(says) and "batch_size=N" in answer
    assert runs.active_run(bot.db) is None


def test_datacheck_is_answered_while_every_work_thread_is_busy(bot):
    """The heavy check has its own thread and process: a work pool busy classifying does not hold it up."""
    for i in range(3):
        for name in ("complaint", "question"):
            m, _ = messages.add_message(
                bot.db, source="import", external_id=f"i:{name}{i}", raw_body=f"{name} number {i} about the app"
            )
            labels.add_label(bot.db, m.id, name, by=ADMIN, method="cli")
    release = threading.Event()
    for _ in range(bot.ctx.settings.workers):
        bot.ctx.submit(release.wait, 120)
    try:
        assert bot.command("/datacheck", user=ADMIN)["text"] == "Checking 6 labeled messages..."
        deadline = time.monotonic() + 90
        while not bot.standin.responses and time.monotonic() < deadline:
            time.sleep(0.1)
        assert bot.standin.responses, "no /datacheck answer while the work pool was busy"
        assert bot.standin.responses[-1]["text"].startswith("6 labeled messages checked")
    finally:
        release.set()


def test_blank_email_is_answered_once_as_such_not_retried(bot):
    from bot.slack.listeners.intake import NOTHING_TO_CLASSIFY, answer_backlog

    ts = bot.next_ts()
    bot.event(
        payloads.email_event(
            INTAKE, ts, payloads.email_file("F0BLANK", subject="  ", sender="x@example.com", body=" \n ")
        )
    )
    bot.settle()
    stored = messages.find_message(bot.db, messages.slack_external_id(INTAKE, ts))
    assert reply_to(bot, ts).params["text"] == NOTHING_TO_CLASSIFY
    assert predictions.latest_prediction(bot.db, stored.id) is None
    assert answer_backlog(bot.ctx, bot.app.client, older_than_s=0) == 0  # answered: the sweep leaves it
    bot.settle()
    reply_to(bot, ts)  # still the one answer


def test_every_surface_names_the_model_that_answered_and_what_serves(bot, monkeypatch):
    """With the embeddings serving, /classify, the thread reply, /stats, App Home and /model say so, and keep
    saying so after a gate kept the embeddings over a newly registered adapter."""
    from classifier import embeddings
    from storage import served
    from tests.test_serving import fake_embed, label_two_of_each

    monkeypatch.setattr(embeddings, "embed", fake_embed)
    label_two_of_each(bot.db)
    bot.command("/classify", "broken refund angry")
    bot.settle()
    answer = bot.standin.responses[-1]["text"]
    assert ", embeddings)" in answer and "vNone" not in answer and "adapter" not in answer
    ts = bot.post("angry broken late refund")
    bot.settle()
    assert "embeddings" in json.dumps(as_json(reply_to(bot, ts).params["blocks"]))

    # A run registered adapter v1 but the gate kept the embeddings.
    a = adapters.register_adapter(
        bot.db,
        path="/x",
        base_model="m",
        labels=["complaint", "question"],
        metrics={"accuracy": 0.9, "macro_f1": 0.9, "n": 8},
    )
    adapters.promote(bot.db, a.version)
    served.set_served(
        bot.db,
        "embeddings",
        reason="embeddings keep serving: 1 message of difference is not evidence",
        chosen_by="gate",
    )
    # A person confirms one answer and corrects another.
    message_id = messages.find_message(bot.db, messages.slack_external_id(INTAKE, ts)).id
    labels.add_label(bot.db, message_id, "question", by=AGENT, method="button")
    stats = json.dumps(bot.command("/stats")["blocks"])
    assert "*Serving:* embeddings - embeddings keep serving" in stats
    assert "zero-shot base model" not in stats and "adapter v1" not in stats.split("Live accuracy")[0]
    live = predictions.live_accuracy(bot.db)
    shown = predictions.latest_prediction(bot.db, message_id)
    assert list(live) == ["embeddings"] and shown.model == "embeddings"
    verdict = "1 confirmed, 0 corrected" if shown.label == "question" else "0 confirmed, 1 corrected"
    assert f"embeddings: {live['embeddings']['accuracy']:.0%} of 1 ({verdict})" in stats
    assert bot.command("/model")["text"].startswith("*Serving:* embeddings - embeddings keep serving")
    bot.event(
        {"type": "app_home_opened", "user": AGENT, "channel": "D0HOME", "tab": "home", "event_ts": "1700000000.1"}
    )
    bot.settle()
    home = json.dumps(as_json(bot.standin.wait_for("views.publish")[0].params["view"])["blocks"])
    assert "*Serving:* embeddings" in home


def test_the_thread_reply_names_an_ensemble_as_an_ensemble():
    from bot.serving import answered_by
    from bot.slack.blocks import prediction_blocks
    from classifier.classify import Prediction

    p = Prediction(
        label="complaint",
        confidence=0.9,
        needs_review=False,
        adapter_version=3,
        zero_shot=False,
        scores={"complaint": 0.9, "question": 0.1},
        alternatives=[["question", 0.1]],
        certified=True,
        latency_ms=1.0,
        model="adapter v3 + embeddings",
    )
    assert answered_by(p) == "adapter v3 + embeddings"
    assert "adapter v3 + embeddings" in json.dumps(prediction_blocks(1, p, ["complaint", "question"]))
    old_row = predictions.Prediction(
        id=1,
        message_id=1,
        adapter_version=2,
        label="a",
        confidence=0.5,
        needs_review=False,
        scores={},
        latency_ms=None,
        created_at="",
        model=None,
    )
    assert answered_by(old_row) == "adapter v2"


def test_commands_that_ask_slack_acknowledge_before_asking(bot):
    """/label asks Slack who is in the channel: the acknowledgement goes out while that call is still
    unanswered, and the answer follows through the response URL."""
    ts = bot.post("My order never came")
    bot.settle()
    gate = bot.standin.hold("conversations.members")
    acked = bot.command_ack("/label", "complaint")
    assert acked == {"response_type": "ephemeral", "text": CHECKING}
    assert bot.standin.answered["conversations.members"] == 0  # acknowledged before Slack answered
    gate.set()
    bot.settle()
    assert bot.standin.answered["conversations.members"] == 1
    assert bot.standin.responses[-1]["text"].startswith("Labeled `complaint`")
    message = messages.find_message(bot.db, messages.slack_external_id(INTAKE, ts))
    assert labels.current_label(bot.db, message.id).label == "complaint"
