"""The training recipe on a tiny random Llama: learning, saving, cancel, bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from datacheck.examples import DataError, check_examples
from trainer.config import ConfigError, TrainConfig, load_config, validate
from trainer.data import stratified_split
from trainer.run import EXIT_BAD_INPUT, request_cancel, run

from .conftest import make_run_dir, toy_config, toy_examples


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """One real training run shared by the tests that inspect its outputs."""
    import torch
    from transformers import AutoModelForCausalLM

    run_dir = make_run_dir(tmp_path_factory.mktemp("run"), toy_config(tiny_model_dir), toy_examples())
    base_before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    result = run(run_dir)
    base_after = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    unchanged = all(torch.equal(base_before[k], base_after[k]) for k in base_before)
    return run_dir, result, unchanged


def test_training_learns_a_learnable_task(trained):
    run_dir, result, _ = trained
    assert result["status"] == "succeeded", result.get("error")
    epochs = result["training"]["epochs"]
    assert epochs[-1]["eval_loss"] < epochs[0]["eval_loss"] - 0.5
    assert result["metrics"]["accuracy"] >= 0.9
    assert set(result["metrics"]["per_class"]) == {"complaint", "question", "feedback"}
    # The toy config leaves out the embeddings: the gate still decides, among the adapters.
    assert result["gate"]["kind"] == "adapter" and [c["name"] for c in result["gate"]["candidates"]] == ["new adapter"]
    assert result["promotion"] == {"promote": True, "reason": result["gate"]["reason"]}
    assert result["gate"]["reason"].startswith("nothing trained served yet; new adapter has the best macro-F1")


def test_adapter_weights_change_and_base_weights_do_not(trained):
    from safetensors.torch import load_file

    run_dir, _, base_unchanged = trained
    weights = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)  # LoRA B starts at zero
    assert base_unchanged


def test_run_outputs_follow_the_contract(trained):
    run_dir, result, _ = trained
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    kinds = {line["kind"] for line in lines}
    assert {"progress", "train", "eval"} <= kinds
    assert all(line["max_steps"] == result["training"]["max_steps"] for line in lines)
    assert (run_dir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (run_dir / "report.md").read_text()
    assert "| epoch | train loss | eval loss |" in report and "Best epoch" in report
    card = (run_dir / "adapter" / "README.md").read_text()
    assert "complaint" in card and f"Training examples: {result['data']['train']}" in card
    meta = json.loads((run_dir / "adapter" / "supportbot.json").read_text())
    assert meta["prompt"]["labels"][0]["name"] == "complaint"
    assert json.loads((run_dir / "result.json").read_text())["status"] == "succeeded"
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "adapter.partial").exists()


def test_reloaded_and_merged_adapter_give_the_same_predictions(trained, tiny_model_dir):
    import torch
    from peft import PeftModel

    from classifier.classify import Classifier
    from classifier.models import load_base_model, load_tokenizer
    from classifier.prompts import LabelInfo, PromptSpec
    from classifier.scoring import LabelScorer

    run_dir, result, _ = trained
    evaluated = [json.loads(line) for line in (run_dir / "eval_predictions.jsonl").read_text().splitlines()]
    assert len(evaluated) == result["metrics"]["n"]
    texts = [e["text"] for e in evaluated]
    tokenizer = load_tokenizer(tiny_model_dir)
    classifier = Classifier(
        load_base_model(tiny_model_dir, device="cpu"),
        tokenizer,
        [LabelInfo("complaint"), LabelInfo("question"), LabelInfo("feedback")],
    )
    classifier.use_adapter(run_dir / "adapter", version=1)
    reloaded = classifier.classify_many(texts)
    assert [p.label for p in reloaded] == [e["predicted"] for e in evaluated]
    assert [p.confidence for p in reloaded] == pytest.approx([e["confidence"] for e in evaluated], abs=1e-4)
    assert all(p.adapter_version == 1 and not p.zero_shot for p in reloaded)

    merged = PeftModel.from_pretrained(
        load_base_model(tiny_model_dir, device="cpu"), str(run_dir / "adapter")
    ).merge_and_unload()
    spec = PromptSpec.from_dict(json.loads((run_dir / "adapter" / "supportbot.json").read_text())["prompt"])
    with torch.inference_mode():
        merged_scores = LabelScorer(merged.eval(), tokenizer, spec, beam_width=99).score([(t, None) for t in texts])
    for prediction, scores in zip(reloaded, merged_scores):
        probs = dict(zip(spec.names, torch.softmax(torch.tensor(scores.logprobs), 0).tolist()))
        assert max(abs(probs[k] - prediction.scores[k]) for k in probs) < 1e-3


def test_export_writes_modelfile_vllm_line_and_a_merged_model(trained, tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from trainer.export import export_adapter

    run_dir, result, _ = trained
    written = export_adapter(run_dir / "adapter", tiny_model_dir, tmp_path / "out", name="supportbot-v1", merged=True)
    assert [p.name for p in written] == ["adapter", "Modelfile", "vllm.txt", "merged"]
    modelfile = (tmp_path / "out" / "Modelfile").read_text()
    assert f"FROM {tiny_model_dir}" in modelfile and "ADAPTER ./adapter" in modelfile and "Labels:" in modelfile
    assert "--lora-modules supportbot-v1=" in (tmp_path / "out" / "vllm.txt").read_text()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "merged")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict()[name], base.state_dict()[name])  # the adapter is in the weights


def test_cancel_stops_cleanly_without_an_adapter(tiny_model_dir, tmp_path):
    run_dir = make_run_dir(tmp_path / "run", toy_config(tiny_model_dir), toy_examples())
    request_cancel(run_dir)  # asked before the first step: stops at the first step
    result = run(run_dir)
    assert result["status"] == "cancelled"
    assert result["training"]["global_step"] == 1
    assert not (run_dir / "adapter").exists()


@pytest.mark.parametrize(
    "losses, expected",
    [
        ([2.0, 1.5, float("nan")], "the training loss became nan at step 3"),
        ([2.0, 1.5, 9.0, 9.0, 9.0, 9.0, 9.0], "rose to 9.000 (the mean of the last 5 steps) at step 7, 4.5x its first"),
    ],
)
def test_diverging_loss_stops_training_with_a_reason(tmp_path, losses, expected):
    from types import SimpleNamespace

    from transformers import TrainerControl

    from trainer.methods.loop import callbacks
    from trainer.metrics import ListSink

    cfg = TrainConfig(labels=[{"name": "a"}, {"name": "b"}])
    report, _ = callbacks(cfg, ListSink(), tmp_path)
    control = TrainerControl()
    for step, loss in enumerate(losses, start=1):
        report.on_log(
            None, SimpleNamespace(global_step=step, max_steps=10, epoch=step / 10), control, logs={"loss": loss}
        )
    assert control.should_training_stop
    assert expected in report.problem


def feed(report, losses):
    from types import SimpleNamespace

    from transformers import TrainerControl

    control = TrainerControl()
    for step, loss in enumerate(losses, start=1):
        report.on_log(
            None, SimpleNamespace(global_step=step, max_steps=10, epoch=step / 10), control, logs={"loss": loss}
        )
    return control


def test_one_hard_batch_is_not_divergence(tmp_path):
    from trainer.methods.loop import callbacks
    from trainer.metrics import ListSink

    report, _ = callbacks(TrainConfig(labels=[{"name": "a"}, {"name": "b"}]), ListSink(), tmp_path)
    control = feed(report, [2.0, 1.5, 9.0, 1.0, 1.0, 0.8, 0.7])  # one batch of a few examples at 4.5x
    assert not control.should_training_stop and report.problem is None


def test_a_head_starting_near_zero_loss_is_measured_against_a_uniform_guess(tmp_path):
    import math

    from trainer.methods.loop import callbacks
    from trainer.metrics import ListSink

    cfg = TrainConfig(labels=[{"name": "a"}, {"name": "b"}, {"name": "c"}])
    calm, _ = callbacks(cfg, ListSink(), tmp_path, floor=math.log(3))
    assert not feed(calm, [0.01, 0.5, 1.0, 1.5, 2.0, 2.5]).should_training_stop  # 250x the first, under 4x log 3
    rising, _ = callbacks(cfg, ListSink(), tmp_path, floor=math.log(3))
    assert feed(rising, [0.01] + [5.0] * 5).should_training_stop
    assert "the larger of its first value and a uniform guess's (1.099)" in rising.problem


@pytest.mark.parametrize(
    "override, message",
    [
        ({"learning_rate": 0}, "learning_rate: expected a number between 0 and 1"),
        ({"lora_r": 0}, "lora_r: expected a whole number of at least 1"),
        ({"quantization": "8bit"}, "quantization: expected one of auto, 4bit, none"),
        ({"labels": [{"name": "only"}]}, "labels: a classifier needs at least 2 labels"),
        ({"labels": [{"name": "a"}, {"name": "a"}]}, "labels: duplicate names"),
        ({"target_modules": []}, "target_modules: expected a non-empty list"),
        ({"lerning_rate": 1e-3}, "unknown field(s) lerning_rate"),
        (
            {"serving_model": {"kind": "adaptor"}},
            "serving_model.kind: expected one of zero-shot, zero-shot-lm, embeddings, adapter",
        ),
    ],
)
def test_bad_config_rejected_before_any_model_loads(tmp_path, override, message):
    config = toy_config("/nonexistent/model")
    config.update(override)
    run_dir = make_run_dir(tmp_path / "run", config, toy_examples())
    result = run(run_dir)
    assert result["status"] == "failed" and result["bad_input"]
    assert message in result["error"]
    assert not (run_dir / "metrics.jsonl").exists()


@pytest.mark.parametrize(
    "examples, message",
    [
        ([], "training data is empty"),
        ([{"text": "x", "label": "complaint"}] * 4, "every example is labeled 'complaint'"),
        (
            [{"text": "x", "label": "complaint"}] * 2 + [{"text": "y", "label": "praise"}] * 2,
            "not in the label set: praise",
        ),
        (
            [{"text": "x", "label": "complaint"}] * 3 + [{"text": "y", "label": "question"}],
            "fewer than 2 examples, too few to split into train and eval: question (1)",
        ),
        ([{"text": "  ", "label": "complaint"}] * 2 + [{"text": "y", "label": "question"}] * 2, "empty text"),
    ],
)
def test_bad_datasets_get_clear_errors(tmp_path, examples, message):
    run_dir = make_run_dir(tmp_path / "run", toy_config("/nonexistent/model"), examples)
    result = run(run_dir)
    assert result["status"] == "failed" and message in result["error"]


def test_python_m_trainer_exit_codes(tmp_path):
    run_dir = make_run_dir(tmp_path / "run", toy_config("/nonexistent/model"), [])
    done = subprocess.run([sys.executable, "-m", "trainer", str(run_dir)], capture_output=True, text=True)
    assert done.returncode == EXIT_BAD_INPUT
    assert "training data is empty" in done.stderr
    assert json.loads((run_dir / "result.json").read_text())["status"] == "failed"


def test_stratified_split_is_seeded_and_keeps_every_label():
    examples = toy_examples(per_label=10) + [
        {"text": "rare one", "label": "rare"},
        {"text": "rare two", "label": "rare"},
    ]
    train, evaluation = stratified_split(examples, 0.2, seed=42)
    again = stratified_split(examples, 0.2, seed=42)
    assert (train, evaluation) == again
    assert len(train) + len(evaluation) == len(examples)
    for label in ("complaint", "question", "feedback", "rare"):
        assert any(e["label"] == label for e in train) and any(e["label"] == label for e in evaluation)
    assert sum(e["label"] == "complaint" for e in evaluation) == 2


def test_check_examples_accepts_good_data():
    check_examples(toy_examples(), ["complaint", "question", "feedback"])  # raises on failure


def test_config_defaults_are_the_seed_recipe_and_epochs_follow_data_size():
    cfg = validate(TrainConfig(labels=[{"name": "a"}, {"name": "b"}]))
    assert (cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout) == (16, 32, 0.05)
    assert (cfg.method, cfg.target_modules, cfg.learning_rate) == (None, None, None)  # the recipe decides
    assert (cfg.lr_scheduler, cfg.warmup_ratio) == ("cosine", 0.03)
    assert (cfg.batch_size, cfg.grad_accum, cfg.seed, cfg.eval_fraction) == (4, 4, 42, 0.2)
    assert cfg.recipe == "auto"
    seed = cfg.resolved(10, n_params=7_000_000_000)  # 7B-class: the seed recipe
    assert (seed.learning_rate, seed.method, seed.recipe) == (2e-4, "head", "seed")
    assert seed.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert cfg.resolved(999, n_params=7e9).epochs == 4 and cfg.resolved(1000, n_params=7e9).epochs == 2
    small = cfg.resolved(10, n_params=135_000_000)  # the packaged models: what measured best for them
    assert small.method == "head" and "down_proj" in small.target_modules and small.recipe == "small-model"


def test_a_recipe_never_overrides_what_config_json_says(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"labels": [{"name": "a"}, {"name": "b"}], "learning_rate": 0.005}')
    resolved = load_config(path).resolved(10, n_params=135_000_000)
    assert resolved.learning_rate == 0.005 and "gate_proj" in resolved.target_modules


def test_load_config_reports_bad_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(path)


def test_classification_metrics_list_each_label_once():
    from classifier.evaluate import classification_metrics

    m = classification_metrics(["a", "a", "b", "c"], ["a", "b", "b", "x"], ["a", "b", "c"])
    assert m["confusion"]["labels"] == ["a", "b", "c", "x"]  # an unknown prediction gets its own column, once
    assert m["confusion"]["matrix"] == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]]
    assert m["accuracy"] == 0.5 and m["per_class"]["a"] == {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError) and issubclass(ConfigError, ValueError)


def test_export_modelfile_paths_resolve_from_its_own_folder(trained, tiny_model_dir, tmp_path, monkeypatch):
    """The bot names its model relative to its working directory; Ollama reads FROM relative to the Modelfile."""
    import re

    from trainer.export import export_adapter

    run_dir, _, _ = trained
    monkeypatch.chdir(Path(tiny_model_dir).parent)
    out = tmp_path / "exported"
    export_adapter(run_dir / "adapter", Path(tiny_model_dir).name, out, name="supportbot-v1")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    modelfile = (out / "Modelfile").read_text()
    base = re.search(r"^FROM (.+)$", modelfile, re.M)[1]
    adapter = re.search(r"^ADAPTER (.+)$", modelfile, re.M)[1]
    assert ((out / base) / "config.json").is_file()  # as Ollama resolves it: from the Modelfile's folder
    assert ((out / adapter) / "adapter_config.json").is_file()
    served = (out / "vllm.txt").read_text().split()[2]
    assert (Path(served) / "config.json").is_file()
