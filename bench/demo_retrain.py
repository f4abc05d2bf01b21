"""How long the first /retrain on the demo set takes with the default base model on CPU (the local workspace),
and how its adapter compares with the baseline on its own split.

Starts the local stack (workspace, bot, worker) on a fresh data folder, types /retrain as the page does,
and waits for the report and its picture in #training. Writes bench/results/demo_retrain.json.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.banking77 import CACHE, machine  # noqa: E402


def main():
    from bot.local import INTAKE, REPORTS, LocalStack
    from bot.settings import load_settings

    data = Path(tempfile.mkdtemp(prefix="demo-retrain-"))
    converted = CACHE / "models"  # reuse the benchmarks' converted model: measure training, not conversion
    settings = load_settings({"SUPPORTBOT_DATA_DIR": str(data)}, env_file=None)
    models = data / "models"
    models.mkdir(parents=True)
    for folder in ("smollm2-135m-instruct", "gemma-3-270m"):
        if (converted / folder).exists():
            (models / folder).symlink_to((converted / folder).resolve())
    stack = LocalStack(settings, port=0).start()
    try:
        started = time.perf_counter()
        stack.workspace.slash_command(INTAKE, "/retrain")
        first_progress = report = picture = None
        while time.perf_counter() - started < 1800:
            texts = [m["text"] for (ch, _), m in list(stack.workspace.messages.items()) if ch == REPORTS]
            if first_progress is None and any(t.startswith("Training run 1:") for t in texts):
                first_progress = time.perf_counter() - started
            if report is None and any("finished" in t or "failed" in t for t in texts):
                report = time.perf_counter() - started
            if report and stack.workspace.uploads:
                picture = time.perf_counter() - started
                break
            time.sleep(0.5)
        updates = len(stack.workspace.calls_to("chat.update"))
        final = next(
            (
                m
                for (ch, _), m in stack.workspace.messages.items()
                if ch == REPORTS and ("finished" in m["text"] or "failed" in m["text"])
            ),
            {},
        )
    finally:
        stack.stop()
    run = next(iter(sorted(data.rglob("result.json"))), None)
    outcome = json.loads(run.read_text()) if run else {}
    baseline = outcome.get("baseline") or {}
    result = {
        "benchmark": "demo_retrain",
        "machine": machine(),
        "examples": 36,
        "base_model": settings.base_model,
        "method": (outcome.get("config") or {}).get("method"),
        "adapter_accuracy": (outcome.get("metrics") or {}).get("accuracy"),
        "baseline_accuracy": baseline.get("accuracy"),
        "baseline": baseline.get("method"),
        "eval_examples": (outcome.get("metrics") or {}).get("n"),
        "verdict": outcome.get("verdict"),
        "train_seconds": (outcome.get("training") or {}).get("train_seconds"),
        "seconds_to_first_progress": first_progress,
        "seconds_to_report": report,
        "seconds_to_picture": picture,
        "progress_updates": updates,
        "report": final.get("text"),
        # what the serving gate served after the run, and the one sentence it gave
        "picked": (outcome.get("gate") or {}).get("picked"),
        "reason": (outcome.get("gate") or {}).get("reason"),
        "p_value": (outcome.get("gate") or {}).get("p_value"),
        "candidates": [
            {k: c[k] for k in ("name", "right", "n", "accuracy", "macro_f1", "serving")}
            for c in (outcome.get("gate") or {}).get("candidates", [])
        ],
    }
    out = REPO / "bench" / "results" / "demo_retrain.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
