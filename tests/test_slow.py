"""The real packaged models: SmolLM2-135M-Instruct (label scoring, full precision and 4-bit) and
Gemma 3 270M (the head method): a few training steps each, then classification.

Marked slow (each loads a real model; about a minute or two on 2 CPU cores, more the first time). CI runs them: they are the
only check that the real model, its chat template and the QLoRA path work end to end.
"""

import json

import pytest

from trainer.run import run

from .conftest import make_run_dir, toy_config, toy_examples

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def model_cache(request):
    """The converted embedded model, kept between local runs (converting takes about a minute)."""
    return str(request.config.cache.mkdir("embedded-model"))


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_real_model_trains_a_few_steps_and_classifies(tmp_path, model_cache, quantization):
    config = toy_config("smollm2-135m", model_cache_dir=model_cache, quantization=quantization, max_steps=2,
                        learning_rate=1e-3, batch_size=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    run_dir = make_run_dir(tmp_path / "run", config, toy_examples(per_label=6))
    result = run(run_dir)
    assert result["status"] == "succeeded", result.get("error")
    assert result["training"]["global_step"] == 2
    train_losses = [json.loads(line)["train_loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                    if json.loads(line)["kind"] == "train"]
    assert len(train_losses) == 2 and all(loss == loss and loss < 20 for loss in train_losses)  # finite, sane
    adapter_config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 16 and set(adapter_config["target_modules"]) == {"q_proj", "k_proj", "v_proj",
                                                                                   "o_proj"}
    assert result["metrics"]["n"] == 3 and set(result["metrics"]["per_class"]) == {"complaint", "question",
                                                                                   "feedback"}
    if quantization == "none":
        from trainer.classify import Classifier
        from trainer.models import resolve_base_model
        from trainer.prompts import LabelInfo

        classifier = Classifier.load(resolve_base_model("embedded", model_cache),
                                     [LabelInfo("complaint"), LabelInfo("question"), LabelInfo("feedback")])
        zero_shot = classifier.classify("Where can I find my invoice?")
        assert zero_shot.zero_shot and zero_shot.label in ("complaint", "question", "feedback")
        classifier.use_adapter(run_dir / "adapter", version=1)
        tuned = classifier.classify("Where can I find my invoice?")
        assert tuned.adapter_version == 1 and tuned.scores != zero_shot.scores


@pytest.mark.parametrize("base_model", ["gemma3-270m", "smollm2-135m"])
def test_real_model_trains_a_head_and_serves_it(tmp_path, model_cache, base_model):
    from trainer.classify import Classifier
    from trainer.models import resolve_base_model
    from trainer.prompts import LabelInfo

    config = toy_config(base_model, model_cache_dir=model_cache, method="head", max_steps=2, learning_rate=1e-3)
    run_dir = make_run_dir(tmp_path / "run", config, toy_examples(per_label=6))
    result = run(run_dir)
    assert result["status"] == "succeeded", result.get("error")
    assert result["training"]["global_step"] == 2 and result["config"]["method"] == "head"
    labels = [LabelInfo("complaint"), LabelInfo("question"), LabelInfo("feedback")]
    classifier = Classifier.load(resolve_base_model(base_model, model_cache), labels)
    classifier.use_adapter(run_dir / "adapter", version=1)
    prediction = classifier.classify("Where can I find my invoice?")
    assert classifier.method == "head" and prediction.adapter_version == 1
    assert set(prediction.scores) == {"complaint", "question", "feedback"}
    assert sum(prediction.scores.values()) == pytest.approx(1.0, abs=1e-5)
