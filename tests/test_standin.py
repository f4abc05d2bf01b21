"""The Slack stand-in speaks Slack's formats: checked against what slack_sdk and slack_bolt parse."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from slack_bolt.request import BoltRequest
from slack_bolt.request.payload_utils import (
    is_block_actions,
    is_event,
    is_message_shortcut,
    is_slash_command,
    is_view_submission,
    to_event,
)
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier

from slack_standin import payloads
from slack_standin.server import SlackStandIn
from slack_standin.workspace import Workspace

SECRET = "standin-secret"


@pytest.fixture
def standin():
    server = SlackStandIn().start()
    yield server
    server.stop()


def bolt_body(body_and_type):
    body, content_type = body_and_type
    return BoltRequest(body=body, headers=payloads.signed_headers(SECRET, body, content_type)).body


def test_signatures_verify_with_slack_sdk_and_expire():
    body, content_type = payloads.event_callback(payloads.message_event("C1", "U1", "hi", "1.000001"))
    headers = payloads.signed_headers(SECRET, body, content_type)
    verifier = SignatureVerifier(SECRET)
    assert verifier.is_valid(body, headers["x-slack-request-timestamp"], headers["x-slack-signature"])
    assert not SignatureVerifier("other").is_valid(
        body, headers["x-slack-request-timestamp"], headers["x-slack-signature"]
    )
    old = payloads.signed_headers(SECRET, body, content_type, timestamp=int(time.time()) - 301)
    assert not verifier.is_valid(body, old["x-slack-request-timestamp"], old["x-slack-signature"])


def test_payloads_are_recognised_by_bolt():
    event = bolt_body(
        payloads.event_callback(
            payloads.email_event(
                "C1", "1.000001", payloads.email_file("F1", subject="s", sender="a@example.com", body="b")
            )
        )
    )
    assert is_event(event) and to_event(event)["files"][0]["filetype"] == "email"
    assert is_slash_command(
        bolt_body(payloads.slash_command("/label", "x", user="U1", channel="C1", response_url="http://127.0.0.1/r"))
    )
    message = {"type": "message", "ts": "1.000001", "text": "t"}
    assert is_block_actions(
        bolt_body(
            payloads.block_action(
                {"type": "button", "action_id": "a", "value": "v"},
                user="U1",
                channel="C1",
                message=message,
                response_url="http://127.0.0.1/r",
            )
        )
    )
    assert is_message_shortcut(bolt_body(payloads.message_shortcut("cb", user="U1", channel="C1", message=message)))
    assert is_view_submission(bolt_body(payloads.view_submission({"callback_id": "m"}, {}, user="U1")))


def test_web_api_answers_parse_as_slack_sdk_responses(standin):
    client = WebClient(token=standin.bot_token, base_url=standin.api_url)
    assert client.auth_test()["user_id"] == standin.bot_user_id
    posted = client.chat_postMessage(
        channel="C1", text="hello", metadata={"event_type": "t", "event_payload": {"k": 1}}
    )
    assert posted["ok"] and posted["message"]["text"] == "hello"
    client.chat_update(channel="C1", ts=posted["ts"], text="edited")
    history = client.conversations_history(channel="C1", include_all_metadata=True)
    assert history["messages"][0]["text"] == "edited" and history["messages"][0]["metadata"]["event_payload"] == {
        "k": 1
    }
    with pytest.raises(SlackApiError) as err:
        client.chat_update(channel="C1", ts="9.9", text="x")
    assert err.value.response["error"] == "message_not_found"
    with pytest.raises(SlackApiError) as err:
        WebClient(token="xoxb-wrong", base_url=standin.api_url).auth_test()
    assert err.value.response["error"] == "invalid_auth"
    standin.fail("chat.postMessage", 429, retry_after=7)
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="C1", text="x")
    assert err.value.response.status_code == 429 and err.value.response.headers["Retry-After"] == "7"


def test_files_upload_v2_round_trip(standin, tmp_path):
    client = WebClient(token=standin.bot_token, base_url=standin.api_url)
    picture = tmp_path / "report.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 100)
    answer = client.files_upload_v2(channel="C9", file=str(picture), title="Report", initial_comment="see")
    file_id = answer["file"]["id"]
    assert standin.uploads[file_id] == picture.read_bytes()
    assert standin.files[file_id]["channels"] == ["C9"]
    assert [m for m in standin.messages.values() if m.get("files")][0]["text"] == "see"


def test_workspace_redelivers_an_event_not_acknowledged_in_3_seconds():
    seen = []

    class SlowApp(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.headers.get("X-Slack-Retry-Num"))
            if len(seen) == 1:
                time.sleep(3.5)  # too slow: Slack gives up and redelivers
            self.send_response(200)
            self.end_headers()

    app = ThreadingHTTPServer(("127.0.0.1", 0), SlowApp)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    workspace = Workspace(signing_secret=SECRET, channels={"C1": "inbox"}).start()
    workspace.bot_url = f"http://127.0.0.1:{app.server_port}/slack/events"
    try:
        status, _ = workspace.deliver("event", payloads.event_callback(payloads.message_event("C1", "U1", "x", "1.1")))
        assert status == 200 and seen == [None, "1"]
        assert [d["retry"] for d in workspace.deliveries] == [0, 1]
    finally:
        app.shutdown()
        workspace.stop()


def test_standin_process_injects_faults_at_the_set_rate_and_reports_its_state():
    import subprocess
    import sys
    import urllib.request

    process = subprocess.Popen(
        [sys.executable, "-m", "slack_standin", "--bot-token", "xoxb-p"], stdout=subprocess.PIPE, text=True
    )
    try:
        base = f"http://127.0.0.1:{process.stdout.readline().split()[1]}/"
        request = urllib.request.Request(
            base + "_standin/faults",
            method="POST",
            data=json.dumps({"rate": 0.5, "methods": ["chat.postMessage"], "seed": 3}).encode(),
        )
        urllib.request.urlopen(request, timeout=10)
        client = WebClient(token="xoxb-p", base_url=base + "api/", retry_handlers=[])
        outcomes = []
        for i in range(40):
            try:
                client.chat_postMessage(channel="C1", text=f"m{i}")
                outcomes.append("ok")
            except SlackApiError as err:
                outcomes.append(err.response.status_code)
        client.auth_test()  # not in the faulty methods: never refused
        state = json.loads(urllib.request.urlopen(base + "_standin/state", timeout=10).read())
    finally:
        process.terminate()
        process.wait(10)
    refused = [o for o in outcomes if o != "ok"]
    assert 8 <= len(refused) <= 32 and set(refused) <= {429, 500, 503}
    assert sum(state["faults"].values()) == len(refused)
    assert len(state["messages"]) == outcomes.count("ok") and state["calls"]["auth.test"] == 1


def test_conversations_members_pages_like_slack_and_info_says_private(standin):
    from bot.slack.channels import Channels
    from bot.slack.permissions import is_member, is_private

    class Ctx:
        channels = Channels()

    members = {f"U{i:05d}" for i in range(1500)}
    standin.set_channel("G0SECRET", members, private=True)
    standin.set_channel("C0OPEN", {"U00001"})
    client = WebClient(token=standin.bot_token, base_url=standin.api_url)
    first = client.conversations_members(channel="G0SECRET", limit=1000)
    assert len(first["members"]) == 1000 and first["response_metadata"]["next_cursor"]
    second = client.conversations_members(channel="G0SECRET", cursor=first["response_metadata"]["next_cursor"])
    assert len(second["members"]) == 100 and second["members"][0] == sorted(members | {"U0BOT"})[1000]
    ctx = Ctx()
    assert is_member(ctx, client, "U01400", "G0SECRET") and not is_member(ctx, client, "U99999", "G0SECRET")
    assert is_private(ctx, client, "G0SECRET") and not is_private(ctx, client, "C0OPEN")
    with pytest.raises(SlackApiError, match="channel_not_found"):
        client.conversations_members(channel="C0NOWHERE")
    assert not is_member(ctx, client, "U00001", "C0NOWHERE")  # Slack cannot say: no


def test_workspace_refuses_requests_from_other_pages_and_other_host_names():
    """A page on another site cannot drive the workspace (cross-origin or text/plain posts), and a DNS
    rebinding name pointed at loopback gets neither the page's state nor the Web API."""
    import http.client

    workspace = Workspace(signing_secret=SECRET, channels={"C1": "inbox"}).start()
    workspace.bot_url = "http://127.0.0.1:9/slack/events"  # nothing listens: deliveries fail, quickly
    port = workspace._server.server_address[1]

    def request(method, path, body=None, **headers):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.putrequest(method, path, skip_host=True)
        for name, value in {"Host": f"127.0.0.1:{port}", **headers}.items():
            if value is not None:
                connection.putheader(name, value)
        data = json.dumps(body).encode() if body is not None else b""
        connection.putheader("Content-Length", str(len(data)))
        connection.endheaders(data)
        response = connection.getresponse()
        return response.status, response.read().decode()

    post = {"channel": "C1", "text": "/labels retire complaint"}
    try:
        status, body = request(
            "POST", "/ui/post", post, **{"Content-Type": "text/plain", "Origin": "http://evil.example"}
        )
        assert status == 403 and "evil.example" in body
        assert request("POST", "/ui/post", post, **{"Content-Type": "text/plain"})[0] == 415
        assert request("POST", "/ui/post", post, **{"Content-Type": "application/json", "Origin": "null"})[0] == 403
        assert request("GET", "/ui/state", Host=f"rebound.evil.example:{port}")[0] == 403
        assert (
            request("POST", "/api/auth.test", Host=f"rebound.evil.example:{port}", Authorization="Bearer xoxb-standin")[
                0
            ]
            == 403
        )
        assert workspace.deliveries == [] and workspace.messages == {}
        # The page itself (same origin, JSON) and loopback clients without an Origin still work.
        own = {"Content-Type": "application/json", "Origin": f"http://localhost:{port}"}
        hello = {"channel": "C1", "text": "hello"}
        assert request("POST", "/ui/post", hello, **own, Host=f"localhost:{port}")[0] == 200
        assert [m["text"] for m in workspace.messages.values()] == ["hello"]
        assert json.loads(request("GET", "/ui/state")[1])["messages"][0]["text"] == "hello"
        assert WebClient(token=workspace.bot_token, base_url=workspace.api_url).auth_test()["ok"]
    finally:
        workspace.stop()
