"""Reports built from a run's result and metric records: markdown summary and report.png.

Slack formatting belongs to the bot; this is plain data, text and a picture.
"""

from __future__ import annotations

from pathlib import Path

from classifier.evaluate import worst_classes
from classifier.kinds import EMBEDDINGS


def stop_text(training: dict) -> str:
    """Why training stopped, in the run's own step numbers (the progress bar counts the same steps)."""
    reason, step, total = training.get("stop_reason"), training.get("global_step"), training.get("max_steps")
    best = training.get("best_step")
    best_part = f"; best eval loss at step {best}" if best else ""
    if reason == "early_stopping":
        return f"early stopping at step {step} of {total}: the eval loss had not improved since step {best}"
    if reason == "completed":
        return f"all {total} steps done{best_part}"
    if reason == "max_steps":
        return f"step limit reached at step {step} of {total}{best_part}"
    if reason == "cancelled":
        return f"cancelled at step {step} of {total}"
    return str(reason)


def refit_text(result: dict) -> str:
    """What the saved adapter is when it was refitted on every labelled example (trainer.run.refit); else ''."""
    refit = result.get("refit")
    if not refit:
        return ""
    if refit.get("error"):
        return (
            f"Training again on every labelled example failed ({refit['error']}); the saved adapter is the "
            f"one measured here."
        )
    return (
        f"The saved adapter was then trained again on all {refit['examples']} labelled examples "
        f"({refit['steps']} steps in {refit['train_seconds']:.0f} s); the scores, temperature and mix here "
        f"are the first training's, measured on messages it never saw."
    )


def baseline_verdict(adapter: dict, baseline: dict | None) -> str:
    """Does fine-tuning earn its cost on this data? Answered with the run's own numbers, and no surer than they are."""
    if not baseline:
        return "No baseline was scored."
    gap = adapter["accuracy"] - baseline["accuracy"]
    n = adapter.get("n") or 0
    few = 0 < n < SMALL_EVAL
    if gap > 0.02 and few:
        verdict = (
            f"The fine-tuned adapter scored {adapter['accuracy']:.1%} against the cheap baseline's "
            f"{baseline['accuracy']:.1%} ({baseline['method']}) on these held-out messages."
        )
    elif gap > 0.02:
        verdict = (
            f"The fine-tuned adapter beats the cheap baseline ({baseline['method']}) by {gap * 100:.1f} "
            f"accuracy points: fine-tuning earns its cost here."
        )
    elif gap >= -0.02:
        verdict = (
            f"The adapter and the cheap baseline ({baseline['method']}) are within 2 points "
            f"({adapter['accuracy']:.1%} vs {baseline['accuracy']:.1%}): fine-tuning does not clearly earn "
            f"its cost on this data yet."
        )
    else:
        verdict = (
            f"The cheap baseline ({baseline['method']}) beats the adapter by {-gap * 100:.1f} points "
            f"({baseline['accuracy']:.1%} vs {adapter['accuracy']:.1%}): on this data fine-tuning does not "
            f"earn its cost yet; more labeled examples or a larger base model may change that."
        )
    if few:
        verdict += (
            f" With {n} held-out examples one message moves accuracy by {100 / n:.1f} points, and "
            f"early stopping judges the adapter on a few more: too few labeled messages to tell yet."
        )
    return verdict


SMALL_EVAL = 50  # held-out examples below which the verdict says how little they can tell


def summary_markdown(result: dict) -> str:
    lines = [f"# Training run: {result['status']}", ""]
    if result.get("error"):
        lines += [f"Error: {result['error']}", ""]
    data = result.get("data") or {}
    if data:
        lines += [
            f"Base model: {result.get('base_model')}. Examples: {data.get('train')} train, "
            f"{data.get('eval')} eval, {len(result.get('labels', []))} labels.",
            "",
        ]
    training = result.get("training") or {}
    if training.get("epochs"):
        lines += ["| epoch | train loss | eval loss |", "| --- | --- | --- |"]
        for row in training["epochs"]:
            fmt = lambda v: f"{v:.4f}" if v is not None else "-"  # noqa: E731
            lines.append(f"| {row['epoch']} | {fmt(row['train_loss'])} | {fmt(row['eval_loss'])} |")
        lines += [
            "",
            f"Best epoch: {training.get('best_epoch')}; stopped: {stop_text(training)}; "
            f"{training.get('global_step')} steps in {training.get('train_seconds', 0):.0f} s.",
            "",
        ]
    metrics = result.get("metrics")
    if metrics:
        line = f"Accuracy {metrics['accuracy']:.1%}, macro-F1 {metrics['macro_f1']:.3f} on {metrics['n']} eval examples"
        serving = result.get("serving")
        if serving:
            line += f" (serving adapter: {serving['metrics']['accuracy']:.1%}, {serving['metrics']['macro_f1']:.3f})"
        lines += [line + ".", ""]
        worst = worst_classes(metrics)
        if worst:
            lines += ["Worst classes: " + ", ".join(f"{n} (F1 {f:.2f}, {s} ex.)" for n, f, s in worst) + ".", ""]
    if refit_text(result):
        lines += [refit_text(result), ""]
    gate = result.get("gate")
    if gate:
        lines += ["| candidate | right | accuracy | macro-F1 | ECE |", "| --- | --- | --- | --- | --- |"]
        lines += [
            f"| {c['name']}{' (serving)' if c['serving'] else ''} | {c.get('right', '')}/{c['n']} | "
            f"{c['accuracy']:.1%} | {c['macro_f1']:.3f} | {c['ece']:.3f} |"
            for c in gate["candidates"]
        ]
        lines += ["", f"Serving {gate['picked']}: {gate['reason']}.", ""]
    baseline = result.get("baseline")
    if baseline and not any(c["kind"] == EMBEDDINGS.name for c in (gate or {}).get("candidates", [])):
        lines += [
            f"Baseline ({baseline['method']}): accuracy {baseline['accuracy']:.1%}, "
            f"macro-F1 {baseline['macro_f1']:.3f}.",
            "",
        ]
    if result.get("verdict"):
        lines += [result["verdict"], ""]
    if result.get("picture_error"):
        lines += [f"The report picture could not be drawn ({result['picture_error']}).", ""]
    return "\n".join(lines).rstrip() + "\n"


def best_epoch(records: list[dict]) -> int | None:
    evals = [r for r in records if r["kind"] == "eval" and r.get("eval_loss") is not None]
    if not evals:
        return None
    import math

    best = min(evals, key=lambda r: r["eval_loss"])
    return max(1, math.ceil((best.get("epoch") or 0) - 1e-9))


def draw_report(path: str | Path, records: list[dict], metrics: dict | None) -> None:
    """Loss curves (train per step, eval per evaluation) beside the confusion matrix.

    Label names are drawn as written: math text (`$...$`) and TeX are off, so a name like
    `$\\notacommand{$` is text, not a formula that fails to parse."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
        try:
            _draw(path, records, metrics)
        finally:
            plt.close("all")  # also when drawing failed: no figure is left open in a long-lived process


def _draw(path: str | Path, records: list[dict], metrics: dict | None) -> None:
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_cm) = plt.subplots(1, 2, figsize=(12, 5))
    train = [(r["step"], r["train_loss"]) for r in records if r["kind"] == "train" and r.get("train_loss") is not None]
    evals = [(r["step"], r["eval_loss"]) for r in records if r["kind"] == "eval" and r.get("eval_loss") is not None]
    if train:
        ax_loss.plot(*zip(*train), label="train loss", color="#4C72B0", alpha=0.8)
    if evals:
        ax_loss.plot(*zip(*evals), label="eval loss", color="#DD8452", marker="o")
        best = min(evals, key=lambda e: e[1])
        ax_loss.axvline(best[0], color="#55A868", linestyle="--", label=f"best (step {best[0]})")
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("loss (label tokens)")
    ax_loss.set_title("Loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    if metrics:
        names = metrics["confusion"]["labels"]
        matrix = metrics["confusion"]["matrix"]
        ax_cm.imshow(matrix, cmap="Blues")
        if len(names) <= 30:
            ax_cm.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
            ax_cm.set_yticks(range(len(names)), names, fontsize=7)
            if len(names) <= 12:
                for i, row in enumerate(matrix):
                    for j, value in enumerate(row):
                        if value:
                            ax_cm.text(j, i, str(value), ha="center", va="center", fontsize=8)
        ax_cm.set_xlabel("predicted")
        ax_cm.set_ylabel("true")
        ax_cm.set_title(f"Confusion matrix (accuracy {metrics['accuracy']:.1%}, macro-F1 {metrics['macro_f1']:.3f})")
    else:
        ax_cm.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
