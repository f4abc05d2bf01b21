"""Acknowledgement latency under load: 200 events and 50 slash commands, concurrently, over HTTP.

The bot runs in HTTP mode (threaded WSGI server, signature verification on) against the local
Slack stand-in, with the embedded 135M model. Every event is a new message, so a classification
backlog builds up while the requests keep coming; the figure is the time until each request is
acknowledged (the HTTP response), which Slack needs within 3 s. Loopback only, bounded count.
Writes bench/results/ack_latency.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.banking77 import CACHE, DATA, machine, read_csv  # noqa: E402

SECRET = "bench-signing-secret"


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main():
    from bot.settings import load_settings
    from bot.slack.context import BotContext
    from bot.slack.server import make_http_server
    from slack_standin import payloads
    from slack_standin.server import SlackStandIn
    from storage import labels, messages

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--commands", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "ack_latency.json")
    args = parser.parse_args()

    standin = SlackStandIn().start()
    data_dir = Path(tempfile.mkdtemp(prefix="ack-bench-"))
    environment = {
        "SUPPORTBOT_DATA_DIR": str(data_dir),
        "SLACK_BOT_TOKEN": standin.bot_token,
        "SLACK_SIGNING_SECRET": SECRET,
        "SLACK_API_URL": standin.api_url,
        "SUPPORTBOT_ADMINS": "U0ADMIN",
        "SUPPORTBOT_INTAKE_CHANNELS": "C0INTAKE",
    }
    converted = CACHE / "models" / "smollm2-135m-instruct"
    if (converted / "config.json").exists():  # the benchmarks' converted model: no second conversion
        environment["SUPPORTBOT_BASE_MODEL"] = environment["SUPPORTBOT_ZERO_SHOT_MODEL"] = str(converted)
    ctx = BotContext(load_settings(environment, env_file=None))
    names = sorted({r["label"] for r in read_csv(DATA / "train.csv")})[:10]
    for name in names:
        labels.add_label_def(ctx.db(), name)
    ctx.classifier().classify("warm up")  # load (and convert, the first time) the model before the clock starts
    server = make_http_server(ctx, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/slack/events"

    texts = [r["text"] for r in read_csv(DATA / "test.csv")]
    rng = random.Random(42)
    requests = []
    for i in range(args.events):
        ts = f"{1700000000 + i}.000100"
        requests.append(
            ("event", payloads.event_callback(payloads.message_event("C0INTAKE", "U0AGENT", rng.choice(texts), ts)))
        )
    commands = ["/stats", "/labels", "/model", "/label", "/retrain"]
    for i in range(args.commands):
        command = commands[i % len(commands)]
        text = {"/label": names[0], "/retrain": "status"}.get(command, "")
        requests.append(
            (
                f"command {command}",
                payloads.slash_command(
                    command, text, user="U0AGENT", channel="C0INTAKE", response_url=standin.response_url()
                ),
            )
        )
    rng.shuffle(requests)

    def send(item):
        kind, (body, content_type) = item
        request = urllib.request.Request(
            url, data=body.encode(), method="POST", headers=payloads.signed_headers(SECRET, body, content_type)
        )
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
            status = response.status
        return kind, status, (time.perf_counter() - started) * 1000

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        results = list(pool.map(send, requests))
    sent_s = time.perf_counter() - started
    backlog_at_end = len(ctx.executor.pending)
    ctx.drain(timeout=600)
    worked_s = time.perf_counter() - started
    server.shutdown()
    latencies = [ms for _, _, ms in results]
    db = ctx.db()
    report = {
        "benchmark": "ack_latency",
        "machine": machine(),
        "requests": len(results),
        "events": args.events,
        "commands": args.commands,
        "concurrency": args.concurrency,
        "p50_ms": statistics.median(latencies),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": max(latencies),
        "p99_ms_commands": percentile([ms for k, _, ms in results if k.startswith("command")], 0.99),
        "max_ms_by_command": {
            k.split()[1]: max(ms for kk, _, ms in results if kk == k)
            for k in sorted({k for k, _, _ in results if k.startswith("command")})
        },
        "p99_ms_events": percentile([ms for k, _, ms in results if k == "event"], 0.99),
        "non_200": sum(1 for _, status, _ in results if status != 200),
        "seconds_to_send_all": sent_s,
        "classification_backlog_when_sending_ended": backlog_at_end,
        "seconds_until_backlog_worked": worked_s,
        "messages_stored": messages.count_messages(db),
        "predictions_stored": db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0],
        "replies_posted": len(standin.calls_to("chat.postMessage")),
    }
    ctx.close()
    standin.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
