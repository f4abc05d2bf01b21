"""The head method on a tiny random Llama: training, saving, serving beside label scoring, new labels."""

import json

import pytest

from trainer.run import run

from .conftest import TOY_WORDS, make_run_dir, toy_classifier, toy_config, toy_examples


@pytest.fixture(scope="module")
def head_run(tiny_model_dir, tmp_path_factory):
    run_dir = make_run_dir(
        tmp_path_factory.mktemp("head"),
        toy_config(tiny_model_dir, method="head", epochs=4, dev_fraction=0.0),
        toy_examples(),
    )
    return run_dir, run(run_dir)


def test_head_training_changes_the_head_and_the_adapter_and_learns(head_run, tiny_model_dir):
    import torch
    from safetensors.torch import load_file

    from trainer.methods.head import fit_probe

    run_dir, result = head_run
    assert result["status"] == "succeeded", result.get("error")
    assert result["config"]["method"] == "head"
    assert result["metrics"]["accuracy"] >= 0.9
    weights = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    assert all(t.abs().sum() > 0 for name, t in weights.items() if "lora_B" in name)  # LoRA B starts at zero
    head = load_file(str(run_dir / "adapter" / "head.safetensors"))
    assert head["weight"].shape == (3, 64) and head["bias"].shape == (3,)
    # The trained head is not the probe it started from: refit the probe on the same features and compare.
    meta = json.loads((run_dir / "adapter" / "supportbot.json").read_text())
    assert meta["method"] == "head" and meta["head"]["labels"] == list(TOY_WORDS)
    x = torch.randn(12, 64)
    probe = fit_probe(x, torch.arange(12) % 3, 3)
    assert not torch.allclose(probe.weight, head["weight"])


def test_head_adapter_reloads_with_the_same_predictions(head_run, tiny_model_dir):
    run_dir, result = head_run
    evaluated = [json.loads(line) for line in (run_dir / "eval_predictions.jsonl").read_text().splitlines()]
    classifier = toy_classifier(tiny_model_dir)
    classifier.use_adapter(run_dir / "adapter", version=1)
    assert classifier.method == "head" and classifier.merged
    reloaded = classifier.classify_many([e["text"] for e in evaluated])
    assert [p.label for p in reloaded] == [e["predicted"] for e in evaluated]
    for prediction, saved in zip(reloaded, evaluated):
        assert set(prediction.scores) == set(TOY_WORDS)  # every trained label gets a probability
        assert sum(prediction.scores.values()) == pytest.approx(1.0, abs=1e-5)
        assert max(abs(prediction.scores[k] - saved["scores"][k]) for k in TOY_WORDS) < 1e-3
        assert prediction.certified and prediction.adapter_version == 1


def test_head_and_scoring_adapters_swap_on_one_base_model(head_run, tiny_model_dir, tmp_path):
    run_dir, _ = head_run
    scoring_dir = make_run_dir(tmp_path / "scoring", toy_config(tiny_model_dir, epochs=3), toy_examples())
    assert run(scoring_dir)["status"] == "succeeded"
    classifier = toy_classifier(tiny_model_dir)
    model = classifier._model
    text = "broken refund angry terrible damaged"
    classifier.use_adapter(run_dir / "adapter", version=1)
    first = classifier.classify(text)
    base_model = classifier._model.get_base_model()
    classifier.use_adapter(scoring_dir / "adapter", version=2)
    assert classifier.method == "scoring" and classifier.classify(text).adapter_version == 2
    assert classifier._model.get_base_model() is base_model is model  # the base model was never reloaded
    classifier.use_adapter(run_dir / "adapter", version=3)
    again = classifier.classify(text)
    assert again.label == first.label and again.confidence == pytest.approx(first.confidence, abs=1e-4)


def test_a_label_added_after_training_is_not_predicted_until_the_next_retrain(head_run, tiny_model_dir):
    run_dir, _ = head_run
    classifier = toy_classifier(tiny_model_dir)
    assert classifier.trained_labels is None  # zero-shot: no adapter, nothing trained
    classifier.use_adapter(run_dir / "adapter", version=1)
    assert classifier.trained_labels == list(TOY_WORDS)
    current = list(TOY_WORDS) + ["billing"]  # the team adds a label after this adapter was trained
    assert not set(current) <= set(classifier.trained_labels)
    predictions = classifier.classify_many(["billing invoice charge", "how when where"])
    assert all(p.label in TOY_WORDS and "billing" not in p.scores for p in predictions)


def test_explicit_config_values_win_over_the_recipe(tmp_path):
    from trainer.config import ALL_LINEAR, TrainConfig, load_config

    cfg = TrainConfig(labels=[{"name": "a"}, {"name": "b"}], learning_rate=5e-4)
    small = cfg.resolved(10, n_params=135e6)
    assert small.learning_rate == 5e-4 and small.target_modules == ALL_LINEAR and small.method == "head"
    assert TrainConfig(labels=[{"name": "a"}, {"name": "b"}]).resolved(10, n_params=135e6).learning_rate == 1e-4
    path = tmp_path / "config.json"
    path.write_text('{"labels": [{"name": "a"}, {"name": "b"}], "method": "scoring", "target_modules": ["q_proj"]}')
    resolved = load_config(path).resolved(10, n_params=7e9)
    assert (resolved.method, resolved.target_modules, resolved.learning_rate) == ("scoring", ["q_proj"], 2e-4)
    assert resolved.recipe == "seed" and resolved.epochs == 4


def test_the_report_says_where_early_stopping_stopped_and_counts_the_progress_steps():
    from bot.slack.reports import progress_payload, report_payload
    from trainer.report import stop_text, summary_markdown

    training = {
        "stop_reason": "early_stopping",
        "best_step": 7,
        "global_step": 9,
        "max_steps": 12,
        "best_epoch": 3,
        "train_seconds": 60,
        "epochs": [{"epoch": 3, "train_loss": 0.5, "eval_loss": 0.6}],
    }
    gate = {
        "picked": "new adapter",
        "kind": "adapter",
        "new": True,
        "reason": "first",
        "ece": 0.1,
        "selective": [],
        "details": {},
        "candidates": [
            {
                "name": "new adapter",
                "kind": "adapter",
                "serving": False,
                "right": 4,
                "n": 8,
                "accuracy": 0.5,
                "macro_f1": 0.5,
                "ece": 0.1,
            }
        ],
    }
    result = {
        "status": "succeeded",
        "training": training,
        "promotion": {"promote": True, "reason": "first"},
        "gate": gate,
        "metrics": {"accuracy": 0.5, "macro_f1": 0.5, "n": 8, "per_class": {}},
    }
    # The run records the sentence (trainer.run); the Slack face shows it, and a run that recorded none its reason.
    assert "stopped: early_stopping;" in str(report_payload(1, result, 1)["blocks"])
    result["sentences"] = {"stopped": stop_text(training), "refit": ""}
    text = str(report_payload(1, result, 1)["blocks"])
    assert "early stopping at step 9 of 12: the eval loss had not improved since step 7" in text
    assert "9 steps" in text and "12 steps" not in text
    finished = str(progress_payload(1, {"step": 9, "max_steps": 12, "finished": True}, 0.0, None))
    assert "step 9/12" in finished and "stopped early at step 9 of 12" in finished
    completed = {**training, "stop_reason": "completed", "global_step": 12}
    report = summary_markdown({**result, "training": completed})
    assert "all 12 steps done; best eval loss at step 7" in report and "early" not in report


def test_head_run_progress_records_count_the_steps_the_report_counts(head_run):
    run_dir, result = head_run
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["kind"] == "train"]
    assert steps == list(range(1, result["training"]["global_step"] + 1))
    assert all(r["max_steps"] == result["training"]["max_steps"] for r in records)
    assert f"{result['training']['global_step']} steps" in (run_dir / "report.md").read_text()


def test_lora_on_the_top_layers_only_adapts_those_layers(tiny_model_dir):
    from peft import get_peft_model

    from classifier.models import load_base_model
    from trainer.config import TrainConfig
    from trainer.methods.loop import lora_config

    cfg = TrainConfig(labels=[{"name": "a"}, {"name": "b"}], lora_layers=1).resolved(10, n_params=1e6)
    model = get_peft_model(load_base_model(tiny_model_dir, device="cpu"), lora_config(cfg, 2))
    adapted = {name.split(".layers.")[1].split(".")[0] for name, _ in model.named_parameters() if "lora_" in name}
    assert adapted == {"1"}  # the top one of the tiny model's 2 layers
    assert TrainConfig(labels=[{"name": "a"}, {"name": "b"}]).resolved(10, n_params=135e6).lora_layers == 6
    assert TrainConfig(labels=[{"name": "a"}, {"name": "b"}]).resolved(10, n_params=7e9).lora_layers == 0


def test_the_verdict_says_when_the_eval_split_is_too_small_to_tell():
    from trainer.report import baseline_verdict

    baseline = {"method": "MiniLM", "accuracy": 0.75}
    small = baseline_verdict({"accuracy": 0.375, "n": 8}, baseline)
    assert "beats the adapter by 37.5 points" in small and "With 8 held-out examples one message moves" in small
    assert "held-out examples one message" not in baseline_verdict({"accuracy": 0.5, "n": 400}, baseline)
    # A win on eight messages is no surer than a loss on eight: no claim that fine-tuning earns its cost.
    won = baseline_verdict({"accuracy": 0.875, "n": 8}, baseline)
    assert "earns its cost here" not in won and "87.5% against the cheap baseline's 75.0%" in won
    assert "With 8 held-out examples one message moves accuracy by 12.5 points" in won
    assert "earns its cost here" in baseline_verdict({"accuracy": 0.9, "n": 400}, baseline)
