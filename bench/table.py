"""Render bench/results/*.json as the markdown tables in bench/README.md (so the two never disagree).

python bench/table.py            # prints every table
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def pct(x):
    return f"{x * 100:.2f}%" if x is not None else "-"


def num(x, digits=0):
    return f"{x:,.{digits}f}" if isinstance(x, (int, float)) else "-"


def banking77(data: dict) -> str:
    rows = [
        "| role | model | accuracy | macro-F1 | ECE | train time | tokens/s | peak memory |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in data["models"]:
        ece = m.get("ece_calibrated", m.get("ece"))
        seconds = f"{num(m['train_seconds'], 1)} s" if m.get("train_seconds") is not None else "-"
        rows.append(
            f"| {m.get('role', '-')}{' (default)' if m.get('default') else ''} | {m['name']} | "
            f"{pct(m['accuracy'])} | {m['macro_f1']:.4f} | {num(ece, 3) if ece is not None else '-'} | "
            f"{seconds} | {num(m.get('tokens_per_second'))} | "
            f"{num(m.get('peak_rss_mb')) + ' MB' if m.get('peak_rss_mb') else '-'} |"
        )
    out = f"{data['protocol']}.\n\n" + "\n".join(rows)
    if data.get("gate"):
        out += (
            f"\n\nThe default run's gate (on its own 154-message eval split; the test rows chose nothing) "
            f"picked **{data['gate']['picked']}**: {data['gate']['reason']}."
        )
    served = next((m for m in data["models"] if m.get("role") == "served"), None)
    if served:
        out += (
            "\n\nSelective accuracy of the served model (answers kept without review at each threshold, "
            "and how many of those are right):\n\n| threshold | "
            + " | ".join(f"{r['threshold']:.2f}" for r in served["selective"])
            + " |\n| --- |"
            + " --- |" * len(served["selective"])
            + "\n| kept | "
            + " | ".join(pct(r["kept"]) for r in served["selective"])
            + " |\n| right | "
            + " | ".join(pct(r["accuracy"]) for r in served["selective"])
            + " |"
        )
    held = data.get("held_out_intents")
    if held:
        out += (
            f"\n\nMessages that fit no label: the embedding classifier fitted without {len(held['held_out'])} "
            f"intents ({held['out_of_scope_rows']} test messages of those, {held['in_scope_rows']} in scope); "
            "share flagged *Needs review*:\n\n| threshold | rule | out of scope flagged | in scope flagged |\n"
            "| --- | --- | --- | --- |\n"
            + "\n".join(
                f"| {r['threshold'] if r['threshold'] is not None else '-'} | {r['rule']} | "
                f"{pct(r['out_of_scope_flagged'])} | {pct(r['in_scope_flagged'])} |"
                for r in held["rows"]
            )
        )
    notes = "".join(f"\n\n{note}" for note in data.get("notes", []))
    return out + notes


def recipes(data: dict) -> str:
    rows = [
        "| recipe | base model | method | overrides | test rows | accuracy | macro-F1 | epochs run | stopped | "
        "train time | tokens/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in data["recipes"]:
        rows.append(
            f"| {m['recipe']} | {m.get('base_model', 'smollm2-135m')} | {m.get('method', 'scoring')} | "
            f"`{json.dumps(m['overrides'])}` | {m.get('test_rows', '-')} | {pct(m['accuracy'])} | "
            f"{m['macro_f1']:.4f} | {num(m.get('epochs_run'), 2)} | {m.get('stop_reason', '-')} | "
            f"{num(m['train_seconds'])} s | {num(m.get('tokens_per_second'))} |"
        )
    notes = "".join(f"\n\n{note}" for note in data.get("notes", []))
    return f"{data['protocol']}.\n\n" + "\n".join(rows) + notes


def classify_speed(d: dict) -> str:
    s, g = d["scoring"], d["generate"]
    return "\n".join(
        [
            "| method | p50 one message | p95 one message | batched msgs/s | accuracy |",
            "| --- | --- | --- | --- | --- |",
            f"| label scoring (trie beam, cached system prompt) | {s['p50_ms']:.0f} ms | {s['p95_ms']:.0f} ms | "
            f"{s['batched_msgs_per_s']:.1f} | {pct(s['accuracy'])} |",
            f"| greedy generate (baseline) | {g['p50_ms']:.0f} ms | {g['p95_ms']:.0f} ms | {g['batched_msgs_per_s']:.1f} | "
            f"{pct(g['accuracy'])} ({pct(g['unparseable_fraction'])} not a label) |",
            "",
            f"Batched throughput ratio scoring / generate: **{d['ratio']:.2f}x**. Achieved "
            f"{d['achieved_flops'] / 1e9:.1f} GFLOP/s against a measured fp32 matmul peak of "
            f"{d['matmul_peak_flops'] / 1e9:.1f} GFLOP/s: **{d['flops_fraction_of_peak']:.0%}** of peak. "
            f"p50 with 3 labels {d['p50_ms_3_labels']:.0f} ms, with 77 labels {d['p50_ms_77_labels']:.0f} ms "
            f"(**{d['label_cost_ratio_77_vs_3']:.2f}x**). Top label certified for {pct(s['certified_top_fraction'])} "
            f"of messages. Adapter merged into the weights: {'yes' if d.get('adapter_merged') else 'no'}."
            + (f" Peak memory of the whole run: {d['peak_rss_mb']:,.0f} MB." if "peak_rss_mb" in d else ""),
        ]
    )


def sft_throughput(d: dict) -> str:
    rows = ["| training loss | s/step | tokens/s |", "| --- | --- | --- |"]
    for name, r in d["runs"].items():
        rows.append(f"| {name} | {r['seconds_per_step']:.2f} | {r['tokens_per_second']:.0f} |")
    return (
        "\n".join(rows) + f"\n\nRatio: **{d['tokens_per_second_ratio']:.2f}x** the tokens/s of trl's default "
        f"({d['steps']} steps of {d['examples_per_step']} examples each)."
    )


def ack_latency(d: dict) -> str:
    return "\n".join(
        [
            "| requests | p50 | p99 | p99 commands | p99 events | max | non-200 |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            f"| {d['requests']} ({d['events']} events + {d['commands']} commands, {d['concurrency']} at once) | "
            f"{d['p50_ms']:.1f} ms | {d['p99_ms']:.1f} ms | {d['p99_ms_commands']:.1f} ms | {d['p99_ms_events']:.1f} ms | "
            f"{d['max_ms']:.1f} ms | {d['non_200']} |",
            "",
            f"Classification backlog when the last request was acknowledged: {d['classification_backlog_when_sending_ended']} "
            f"messages, worked off {d['seconds_until_backlog_worked']:.0f} s after the start; "
            f"{d['messages_stored']} messages stored, {d['predictions_stored']} predictions, {d['replies_posted']} replies.",
        ]
    )


def mislabels(d: dict) -> str:
    accuracy = (
        "not run yet (`--train`)"
        if d["accuracy_noisy"] is None
        else f"noisy {pct(d['accuracy_noisy'])}, corrected {pct(d['accuracy_corrected'])}, "
        f"clean {pct(d['accuracy_clean'])}"
    )
    protocol = d.get("training_protocol")
    trained = (
        ""
        if not protocol
        else (
            f" Training runs: recipe `{json.dumps(protocol['overrides'])}` on the {protocol['train_examples']} examples, "
            f"test accuracy on {protocol['test_rows']} Banking77 test rows."
        )
    )
    return "\n".join(
        [
            "| flipped | flagged | precision | recall | suggestion right | check time | test accuracy |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            f"| {d['flipped']} of {d['examples']} | {d['flagged']} | {pct(d['precision'])} | {pct(d['recall'])} | "
            f"{pct(d['suggestion_correct_fraction'])} | {d['check_seconds']:.0f} s | {accuracy} |",
            "",
            d["method"] + "." + trained,
        ]
    )


def soak(d: dict) -> str:
    rows = [
        ("requests sent / accepted", f"{d['requests_sent']} / {d['requests_accepted']}"),
        (
            "rejected, by reason (HTTP status; none: no connection, the bot was restarting)",
            ", ".join(f"{k.replace('(None)', '(none)')}: {v}" for k, v in d["requests_rejected_by_reason"].items()),
        ),
        (
            "answered 200 but refused (commands: a message saying why) or ignored (events in other channels)",
            ", ".join(f"{k}: {v}" for k, v in d["hostile_answered_with_a_refusal"].items()),
        ),
        ("connection refused while the bot restarted", d["requests_failed_while_bot_restarting"]),
        ("forged or replayed requests accepted", d["forged_or_replayed_accepted"]),
        (
            "hostile requests that stored a message / a label",
            f"{d['hostile_requests_stored']} / {d['hostile_labels_accepted']}",
        ),
        *(
            [
                (
                    "label changes by an outsider: attempts / stored",
                    f"{d['outsider_label_attempts']} / {d['outsider_labels_stored']}",
                ),
                (
                    "emails with injected mentions / with U+2028: sent / stored",
                    f"{d['injected_emails_sent']} / {d['injected_emails_stored']}; "
                    f"{d['u2028_emails_sent']} / {d['u2028_emails_stored']}",
                ),
                ("injected mentions or links that reached Slack live", d["injected_mentions_live_in_slack"]),
            ]
            if "outsider_labels_stored" in d
            else []
        ),
        *(
            [
                (
                    "long import during traffic (rows, seconds, exit code)",
                    f"{d['long_import']['rows']}, {d['long_import']['seconds']} s, {d['long_import']['exit_code']}",
                )
            ]
            if d.get("long_import")
            else []
        ),
        (
            "messages sent / acknowledged / stored",
            f"{d['messages_sent']} / {d['messages_acknowledged']} / {d['messages_stored']}",
        ),
        ("event redeliveries sent (X-Slack-Retry-Num)", d.get("redeliveries_sent", "-")),
        ("messages lost / duplicates stored", f"{d['messages_lost']} / {d['duplicates_stored']}"),
        (
            "messages answered / unanswered / answered twice",
            f"{d['messages_answered']} / {d['messages_unanswered']} / {d['answers_duplicated']}",
        ),
        ("labels accepted / lost", f"{d['labels_accepted']} / {d['labels_lost']}"),
        (
            "runs finished / reports lost / reports duplicated",
            f"{d['runs_finished']} / {d['reports_lost']} / {d['reports_duplicated']}",
        ),
        (
            "runs interrupted / recovered (retry succeeded)",
            f"{d['runs_interrupted']} / {d['runs_interrupted_and_recovered']}",
        ),
        ("run statuses", ", ".join(f"{k}: {v}" for k, v in d["run_statuses"].items())),
        (
            "model that answered",
            "; ".join(
                f"{a['adapter']}: {a['predictions']} predictions ({a['from'][11:19]}-{a['to'][11:19]} UTC)"
                for a in d["adapter_served"]
            ),
        ),
        ("Web API faults injected (429/500/503)", d["web_api_faults_injected"]),
        (
            "bot restarts (seconds down)",
            ", ".join(f"{r['signal']} ({r['seconds_down']} s)" for r in d.get("bot_restarts", [])),
        ),
        (
            "hostile emails (48 KB `<a `, 112 KB of `thanks` lines, 40 KB of `a.`): sent / stored / answered",
            f"{d.get('hostile_emails_sent')} / {d.get('hostile_emails_stored')} / {d.get('hostile_emails_answered')} "
            f"(answered counts the 41 MB email too)",
        ),
        (
            "41 MB email through files.info: stored; bot peak memory before its first restart",
            f"{d.get('huge_email_stored')}; {d.get('bot_peak_rss_mb_before_first_restart')} MB",
        ),
        (
            "second worker started mid-run: live runs it took over / adapters registered twice for a run",
            f"{d.get('live_runs_taken_over_by_the_second_worker')} / {d.get('adapters_registered_twice_for_one_run')}",
        ),
        (
            "adapter cut in half before the SIGKILL restart: answers from it afterwards / reports in the channel",
            f"{d.get('answers_from_the_corrupt_adapter_after_restart')} / {d.get('corrupt_adapter_reports_in_channel')}",
        ),
        (
            "`/label`, `/retrain` acknowledged with Checking... and no answer after",
            d.get("command_answers_missing_after_checking"),
        ),
        (
            "ack latency p50 / p99 / max",
            f"{d['ack_p50_ms']:.0f} ms / {d['ack_p99_ms']:.0f} ms / {d['ack_max_ms']:.0f} ms",
        ),
        ("settled after traffic stopped", f"{d['settle_seconds']:.0f} s"),
    ]
    head = (
        f"{d['duration_s']:.0f} s of traffic at ~{d['rate_per_s']:.0f} requests/s, "
        f"{d['fault_rate']:.0%} of the bot's Web API calls answered 429/5xx, seed {d['seed']}."
    )
    return head + "\n\n| figure | value |\n| --- | --- |\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def demo_retrain(d: dict) -> str:
    model = f"{d['base_model']}, {d['method']}" if d.get("base_model") else "embedded 135M model"
    text = (
        f"First `/retrain` on the {d['examples']} demo emails in the local workspace ({model}) on CPU: "
        f"first progress after {num(d['seconds_to_first_progress'])} s, report after "
        f"{num(d['seconds_to_report'])} s, picture after {num(d['seconds_to_picture'])} s, "
        f"{d['progress_updates']} progress updates in place."
    )
    if d.get("adapter_accuracy") is not None:
        text += (
            f" Adapter {pct(d['adapter_accuracy'])} on its {d['eval_examples']} held-out emails, baseline "
            f"({d['baseline']}) {pct(d['baseline_accuracy'])}. {d.get('verdict') or ''}"
        )
    if d.get("picked"):
        text += f" The gate served **{d['picked']}**: {d['reason']}."
    return text


def remote_training(d: dict) -> str:
    killed = d["killed_worker"]
    return "\n".join(
        [
            "| figure | value |",
            "| --- | --- |",
            f"| run through Ray | {d['status']}, {num(d['ray_seconds'], 1)} s |",
            f"| the same run on the local backend | {num(d['local_seconds'], 1)} s |",
            f"| first progress with a training step, through Ray | {num(d['first_progress_seconds'], 1)} s |",
            f"| `/retrain cancel` to the run ended, through Ray | {num(d['cancel_seconds'], 1)} s |",
            f"| Ray worker SIGKILLed mid-run | run {killed['run_status']}; previous adapter "
            f"{'still serving' if killed['serving_adapter_unchanged'] else 'NOT serving'} |",
        ]
    )


def gpu_check(d: dict) -> str:
    t, c, m = d["qlora_training"], d["classifier"], d["model"]
    return (
        f"{m['architecture']} ({m['parameters'] / 1e9:.2f}B parameters) on {d['machine']['gpu']}: QLoRA "
        f"({t['quantization']}), batch {t['batch']} x {t['sequence_length']} tokens: "
        f"**{num(t['tokens_per_second'])} tokens/s**, peak GPU memory **{t['peak_gpu_memory_gb']} GB** "
        f"({t['memory_after_load_gb']} GB after loading). Classifier on {c['device']}: "
        f"{c['zero_shot']['messages_per_second']} messages/s zero-shot, "
        f"{c['adapter']['messages_per_second']} with the adapter. Total {num(d['total_seconds'])} s."
    )


def probe(data: dict) -> str:
    rows = ["| base model (frozen) | pooling | accuracy | macro-F1 |", "| --- | --- | --- | --- |"]
    for m in data["models"]:
        rows.append(f"| {m['model']} | {m['pooling']} | {pct(m['accuracy'])} | {m['macro_f1']:.4f} |")
    notes = "".join(f"\n\n{note}" for note in data.get("notes", []))
    return f"{data['protocol']}.\n\n" + "\n".join(rows) + notes


def classify_speed_default(d: dict) -> str:
    return "\n".join(
        [
            "| what | p50 one message | p95 one message | batched msgs/s | accuracy | load | peak memory |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            f"| {d['base_model']} + {d['method']} (the default adapter) | {d['p50_ms']:.1f} ms | {d['p95_ms']:.1f} ms | "
            f"{d['batched_msgs_per_s']:.1f} | {pct(d['accuracy'])} | {d['load_seconds']:.1f} s | {num(d['peak_rss_mb'])} MB |",
        ]
        + (
            [
                f"| {d['encoder']} embedding (the default encoder) | {d['encoder_p50_ms']:.1f} ms | - | "
                f"{d['encoder_batched_msgs_per_s']:.1f} | - | - | - |",
                f"| both: each message's cost in the bot (embedded at intake) | {d['served_p50_ms']:.1f} ms | {d['served_p95_ms']:.1f} ms | "
                f"{d['served_batched_msgs_per_s']:.1f} | - | - | - |",
            ]
            if "encoder" in d
            else []
        )
    )


def self_training(d: dict) -> str:
    rows = [
        "| model | pool rows used | pseudo-label precision | accuracy | macro-F1 | right where the teacher is wrong / "
        "wrong where it is right | p (better than the teacher) | p (worse) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for v in d["variants"]:
        t = v["vs_teacher"]
        rows.append(
            f"| {v['name']} | {num(v['pool_rows'])} | {pct(v['pseudo_label_precision'])} | {pct(v['accuracy'])} | "
            f"{v['macro_f1']:.4f} | {t['right_only_here']} / {t['right_only_teacher']} | {t['p_better']:.3g} | {t['p_worse']:.3g} |"
        )
    return f"{d['protocol']}.\n\n" + "\n".join(rows)


def distill_teacher(d: dict) -> str:
    rows = ["| model | accuracy |", "| --- | --- |"]
    rows += [f"| {v['name']} | {pct(v['accuracy'])} |" for v in d["variants"]]
    return (
        f"{d['protocol']}. The refitted adapter's pseudo-labels of those rows are "
        f"{pct(d['refit_teacher_precision'])} right.\n\n" + "\n".join(rows)
    )


def encoder_probe(d: dict) -> str:
    rows = [
        "| what trains | lr | epochs | contrastive weight | frozen baseline | fine-tuned | train time |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in d["rows"]:
        rows.append(
            f"| {'whole encoder' if r['full'] else 'LoRA r=16'} + head | {r['lr']:g} | {r['epochs']} | "
            f"{r['supcon'] or '-'} | {pct(r['frozen_accuracy'])} | {pct(r['tuned_accuracy'])} | "
            f"{num(r['train_seconds'])} s |"
        )
    return f"{d['protocol']}.\n\n" + "\n".join(rows)


RENDER = {
    "encoder_probe": encoder_probe,
    "classify_speed_default": classify_speed_default,
    "banking77": banking77,
    "banking77_recipes": recipes,
    "banking77_probe": probe,
    "classify_speed": classify_speed,
    "classify_speed_unmerged": classify_speed,
    "sft_throughput": sft_throughput,
    "ack_latency": ack_latency,
    "mislabels": mislabels,
    "demo_retrain": demo_retrain,
    "soak": soak,
    "remote_training": remote_training,
    "gpu_check": gpu_check,
    "self_training": self_training,
    "self_training_seed7": self_training,
    "distill_teacher": distill_teacher,
}

if __name__ == "__main__":
    for name, render in RENDER.items():
        path = RESULTS / f"{name}.json"
        if path.exists():
            print(f"### {name}\n\n{render(json.loads(path.read_text()))}\n")
        elif len(sys.argv) > 1:
            print(f"### {name}\n\n(not run)\n")
