"""The real packaged models: SmolLM2-135M-Instruct (label scoring, full precision and 4-bit),
Gemma 3 270M and SmolLM2 (the head method): a few training steps each, then classification; and the
default, all-MiniLM-L6-v2 with the encoder recipe, trained in full on six Banking77 intents.

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
    config = toy_config(
        "smollm2-135m",
        model_cache_dir=model_cache,
        quantization=quantization,
        max_steps=2,
        learning_rate=1e-3,
        batch_size=4,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
    )
    run_dir = make_run_dir(tmp_path / "run", config, toy_examples(per_label=6))
    result = run(run_dir)
    assert result["status"] == "succeeded", result.get("error")
    assert result["training"]["global_step"] == 2
    train_losses = [
        json.loads(line)["train_loss"]
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "train"
    ]
    assert len(train_losses) == 2 and all(loss == loss and loss < 20 for loss in train_losses)  # finite, sane
    adapter_config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 16 and set(adapter_config["target_modules"]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
    }
    assert result["metrics"]["n"] == 3 and set(result["metrics"]["per_class"]) == {"complaint", "question", "feedback"}
    if quantization == "none":
        from classifier.classify import Classifier
        from classifier.models import resolve_base_model
        from classifier.prompts import LabelInfo

        classifier = Classifier.load(
            resolve_base_model("embedded", model_cache),
            [LabelInfo("complaint"), LabelInfo("question"), LabelInfo("feedback")],
        )
        zero_shot = classifier.classify("Where can I find my invoice?")
        assert zero_shot.zero_shot and zero_shot.label in ("complaint", "question", "feedback")
        classifier.use_adapter(run_dir / "adapter", version=1)
        tuned = classifier.classify("Where can I find my invoice?")
        assert tuned.adapter_version == 1 and tuned.scores != zero_shot.scores


@pytest.mark.parametrize("base_model", ["gemma3-270m", "smollm2-135m"])
def test_real_model_trains_a_head_and_serves_it(tmp_path, model_cache, base_model):
    from classifier.classify import Classifier
    from classifier.models import resolve_base_model
    from classifier.prompts import LabelInfo

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


def test_the_default_base_model_learns_real_intents_with_the_default_recipe(tmp_path, model_cache):
    """all-mpnet-base-v2 with the encoder recipe as `/retrain` runs it (refit included), on 6 Banking77 intents."""
    import csv

    from classifier.classify import Classifier
    from classifier.models import DEFAULT_BASE_MODEL, resolve_base_model
    from classifier.prompts import LabelInfo

    from .conftest import BANKING77

    INTENTS = [
        "card_arrival",
        "lost_or_stolen_card",
        "exchange_rate",
        "top_up_failed",
        "age_limit",
        "Refund_not_showing_up",
    ]  # spelled as in the CSV

    def rows(name, per_label):
        picked: dict = {}
        with (BANKING77 / name).open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                if row["category"] in INTENTS and len(picked.setdefault(row["category"], [])) < per_label:
                    picked[row["category"]].append({"text": row["text"], "label": row["category"]})
        return [r for label in INTENTS for r in picked[label]]

    if not (BANKING77 / "train.csv").exists():
        pytest.skip("the Banking77 data folder is not beside the repository")
    config = {"labels": [{"name": n} for n in INTENTS], "model_cache_dir": model_cache, "baseline": False}
    assert DEFAULT_BASE_MODEL == "mpnet"  # the config names no base model: this is what /retrain trains
    run_dir = make_run_dir(tmp_path / "run", config, rows("train.csv", 10))
    result = run(run_dir)
    assert result["status"] == "succeeded", result.get("error")
    assert result["config"]["recipe"] == "encoder" and result["refit"]["examples"] == 60
    assert result["config"]["epochs"] == 3  # a base-sized encoder's epochs
    from safetensors.torch import load_file

    lora = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    assert all(t.abs().sum() > 0 for name, t in lora.items() if "lora_B" in name)  # B starts at zero: LoRA trained
    classifier = Classifier.load(resolve_base_model(DEFAULT_BASE_MODEL, model_cache), [LabelInfo(n) for n in INTENTS])
    classifier.use_adapter(run_dir / "adapter", version=1)
    test = rows("test.csv", 20)
    predicted = [p.label for p in classifier.classify_many([r["text"] for r in test])]
    accuracy = sum(p == r["label"] for p, r in zip(predicted, test)) / len(test)
    assert accuracy >= 0.85, accuracy  # six distinct intents: the frozen embeddings alone get most of these right
