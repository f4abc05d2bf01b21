"""The recipe: a run directory in, an adapter, metrics and a report out.

RUN_DIR/config.json           TrainConfig (trainer.config)
RUN_DIR/train.jsonl           {"text", "label", "subject"?, "id"?} per line
RUN_DIR/eval.jsonl            optional; without it, a stratified split of train.jsonl
RUN_DIR/unlabelled.jsonl      optional, with unlabelled.npy: messages no one labelled and their vectors,
                              which the new adapter labels to teach a student (classifier.student)
-> RUN_DIR/metrics.jsonl      one line per logging step and evaluation, as training goes
-> RUN_DIR/adapter/           PEFT adapter + supportbot.json + README.md model card (+ student.npz)
-> RUN_DIR/eval_predictions.jsonl  the eval split with each prediction
-> RUN_DIR/result.json        status, metrics, comparison with the serving adapter, promotion decision,
                              and the sentences the reports show ("sentences": why training stopped, the refit)
-> RUN_DIR/report.md, report.png

Reads setup -> train -> evaluate -> save. Config and data are checked before
any model loads. `RUN_DIR/cancel` stops training at the next step.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

from classifier.encoders import encoder as encoder_named
from classifier.kinds import ADAPTER, DISTILLED, EMBEDDINGS, RECORDED
from classifier.prompts import LabelInfo, PromptSpec, label_list_shown
from datacheck.examples import DataError, check_examples
from jsonl import write_jsonl
from trainer.methods.loop import CANCEL_FILE, TrainingError

from .config import ConfigError, TrainConfig, load_config
from .data import (
    augment_with_injections,
    check_contrastive,
    read_jsonl,
    read_unlabelled,
    stratified_split,
    tokenize_examples,
)
from .metrics import JsonlSink, MetricsSink, epoch_table, read_metrics

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CANCELLED = 0, 1, 2, 3


def load_examples(run_dir: Path, cfg: TrainConfig) -> tuple[list[dict], list[dict]]:
    train_path, eval_path = run_dir / "train.jsonl", run_dir / "eval.jsonl"
    if not train_path.exists():
        raise DataError(f"{train_path}: no such file")
    names = cfg.label_names()
    if eval_path.exists():
        train, evaluation = read_jsonl(train_path), read_jsonl(eval_path)
        check_examples(train, names, min_per_label=1)
        check_examples(evaluation, names, what="eval data", min_per_label=1)
    else:
        examples = read_jsonl(train_path)
        check_examples(examples, names)
        train, evaluation = stratified_split(examples, cfg.eval_fraction, cfg.seed)
    return train, evaluation


def prompt_spec(cfg: TrainConfig) -> PromptSpec:
    labels = tuple(LabelInfo(label["name"], label.get("description", "")) for label in cfg.labels)
    return PromptSpec(
        labels,
        label_list_shown(cfg.label_list_in_prompt, len(labels)),
        cfg.max_body_chars,
        verbalize=cfg.label_verbalizer == "readable",
    )


def save_adapter(
    model, adapter_dir: Path, cfg: TrainConfig, spec: PromptSpec, result: dict, head=None, student=None
) -> None:
    """Write the adapter to a staging folder and rename it into place: a reader never sees half an adapter.

    `student`: (the fitted student, its supportbot.json entry), saved beside the adapter."""
    staging = adapter_dir.with_name(adapter_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    meta = {
        "base_model": cfg.base_model,
        "method": cfg.method,
        "prompt": spec.to_dict(),
        "config": json.loads(cfg.to_json()),
        "data": result["data"],
        "metrics": {k: result["metrics"][k] for k in ("accuracy", "macro_f1", "n")},
    }
    if head is not None:
        from classifier.head import save_head

        save_head(head, staging)
        meta["head"] = {"labels": spec.names, "pooling": cfg.pooling, "max_length": cfg.max_length}
    if student is not None:
        from classifier.student import save_student

        save_student(student[0], staging)
        meta["student"] = student[1]
    (staging / "supportbot.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    (staging / "README.md").write_text(model_card(cfg, spec, result), encoding="utf-8")
    shutil.rmtree(adapter_dir, ignore_errors=True)
    staging.rename(adapter_dir)


HOW = {
    "head": "with a linear head on the model's hidden states, trained with the LoRA (one label set, fixed "
    "when trained)",
    "scoring": "by scoring each label as the assistant's answer",
}


def model_card(cfg: TrainConfig, spec: PromptSpec, result: dict) -> str:
    metrics, data = result["metrics"], result["data"]
    rows = "\n".join(
        f"| {name} | {data['per_label'].get(name, 0)} | {metrics['per_class'][name]['f1']:.3f} |"
        for name in spec.names
        if name in metrics["per_class"]
    )
    return f"""---
library_name: peft
base_model: {cfg.base_model}
tags: [lora, text-classification, supportbot]
---
# supportbot adapter

A LoRA adapter (r={cfg.lora_r}, alpha={cfg.lora_alpha}, modules {", ".join(cfg.target_modules)}) that classifies
customer-support messages into {len(spec.names)} labels {HOW[cfg.method]}.

- Base model: {cfg.base_model}
- Training examples: {data["train"]}; evaluation examples: {data["eval"]}
- Accuracy {metrics["accuracy"]:.1%}, macro-F1 {metrics["macro_f1"]:.3f} on the evaluation split
- Learning rate {cfg.learning_rate}, {cfg.epochs} epochs max, batch {cfg.batch_size} x {cfg.grad_accum}, seed {cfg.seed}
- Stopped: {result["training"]["stop_reason"]}{refit_line(result)}

| label | train examples | eval F1 |
| --- | --- | --- |
{rows}
"""


def refit_line(result: dict) -> str:
    from .report import refit_text

    return f"\n- {refit_text(result)}" if refit_text(result) else ""


def evaluate_with(scorer, examples: list[dict], batch_size: int) -> tuple[dict, list]:
    """Metrics of `scorer` on `examples`, through the same prediction code that serves messages."""
    from classifier.classify import predict
    from classifier.evaluate import classification_metrics

    items = [(e["text"], e.get("subject")) for e in examples]
    predictions = predict(scorer, items, threshold=0.0, adapter_version=None, zero_shot=False, batch_size=batch_size)
    predicted = [p.label for p in predictions]
    return classification_metrics([e["label"] for e in examples], predicted, scorer.spec.names), predictions


def run(run_dir: str | Path, sink: MetricsSink | None = None) -> dict:
    """Run the recipe in `run_dir`; returns the result (also written to result.json). Never raises for bad input."""
    run_dir = Path(run_dir)
    result: dict = {"status": "failed", "error": None}
    try:
        result = _run(run_dir, sink or JsonlSink(run_dir / "metrics.jsonl"), result)
    except (ConfigError, DataError) as exc:
        result.update(status="failed", error=str(exc), bad_input=True)
    except TrainingError as exc:
        result.update(status="failed", error=str(exc))
    except Exception as exc:  # noqa: BLE001 - recorded for the worker and the channel, then re-raised
        result.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        _write_result(run_dir, result)
        raise
    _write_result(run_dir, result)
    return result


def _write_result(run_dir: Path, result: dict) -> None:
    tmp = run_dir / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=2), encoding="utf-8")
    tmp.replace(run_dir / "result.json")


def _run(run_dir: Path, sink: MetricsSink, result: dict) -> dict:
    # Setup: everything that can be wrong with the input is found before a model loads.
    cfg = load_config(run_dir / "config.json")
    train, evaluation = load_examples(run_dir, cfg)
    train, dev = split_dev(train, cfg)
    check_contrastive(cfg, train)  # on the real examples: an injected copy is no second example
    pool_rows, pool_vectors = read_unlabelled(
        run_dir, encoder_named(cfg.embedding_model).dimensions, cfg.unlabelled_max if cfg.baseline else 0
    )
    spec = prompt_spec(cfg)
    result.update(
        config=json.loads(cfg.to_json()),
        base_model=cfg.base_model,
        labels=spec.names,
        data={
            "train": len(train),
            "dev": len(dev),
            "eval": len(evaluation),
            "per_label": dict(sorted(Counter(e["label"] for e in train).items())),
        },
    )

    from classifier.encoders import EncoderCheckFailed, EncoderMissing
    from classifier.models import is_encoder, load_base_model, load_tokenizer, pick_device, resolve_base_model

    device = pick_device()
    try:
        path = resolve_base_model(cfg.base_model, cfg.model_cache_dir)
    except (EncoderMissing, EncoderCheckFailed) as exc:  # the message says what installs or restores it
        raise TrainingError(f"base model {cfg.base_model}: {exc}") from None
    tokenizer = load_tokenizer(path)

    def load():
        return load_base_model(
            path,
            quantization=cfg.quantization,
            dtype=cfg.compute_dtype,
            device=device,
            for_training=True,
            gradient_checkpointing=cfg.gradient_checkpointing,
        )

    model = load()
    encoder = is_encoder(model.config)
    cfg = cfg.resolved(
        len(train),
        n_params=sum(p.numel() for p in model.parameters()),
        encoder=encoder,
        model_type=getattr(model.config, "model_type", None),
    )
    check_fits_model(cfg, encoder)
    result["config"] = json.loads(cfg.to_json())
    augmented = augment_with_injections(train, spec.names, cfg.injection_augmentation, cfg.seed)
    # Early stopping watches dev (held out from training), leaving eval to the serving gate alone.
    stopping = dev or evaluation

    # Train.
    head = None
    if cfg.method == "head":
        from trainer.methods.head import fit_head

        model, head, outcome = fit_head(model, tokenizer, cfg, spec, augmented, stopping, run_dir, sink)
    else:
        from trainer.methods.scoring import fit

        train_rows = tokenize_examples(tokenizer, spec, augmented, cfg.max_length)
        eval_rows = tokenize_examples(tokenizer, spec, stopping, cfg.max_length)
        model, outcome = fit(model, tokenizer, cfg, train_rows, eval_rows, run_dir, sink, device)
    records, _ = (
        read_metrics(run_dir / "metrics.jsonl") if isinstance(sink, JsonlSink) else (getattr(sink, "records", []), 0)
    )
    from .report import baseline_verdict, best_epoch, draw_report, refit_text, stop_text, summary_markdown

    result["training"] = {
        "stop_reason": outcome.stop_reason,
        "best_step": outcome.best_step,
        "best_eval_loss": outcome.best_eval_loss,
        "global_step": outcome.global_step,
        "max_steps": outcome.max_steps,
        "train_seconds": outcome.train_seconds,
        "train_tokens": outcome.train_tokens,
        "tokens_per_second": outcome.train_tokens / outcome.train_seconds if outcome.train_seconds else None,
        "epochs": epoch_table(records),
        "best_epoch": best_epoch(records),
    }
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    if outcome.stop_reason == "cancelled":
        result.update(status="cancelled", error="cancelled on request")
        return result

    # Evaluate: the new adapter, the serving one on the same split, and a cheap baseline.
    from classifier.adapters import make_scorer
    from classifier.head import HeadScorer
    from classifier.scoring import LabelScorer

    model.config.use_cache = True
    batch = cfg.batch_size * 2
    scorer = (
        HeadScorer(model, tokenizer, spec, head, cfg.pooling, cfg.max_length)
        if head is not None
        else LabelScorer(model, tokenizer, spec)
    )
    result["metrics"], predictions = evaluate_with(scorer, evaluation, batch)
    write_jsonl(
        run_dir / "eval_predictions.jsonl",
        [
            {**e, "predicted": p.label, "confidence": p.confidence, "scores": p.scores}
            for e, p in zip(evaluation, predictions)
        ],
    )
    dev_predictions = evaluate_with(scorer, dev, batch)[1] if dev else None
    result["serving"], serving_predictions, serving_scorer = None, None, None
    if cfg.compare_adapter:
        from classifier.classify import read_adapter_meta

        model.load_adapter(cfg.compare_adapter, adapter_name="serving")
        model.set_adapter("serving")
        serving_scorer = make_scorer(model, tokenizer, read_adapter_meta(cfg.compare_adapter), cfg.compare_adapter)
        serving_metrics, serving_predictions = evaluate_with(serving_scorer, evaluation, batch)
        model.set_adapter("default")
        model.delete_adapter("serving")
        result["serving"] = {"path": cfg.compare_adapter, "metrics": serving_metrics}
    # Without dev there is no held-out row to fit the student's mix on: no candidate, so nothing to label.
    pseudo = _teach_labels(scorer, pool_rows if dev else [], batch, result, run_dir / CANCEL_FILE)
    if (run_dir / CANCEL_FILE).exists():  # asked during the labelling: nothing is saved
        result.update(status="cancelled", error="cancelled on request")
        return result
    result["gate"], vectors = _gate(
        cfg,
        spec.names,
        train,
        dev,
        evaluation,
        predictions,
        dev_predictions,
        serving_predictions,
        pool=pool_vectors if pseudo else None,
        pseudo=pseudo,
    )
    embeddings = next((c for c in result["gate"]["candidates"] if c["kind"] == EMBEDDINGS.name), None)
    if embeddings:
        result["baseline"] = {
            "method": f"{encoder_named(cfg.embedding_model).name} embeddings + logistic regression",
            "accuracy": embeddings["accuracy"],
            "macro_f1": embeddings["macro_f1"],
            "seconds": result["gate"]["seconds"],
        }
    else:
        result["baseline"] = _baseline(cfg, train + dev, evaluation, spec.names)
    result["promotion"] = {"promote": result["gate"]["new"], "reason": result["gate"]["reason"]}
    result["verdict"] = baseline_verdict(result["metrics"], result["baseline"])

    # Save: the adapter the gate measured first, so that a refit that fails leaves it in place.
    result["status"] = "succeeded"
    student = _final_student(cfg, spec.names, train + dev + evaluation, vectors, pool_vectors, pseudo, result)
    save_adapter(model, run_dir / "adapter", cfg, spec, result, head, student)
    if cfg.refit and head is not None:
        del scorer, serving_scorer, model  # the refit loads the base model afresh: never hold two copies
        try:
            model, head = refit(
                load, tokenizer, cfg, spec, train + dev + evaluation, augmented, outcome, run_dir, sink, result
            )
        except Exception as exc:  # noqa: BLE001 - out of memory, divergence: the measured adapter still serves
            result["refit"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        else:
            if result["refit"]["stop_reason"] == "cancelled":
                result.update(status="cancelled", error="cancelled on request")
                return result
            save_adapter(model, run_dir / "adapter", cfg, spec, result, head, student)
    result["adapter_dir"] = str(run_dir / "adapter")
    # Said once, here, in the run's own words: the bot's reports format these sentences and compute none.
    result["sentences"] = {"stopped": stop_text(result["training"]), "refit": refit_text(result)}
    try:
        draw_report(run_dir / "report.png", records, result["metrics"])
    except Exception as exc:  # noqa: BLE001 - a picture must never fail a run whose adapter is saved
        (run_dir / "report.png").unlink(missing_ok=True)
        result["picture_error"] = f"{type(exc).__name__}: {exc}"[:500]
    (run_dir / "report.md").write_text(summary_markdown(result), encoding="utf-8")
    return result


def check_fits_model(cfg: TrainConfig, encoder: bool) -> None:
    """An encoder has no LM head to score labels with, and the encoder recipe names BERT's layers."""
    if encoder and cfg.method == "scoring":
        raise ConfigError(
            f"method: {cfg.base_model} is a sentence encoder, which trains a head only (method head), not label scoring"
        )
    if not encoder and cfg.recipe == "encoder":
        raise ConfigError(
            f"recipe: encoder is for sentence encoders; {cfg.base_model} is a causal LM (use auto, small-model or seed)"
        )


def refit(
    load,
    tokenizer,
    cfg: TrainConfig,
    spec: PromptSpec,
    everything: list[dict],
    augmented_train: list[dict],
    outcome,
    run_dir: Path,
    sink: MetricsSink,
    result: dict,
):
    """Train the head adapter again on every labelled example, as long as early stopping found best (in epochs).

    The gate's numbers were measured on eval with the adapter trained without it; this one has seen
    eval and dev too, so it has no held-out score of its own, and no early stopping (its length comes
    from the first run). Its progress records say `"phase": "refit"`.
    """
    import math
    from dataclasses import replace

    from trainer.methods.head import fit_head
    from trainer.methods.loop import steps_per_epoch

    augmented = augment_with_injections(everything, spec.names, cfg.injection_augmentation, cfg.seed)
    best = outcome.best_step or outcome.global_step
    steps = max(1, round(best * steps_per_epoch(cfg, len(augmented)) / steps_per_epoch(cfg, len(augmented_train))))
    again = replace(
        cfg,
        max_steps=steps,
        epochs=max(1, math.ceil(steps / steps_per_epoch(cfg, len(augmented)))),
        early_stopping_patience=0,
    )
    model, head, second = fit_head(load(), tokenizer, again, spec, augmented, [], run_dir, _Phase(sink, "refit"))
    result["refit"] = {
        "examples": len(everything),
        "steps": second.global_step,
        "train_seconds": second.train_seconds,
        "train_tokens": second.train_tokens,
        "stop_reason": second.stop_reason,
    }
    return model, head


class _Phase:
    """Tags every record of a second training with its phase, so followers tell it from the first."""

    def __init__(self, sink: MetricsSink, phase: str):
        self.sink, self.phase = sink, phase

    def write(self, record: dict) -> None:
        self.sink.write({**record, "phase": self.phase})


def split_dev(train: list[dict], cfg: TrainConfig) -> tuple[list[dict], list[dict]]:
    """Hold part of the training side out of training (see trainer.candidates), when every label can spare one."""
    counts = Counter(e["label"] for e in train)
    if not cfg.dev_fraction or min(counts.values()) < 2:
        return train, []
    return stratified_split(train, cfg.dev_fraction, cfg.seed + 1)


LABEL_CHUNK = 256  # unlabelled messages labelled between two looks at the cancel file (a few seconds on 2 cores)


def _teach_labels(scorer, pool_rows: list[dict], batch: int, result: dict, cancel: Path) -> list[str] | None:
    """The new adapter's labels for the unlabelled messages (the adapter the gate measures, before any refit),
    through the prediction code that serves, in chunks with a look at `cancel` between them. None when too
    few were given to teach a student, or on a cancel."""
    import time

    from classifier.classify import predict
    from classifier.student import MIN_POOL

    if len(pool_rows) < MIN_POOL:
        if pool_rows:
            result["distillation"] = {"pool_rows": len(pool_rows), "skipped": f"fewer than {MIN_POOL} messages"}
        return None
    started = time.perf_counter()
    items = [(r["text"], r.get("subject")) for r in pool_rows]
    labels = []
    for start in range(0, len(items), LABEL_CHUNK):
        if cancel.exists():
            return None
        chunk = items[start : start + LABEL_CHUNK]
        made = predict(scorer, chunk, threshold=0.0, adapter_version=None, zero_shot=False, batch_size=batch)
        labels.extend(p.label for p in made)
    seconds = time.perf_counter() - started
    result["distillation"] = {"pool_rows": len(pool_rows), "label_seconds": seconds}
    return labels


def _final_student(cfg: TrainConfig, names, labelled, vectors, pool, pseudo, result: dict):
    """The student that serves beside the adapter, when the gate had a distilled candidate: taught on every
    labelled message (as the served embedding classifier is) and the pool. None otherwise."""
    if vectors is None or not pseudo or not any(c["kind"] == DISTILLED.name for c in result["gate"]["candidates"]):
        return None
    from classifier.student import describe, teach

    student = teach(vectors, [e["label"] for e in labelled], pool, pseudo, names)
    return student, describe(student, encoder_named(cfg.embedding_model).name, len(pool), len(labelled))


def _serving_student(cfg: TrainConfig, serving: dict):
    """The serving adapter's student, when what serves is distilled and it reads back valid; else None."""
    if serving.get("kind") != DISTILLED.name or not cfg.compare_adapter:
        return None
    from classifier.classify import read_adapter_meta
    from classifier.student import StudentInvalid, load_student

    which = encoder_named(cfg.embedding_model)
    try:
        meta = read_adapter_meta(cfg.compare_adapter)
        return load_student(cfg.compare_adapter, meta, encoder=which.name, dimensions=which.dimensions)
    except (StudentInvalid, OSError, ValueError):  # load_student turns any damage into StudentInvalid
        return None  # the gate then scores the serving adapter alone, as the bot would serve it


def _gate(
    cfg: TrainConfig,
    names: list[str],
    train,
    dev,
    evaluation,
    predictions,
    dev_predictions,
    serving_predictions,
    *,
    pool=None,
    pseudo=None,
):
    """Score every candidate on eval and choose what serves (trainer.gate: the one promotion rule).

    Returns the gate's result and the embeddings of train + dev + eval (None without the embedder)."""
    import time

    from classifier.embeddings import EmbedderMissing

    from .candidates import embed_examples, evaluate_candidates, probability_matrix

    started = time.perf_counter()
    serving = dict(cfg.serving_model)
    if cfg.compare_adapter and serving.get("kind") not in RECORDED:  # an adapter to compare, no record of it
        serving = {"kind": ADAPTER.name, "name": "serving adapter", "details": {}}

    def gate(with_embeddings: bool, vectors=None) -> dict:
        return evaluate_candidates(
            names,
            train,
            dev,
            evaluation,
            probability_matrix(dev_predictions, names) if dev_predictions else None,
            probability_matrix(predictions, names),
            margin=cfg.promotion_margin,
            serving=serving,
            serving_eval=probability_matrix(serving_predictions, names) if serving_predictions else None,
            same_data=bool(cfg.refit),
            significance=cfg.promotion_significance,
            embeddings=with_embeddings,
            encoder=cfg.embedding_model,
            vectors=vectors,
            pool=pool,
            pseudo=pseudo,
            serving_student=_serving_student(cfg, serving) if with_embeddings else None,
        )

    vectors = None
    try:
        if cfg.baseline:
            vectors = embed_examples(train + dev + evaluation, cfg.embedding_model)
        result = gate(cfg.baseline, vectors)
    except EmbedderMissing:
        vectors, result = None, gate(False)
    result["seconds"] = time.perf_counter() - started
    return result, vectors


def _baseline(cfg: TrainConfig, train: list[dict], evaluation: list[dict], names: list[str]) -> dict | None:
    if not cfg.baseline:
        return None
    from classifier.baseline import fit_predict
    from classifier.evaluate import classification_metrics

    method, predicted, seconds = fit_predict(
        [e["text"] for e in train], [e["label"] for e in train], [e["text"] for e in evaluation]
    )
    metrics = classification_metrics([e["label"] for e in evaluation], predicted, names)
    return {"method": method, "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "seconds": seconds}


def request_cancel(run_dir: str | Path) -> None:
    """Ask a running trainer to stop at its next step."""
    (Path(run_dir) / CANCEL_FILE).touch()
