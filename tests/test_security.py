"""The permission model and what reaches Slack, driven through the real app with signed requests.

Roles: ADMIN (an admin, in the public intake channel), AGENT (a member of it), OUTSIDER (only in a channel
outside intake) and INSIDER (only in the private intake channel). README, "Security and data".
"""

import json

import pytest

from bot.slack.relay import Relay
from slack_standin import payloads
from storage import labels, messages

from .test_bot import ADMIN, AGENT, INSIDER, INTAKE, OTHER, OUTSIDER, PRIVATE, as_json, bot  # noqa: F401

HOSTILE = "<!channel> URGENT <@U0ADMIN> <https://evil.example|re-enter your password>"


def stored(bot, ts, channel=INTAKE):
    return messages.find_message(bot.db, messages.slack_external_id(channel, ts))


def reply_message(bot, ts):
    """The bot's thread reply under `ts`, as Slack would send it back in an interaction."""
    posted = next(m for m in bot.standin.messages.values() if m.get("thread_ts") == ts)
    return {"type": "message", "ts": posted["ts"], "text": posted["text"], "blocks": posted["blocks"]}


def click(bot, ts, user, channel=INTAKE, element=0, option=None, message=None):
    """Click the reply's Correct button (element 0) or pick `option` in its picker."""
    reply = message or reply_message(bot, ts)
    controls = reply["blocks"][-1]["elements"]
    if option is None:
        action = {**controls[0], "block_id": "label_actions"}
    else:
        picked = next(o for o in controls[1]["options"] if o["text"]["text"] == option)
        action = {
            "type": "static_select",
            "action_id": "label_pick",
            "block_id": "label_actions",
            "selected_option": picked,
        }
    response = bot.send(
        payloads.block_action(
            action, user=user, channel=channel, message=reply, response_url=bot.standin.response_url()
        )
    )
    assert response.status == 200
    bot.settle()


def mrkdwn_texts(value) -> str:
    """Every mrkdwn text in Block Kit `value` (plain_text and values are never formatted), joined."""
    if isinstance(value, dict):
        own = [value["text"]] if value.get("type") == "mrkdwn" else []
        return "\n".join(own + [mrkdwn_texts(v) for v in value.values() if isinstance(v, (dict, list))])
    if isinstance(value, list):
        return "\n".join(mrkdwn_texts(v) for v in value)
    return ""


def label_rows(bot):
    return bot.db.execute("SELECT COUNT(*) FROM labels").fetchone()[0]


def test_label_command_is_for_members_of_the_message_channel(bot):
    public = bot.post("Where do I change my address?")
    private = bot.post("My salary account 4242 was frozen, please help", channel=PRIVATE, user=INSIDER)
    bot.settle()
    link = lambda channel, ts: f"https://standin.slack.com/archives/{channel}/p{ts.replace('.', '')}"  # noqa: E731
    outsider = bot.command("/label", f"question {link(INTAKE, public)}", user=OUTSIDER, channel=OTHER)
    assert outsider["response_type"] == "ephemeral"
    assert outsider["text"].startswith("Only members of <#C0INTAKE> can label its messages")
    leaked = bot.command("/label", f"complaint {link(PRIVATE, private)}", user=AGENT, channel=INTAKE)["text"]
    assert leaked.startswith("Only members of <#G0PRIVATE>") and "salary" not in leaked and "4242" not in leaked
    never = bot.command("/label", f"complaint {link(PRIVATE, '1690000000.000100')}", user=AGENT)["text"]
    assert never.startswith("Only members of <#G0PRIVATE>")  # not "not collected": outsiders learn nothing
    admin = bot.command("/label", f"complaint {link(PRIVATE, private)}", user=ADMIN, channel=INTAKE)["text"]
    assert admin.startswith("Only members of <#G0PRIVATE>")  # admins curate; they do not read private channels
    # Without a link, the latest unlabeled message of the channel the command came from: also members only.
    assert bot.command("/label", "question", user=OUTSIDER, channel=INTAKE)["text"].startswith("Only members")
    assert label_rows(bot) == 0
    assert bot.command("/label", f"question {link(INTAKE, public)}", user=AGENT)["text"].startswith(
        "Labeled `question`"
    )
    assert bot.command("/label", f"complaint {link(PRIVATE, private)}", user=INSIDER, channel=PRIVATE)[
        "text"
    ].startswith("Labeled `complaint`")
    assert label_rows(bot) == 2


def test_reply_buttons_and_picker_refuse_outsiders_and_clicks_from_another_message(bot):
    ts = bot.post("The invoice total is wrong")
    other = bot.post("Where is my parcel?")
    bot.settle()
    message = stored(bot, ts)
    click(bot, ts, OUTSIDER)  # Correct, by someone outside the channel
    click(bot, ts, OUTSIDER, option="feedback")  # the picker, likewise
    refusals = [r["text"] for r in bot.standin.responses[-2:]]
    assert all(t.startswith("Only members of <#C0INTAKE> can label") for t in refusals)
    assert all(r["response_type"] == "ephemeral" for r in bot.standin.responses[-2:])
    assert labels.current_label(bot.db, message.id) is None
    # A button carrying this message's id, clicked under another message's reply: refused.
    forged = reply_message(bot, other)
    forged["blocks"][-1]["elements"][0]["value"] = json.dumps({"m": message.id, "l": "feedback"})
    click(bot, other, AGENT, message=forged)
    assert bot.standin.responses[-1]["text"] == "That button does not belong to this message; nothing was changed."
    assert labels.current_label(bot.db, message.id) is None
    click(bot, ts, AGENT, option="feedback")
    assert labels.current_label(bot.db, message.id).label == "feedback"


def test_repeated_identical_corrections_count_once_for_the_retrain_trigger(bot):
    from bot.slack.scheduler import new_human_labels

    ts = bot.post("Thanks, the new dashboard is lovely")
    bot.settle()
    for _ in range(5):
        click(bot, ts, AGENT)
    message = stored(bot, ts)
    assert len(labels.label_history(bot.db, message.id)) == 1
    click(bot, ts, AGENT, option="complaint")
    click(bot, ts, AGENT, option="feedback")
    assert new_human_labels(bot.db) == 1  # one message, however many clicks


def test_shortcut_and_modal_are_for_members_only(bot):
    target = {"type": "message", "user": AGENT, "text": "old message from before", "ts": "1690000000.000200"}
    bot.send(payloads.message_shortcut("label_message", user=OUTSIDER, channel=INTAKE, message=target))
    bot.settle()
    refused = bot.standin.wait_for("chat.postEphemeral")[-1].params
    assert refused["user"] == OUTSIDER and refused["text"].startswith("Only members of <#C0INTAKE>")
    assert stored(bot, target["ts"]) is None and bot.standin.calls_to("views.open") == []
    bot.send(payloads.message_shortcut("label_message", user=AGENT, channel=INTAKE, message=target))
    bot.settle()
    view = as_json(bot.standin.wait_for("views.open")[0].params["view"])
    option = next(o for o in view["blocks"][1]["element"]["options"] if o["text"]["text"] == "question")
    values = {"label": {"choice": {"type": "static_select", "selected_option": option}}}
    response = bot.send(payloads.view_submission(view, values, user=OUTSIDER))
    assert response.status == 200 and "Only members" in json.loads(response.body)["errors"]["label"]
    other_message = dict(option, value=json.dumps({"m": 999, "l": "question"}))
    forged = {"label": {"choice": {"type": "static_select", "selected_option": other_message}}}
    assert (
        "another message"
        in json.loads(bot.send(payloads.view_submission(view, forged, user=AGENT)).body)["errors"]["label"]
    )
    bot.settle()
    assert labels.current_label(bot.db, stored(bot, target["ts"]).id) is None
    assert bot.send(payloads.view_submission(view, values, user=AGENT)).body == ""
    bot.settle()
    assert labels.current_label(bot.db, stored(bot, target["ts"]).id).label == "question"


@pytest.mark.parametrize("user", [AGENT, OUTSIDER])
def test_label_set_changes_are_for_admins(bot, user):
    before = [(d.name, d.description) for d in labels.list_label_defs(bot.db)]
    for text in ("add refund Wants money back", "describe complaint Anything at all", "retire complaint"):
        answer = bot.command("/labels", text, user=user, channel=OTHER if user == OUTSIDER else INTAKE)
        assert answer["response_type"] == "ephemeral"
        assert answer["text"] == "Only admins can add, describe or retire labels. Admins: <@U0ADMIN>."
    assert [(d.name, d.description) for d in labels.list_label_defs(bot.db)] == before


def test_admin_retires_a_label_it_is_no_longer_offered_or_trained_on_and_history_stays(bot):
    from storage.labels import training_examples

    ts = bot.post("You charged me twice!")
    bot.settle()
    click(bot, ts, AGENT, option="complaint")
    message = stored(bot, ts)
    assert (
        bot.command("/labels", "describe complaint Unhappy about the product", user=ADMIN)["text"]
        == "Label `complaint` is active: Unhappy about the product"
    )
    assert bot.command("/labels", "retire complaint", user=ADMIN)["text"].startswith("Label `complaint` is retired")
    assert [d.name for d in labels.list_label_defs(bot.db)] == ["feedback", "question"]
    assert training_examples(bot.db) == []
    assert labels.label_history(bot.db, message.id)[-1].label == "complaint"
    later = bot.post("The parcel never came")
    bot.settle()
    options = reply_message(bot, later)["blocks"][-1]["elements"][1]["options"]
    assert [o["text"]["text"] for o in options] == ["feedback", "question"]
    assert "Unknown label `complaint`" in bot.command("/label", "complaint", user=AGENT)["text"]


def conflicting_data(bot):
    for i, (text, label, channel) in enumerate(
        [("Where is my parcel?", "question", INTAKE), ("where is my parcel", "complaint", PRIVATE)]
    ):
        m, _ = messages.add_message(
            bot.db,
            source="slack_message",
            external_id=f"slack:{channel}:{i}.1",
            raw_body=text,
            channel=channel,
            ts=f"{i}.1",
        )
        labels.add_label(bot.db, m.id, label, by=AGENT, method="button")
    for i in range(3):
        for label in ("complaint", "question"):
            m, _ = messages.add_message(
                bot.db, source="import", external_id=f"i:{label}{i}", raw_body=f"{label} example {i}"
            )
            labels.add_label(bot.db, m.id, label, by=ADMIN, method="cli")


@pytest.mark.parametrize("user,channel", [(AGENT, INTAKE), (OUTSIDER, OTHER)])
def test_datacheck_and_its_buttons_are_for_admins(bot, user, channel):
    conflicting_data(bot)
    rows = len(labels.labeled_messages(bot.db))
    answer = bot.command("/datacheck", user=user, channel=channel)
    assert answer["text"].startswith("Only admins can run the data check")
    bot.settle()
    assert "parcel" not in json.dumps(bot.standin.responses)
    for action_id, value in (
        ("datacheck_exclude", {"m": [1, 2], "l": "question"}),
        ("datacheck_change", None),
        ("datacheck_keep", {"m": 1, "l": "complaint"}),
    ):
        action = (
            {"type": "button", "action_id": action_id, "block_id": "datacheck_1", "value": json.dumps(value)}
            if value
            else {
                "type": "static_select",
                "action_id": action_id,
                "block_id": "datacheck_1",
                "selected_option": {
                    "text": {"type": "plain_text", "text": "feedback"},
                    "value": json.dumps({"m": 1, "l": "feedback"}),
                },
            }
        )
        bot.send(
            payloads.block_action(
                action,
                user=user,
                channel=channel,
                message={"type": "message", "ts": "1.1"},
                response_url=bot.standin.response_url(),
            )
        )
        bot.settle()
        assert bot.standin.responses[-1]["text"].startswith("Only admins can change or exclude training data")
    assert len(labels.labeled_messages(bot.db)) == rows
    assert [e.method for e in labels.label_history(bot.db, 1)] == ["button"]


def test_datacheck_hides_text_of_channels_the_admin_is_not_in(bot):
    conflicting_data(bot)
    assert bot.command("/datacheck", user=ADMIN)["text"].startswith("Checking")
    bot.settle()
    blocks = bot.standin.responses[-1]["blocks"]
    shown = json.dumps(blocks)
    assert "*conflict*" in shown and "parcel" not in shown and "text hidden" in shown
    conflict = next(i for i, b in enumerate(blocks) if "*conflict*" in json.dumps(b))
    assert [b["type"] for b in blocks[conflict + 1 : conflict + 2]] != ["actions"]  # no fixes: it cannot be read


def test_datacheck_buttons_count_only_as_shown_to_that_admin_and_while_they_can_read_the_messages(bot, monkeypatch):
    from bot.slack import channels, permissions

    conflicting_data(bot)
    bot.standin.set_channel(PRIVATE, {INSIDER, ADMIN}, private=True)  # in the private channel when the check runs
    assert bot.command("/datacheck", user=ADMIN)["text"].startswith("Checking")
    bot.settle()
    blocks = bot.standin.responses[-1]["blocks"]
    actions = next(
        b for b in blocks if b["type"] == "actions" and json.loads(b["elements"][-1]["value"])["m"] == [1, 2]
    )  # the conflict: INTAKE and PRIVATE
    keep, change, exclude = actions["elements"]

    def press(element):
        bot.send(
            payloads.block_action(
                {**element, "block_id": actions["block_id"]},
                user=ADMIN,
                channel=INTAKE,
                message={"type": "message", "ts": "1.1"},
                response_url=bot.standin.response_url(),
            )
        )
        bot.settle()
        return bot.standin.responses[-1]["text"]

    rows = label_rows(bot)
    sealed = json.loads(exclude["value"])
    never_shown = {"m": [1, 2], "l": "question"}  # e.g. typed into the local workspace page
    assert press({**exclude, "value": json.dumps(never_shown)}).startswith("That button is not from a data check")
    for forged in (
        {**sealed, "m": [1, 2, 3]},  # the shown value, changed
        json.loads(keep["value"]),  # another button's value under this one
        {**never_shown, "s": permissions.seal(bot.ctx, "U0OTHERADMIN", "datacheck_exclude", never_shown)["s"]},
    ):  # sealed for another admin
        assert press({**exclude, "value": json.dumps(forged)}).startswith(
            "That button is not from a data check shown to you; nothing was changed"
        )
    assert press({**exclude, "value": "not json"}).startswith("That button is not from a data check")
    # The admin leaves the private channel after the check: its buttons no longer change that message.
    bot.standin.set_channel(PRIVATE, {INSIDER}, private=True)
    monkeypatch.setattr(channels, "CACHE_S", 0)
    assert press(exclude).startswith("Message 2 is in <#G0PRIVATE>, which you are not in")
    assert label_rows(bot) == rows
    bot.standin.set_channel(PRIVATE, {INSIDER, ADMIN}, private=True)
    assert press(exclude) == "Data check: excluded 2 message(s) from training."
    assert label_rows(bot) == rows + 2


def test_digest_hides_private_text_escapes_the_rest_and_its_pickers_check_membership(bot):
    from dataclasses import replace

    from bot.slack.scheduler import post_digest

    bot.ctx.settings = replace(bot.ctx.settings, report_channel="C0REPORTS")
    bot.standin.set_channel("C0REPORTS", {ADMIN, AGENT, OUTSIDER})
    public_ts = bot.next_ts()
    bot.event(
        payloads.email_event(
            INTAKE,
            public_ts,
            payloads.email_file(
                "F0HOSTILE", subject=HOSTILE, sender="x@example.com", body="line one\n<!here> line two"
            ),
        )
    )
    private_ts = bot.post("My salary account 4242 was frozen", channel=PRIVATE, user=INSIDER)
    bot.settle()
    assert post_digest(bot.ctx, bot.app.client) == "queued digest of 2 messages"
    Relay(bot.ctx.db, bot.app.client).deliver_due()
    digest = next(m for (c, _), m in bot.standin.messages.items() if c == "C0REPORTS")
    text = json.dumps([b["text"]["text"] for b in digest["blocks"] if b["type"] == "section"])
    assert "salary" not in text and "4242" not in text and "its text is shown only there" in text
    assert "<!channel>" not in text and "<!here>" not in text and "<@U0ADMIN>" not in text
    assert "<https://evil" not in text and "&lt;!channel&gt;" in text
    quoted = next(b["text"]["text"] for b in digest["blocks"][1:] if "evil" in b["text"]["text"])
    assert all(line.startswith(">") for line in quoted.split("\n")[:-1])  # the newline did not end the quote
    private_id = stored(bot, private_ts, PRIVATE)
    picker = next(
        b["accessory"]
        for b in digest["blocks"]
        if b.get("accessory") and json.loads(b["accessory"]["options"][0]["value"])["m"] == private_id.id
    )
    choice = next(o for o in picker["options"] if o["text"]["text"] == "complaint")
    for user in (AGENT, INSIDER):
        bot.send(
            payloads.block_action(
                {"type": "static_select", "action_id": "label_pick", "block_id": "d", "selected_option": choice},
                user=user,
                channel="C0REPORTS",
                message={"type": "message", "ts": digest["ts"], "text": ""},
                response_url=bot.standin.response_url(),
            )
        )
        bot.settle()
        if user == AGENT:
            assert bot.standin.responses[-1]["text"].startswith("Only members of <#G0PRIVATE>")
            assert labels.current_label(bot.db, private_id.id) is None
    history = labels.label_history(bot.db, private_id.id)
    assert [(e.label, e.labeled_by) for e in history] == [("complaint", INSIDER)]  # the agent was refused


def test_thread_reply_and_label_replies_never_carry_live_mrkdwn(bot):
    from bot.slack import blocks

    class Guess:
        label, confidence, needs_review, adapter_version, zero_shot = "a`<!here>`b", 0.4, True, None, True
        alternatives = [("x>y&<@U1>", 0.3)]
        model, novel = "zero-shot", False  # other fields a reply may read

    shown = mrkdwn_texts(
        blocks.prediction_blocks(1, Guess(), ["a`<!here>`b"], human={"label": "q`<!channel>", "by": "U0AGENT"})
    )
    assert "&lt;!here&gt;" in shown and shown.count("`") % 2 == 0  # the code spans stay closed
    assert "<!here>" not in shown and "<!channel>" not in shown and "<@U1>" not in shown
    ts = bot.next_ts()
    bot.event(
        payloads.email_event(
            INTAKE, ts, payloads.email_file("F0SUBJ", subject=HOSTILE, sender="x@example.com", body="please call")
        )
    )
    bot.settle()
    answer = bot.command("/label", "complaint", user=AGENT)["text"]
    assert answer.startswith("Labeled `complaint`: ") and "<!channel>" not in answer and "&lt;!channel&gt;" in answer
    unknown = bot.command("/label", "<!here>", user=AGENT)["text"]
    assert "<!here>" not in unknown and "&lt;!here&gt;" in unknown
    retrain = bot.command("/retrain", "<!channel>", user=ADMIN)["text"]
    assert "<!channel>" not in retrain


@pytest.mark.parametrize(
    "name",
    [
        "bad\u202ename",
        "zero\u200bwidth",
        "\U0001f525\U0001f525",
        "<!here>",
        "a`b",
        "$\\notacommand{$",
        "=HYPERLINK(1)",
        "x" * 65,
    ],
)
def test_label_names_follow_the_documented_pattern(bot, name):
    answer = bot.command("/labels", f"add {name} desc", user=ADMIN)["text"]
    assert answer.startswith("Cannot add that label: invalid label name") and "<!here>" not in answer
    assert name not in [d.name for d in labels.list_label_defs(bot.db)]


def test_label_count_is_capped_and_long_lists_fit_slack(bot):
    description = "d" * 300
    assert "at most 300" in bot.command("/labels", "add long " + "d" * 301, user=ADMIN)["text"]
    for i in range(97):
        name = f"label{i:03d}_" + "x" * 55  # 64 characters, the longest a name can be
        assert bot.command("/labels", f"add {name} {description}", user=ADMIN)["text"].startswith("Label")
    refused = bot.command("/labels", "add onemore x", user=ADMIN)["text"]
    assert "at most 100" in refused
    listing = bot.command("/labels", user=AGENT)
    assert len(listing["blocks"]) <= 50
    assert all(len(b["text"]["text"]) <= 3000 for b in listing["blocks"] if b["type"] == "section")
    assert "label096" in json.dumps(listing["blocks"]) or "more" in json.dumps(listing["blocks"][-1])
    stats = bot.command("/stats", user=AGENT)["blocks"]
    assert len(stats) <= 50 and all(len(b["text"]["text"]) <= 3000 for b in stats if b["type"] == "section")
    usage = bot.command("/label", user=AGENT)["text"]
    assert len(usage) < 2000 and "more (`/labels` lists them all)" in usage
    ts = bot.post("is there room for every label?")
    bot.settle()
    options = reply_message(bot, ts)["blocks"][-1]["elements"][1]["options"]
    assert len(options) == 100 and all(len(o["value"]) <= 150 for o in options)
