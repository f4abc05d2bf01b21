"""Slack formatting of training progress and reports (the trainer produces data and a picture)."""

from __future__ import annotations

import time

from classifier.evaluate import worst_classes

from .blocks import context, section
from .mrkdwn import code, escape


def bar(fraction: float, width: int = 20) -> str:
    filled = max(0, min(width, round(fraction * width)))
    return "▓" * filled + "░" * (width - filled)


def progress_payload(run_id: int, record: dict, started: float, last_eval: float | None) -> dict:
    step, total = record.get("step") or 0, record.get("max_steps") or 0
    fraction = step / total if total else 0.0
    elapsed = time.time() - started
    if fraction >= 1 or record.get("finished"):  # finished: also when early stopping ended it before the last step
        eta = "done" if fraction >= 1 else f"done: stopped early at step {step} of {total}"
    elif record.get("phase") == "refit":  # the clock started with the first training: no honest estimate
        eta = "the report follows the refit"
    elif fraction > 0.02:
        eta = f"{(elapsed / fraction - elapsed) / 60:.0f} min left"
    else:
        eta = "estimating..."
    parts = [f"step {step}/{total}", f"epoch {record.get('epoch') or 0:.2f}"]
    if record.get("phase") == "refit":  # the second training, on every labelled example (trainer.run.refit)
        parts.insert(0, "refitting on every labelled example")
        last_eval = None
    if record.get("train_loss") is not None:
        parts.append(f"train loss {record['train_loss']:.3f}")
    if last_eval is not None:
        parts.append(f"eval loss {last_eval:.3f}")
    text = f":hourglass_flowing_sand: Training run {run_id}: `{bar(fraction)}` {fraction:.0%}"
    return {
        "text": f"Training run {run_id}: {fraction:.0%}",
        "blocks": [
            section(text),
            context(" · ".join(parts) + f" · {eta}"),
        ],
    }


def loss_table(epochs: list[dict]) -> str:
    rows = ["epoch  train loss  eval loss"]
    for e in epochs:
        train = f"{e['train_loss']:.4f}" if e.get("train_loss") is not None else "-"
        evaluation = f"{e['eval_loss']:.4f}" if e.get("eval_loss") is not None else "-"
        rows.append(f"{e['epoch']:>5}  {train:>10}  {evaluation:>9}")
    return "```\n" + "\n".join(rows) + "\n```"


def named(name: str, adapter_version: int | None) -> str:
    """The gate calls this run's adapter "new adapter"; once registered it has a version."""
    return name.replace("new adapter", f"adapter v{adapter_version}") if adapter_version else name


def candidates_table(gate: dict, adapter_version: int | None) -> str:
    rows = [f"{'model':<28} {'right':>9} {'accuracy':>8} {'macro-F1':>8} {'ECE':>6}"]
    for c in gate["candidates"]:
        mark = " (serving)" if c["serving"] else ""
        right = f"{c['right']}/{c['n']}" if "right" in c else ""
        rows.append(
            f"{(named(c['name'], adapter_version) + mark)[:28]:<28} {right:>9} {c['accuracy']:>8.1%} "
            f"{c['macro_f1']:>8.3f} {c['ece']:>6.3f}"
        )
    return "```\n" + "\n".join(rows) + "\n```"


def report_payload(run_id: int, result: dict, adapter_version: int | None) -> dict:
    training, metrics = result["training"], result["metrics"]
    serving = result.get("serving")
    gate = result["gate"]
    head = (
        f":white_check_mark: *Training run {run_id} finished* - now serving: "
        f"*{named(gate['picked'], adapter_version)}*."
    )
    compare = f"Accuracy *{metrics['accuracy']:.1%}*, macro-F1 *{metrics['macro_f1']:.3f}* on {metrics['n']} held-out"
    if serving:
        sm = serving["metrics"]
        compare += (
            f"; serving adapter on the same split: {sm['accuracy']:.1%}, {sm['macro_f1']:.3f} "
            f"({metrics['macro_f1'] - sm['macro_f1']:+.3f})"
        )
    sentences = result.get("sentences") or {}  # the run's own words (trainer.run); older runs recorded none
    lines = [
        compare + ".",
        f"Best epoch {training.get('best_epoch')}; stopped: "
        f"{sentences.get('stopped') or training.get('stop_reason')}; "
        f"{training['global_step']} steps in {training['train_seconds'] / 60:.1f} min."
        + (" " + sentences["refit"] if sentences.get("refit") else ""),
        "Why: " + named(result["promotion"]["reason"], adapter_version) + ".",
    ]
    kept = next((r for r in gate["selective"] if r["threshold"] == 0.5), None)
    lines.append(
        f"Confidence calibrated on held-out messages: expected calibration error {gate['ece']:.3f} "
        f"on these {metrics['n']}"
        + (" (too few to judge calibration)" if metrics["n"] < 100 else "")
        + (
            f"; at a review threshold of 50%, {kept['kept']:.0%} answered without review, "
            f"{kept['accuracy']:.0%} of them right"
            if kept and kept["accuracy"] is not None
            else ""
        )
        + "."
    )
    worst = worst_classes(metrics, 3)
    if worst:
        lines.append("Weakest labels: " + ", ".join(f"{code(n)} F1 {f:.2f}" for n, f, _ in worst) + ".")
    if result.get("baseline"):
        lines.append(escape(result["verdict"]))
    if result.get("picture_error"):
        lines.append(
            f"The report picture could not be drawn ({escape(result['picture_error'][:200])}); "
            "the run itself succeeded."
        )
    blocks = [
        section(head),
        section("*Loss per epoch*\n" + loss_table(training["epochs"])),
        section(
            f"*Candidates on the same {metrics['n']} held-out messages*\n" + candidates_table(gate, adapter_version)
        ),
        section("\n".join(lines)),
    ]
    return {"text": f"Training run {run_id} finished: accuracy {metrics['accuracy']:.1%}", "blocks": blocks}


def failure_payload(run_id: int, status: str, error: str | None) -> dict:
    icon = ":no_entry_sign:" if status == "cancelled" else ":x:"
    text = f"{icon} *Training run {run_id} {status}.* {escape((error or '')[:1500])}".strip()
    return {
        "text": f"Training run {run_id} {status}",
        "blocks": [section(text + "\nThe serving adapter is unchanged.")],
    }


def unusable_adapter_payload(version: int, reason: str, instead: str) -> dict:
    """The report channel's note that an adapter cannot serve (sent once per adapter)."""
    text = (
        f":warning: *Adapter v{version} cannot serve:* {escape(reason)}\n"
        f"{escape(instead)} answers instead. Restore its folder from a backup and restart the bot, "
        "or `/model rollback`, or `/retrain`."
    )
    return {"text": f"Adapter v{version} cannot serve", "blocks": [section(text)]}
