"""The default base model's path on a tiny random BERT: a sentence encoder with LoRA and a head, refitted."""

import json

import pytest

from classifier.models import ModelError
from trainer.config import ENCODER_LINEAR, ConfigError, TrainConfig
from trainer.run import run

from .conftest import TOY_WORDS, make_run_dir, toy_classifier, toy_config, toy_examples


def encoder_config(path, **overrides):
    config = toy_config(path, method=None, target_modules=None, learning_rate=None, epochs=4, dev_fraction=0.0)
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def encoder_run(tiny_encoder_dir, tmp_path_factory):
    run_dir = make_run_dir(
        tmp_path_factory.mktemp("encoder"), encoder_config(tiny_encoder_dir, learning_rate=1e-2), toy_examples()
    )
    return run_dir, run(run_dir)


def test_an_encoder_gets_the_encoder_recipe_learns_and_is_refitted_on_every_example(encoder_run):
    from safetensors.torch import load_file

    run_dir, result = encoder_run
    assert result["status"] == "succeeded", result.get("error")
    config = result["config"]
    assert config["recipe"] == "encoder" and config["method"] == "head" and config["pooling"] == "mean"
    assert config["target_modules"] == ENCODER_LINEAR["bert"] and config["refit"] is True
    assert result["metrics"]["accuracy"] >= 0.9
    # The saved adapter was trained again on train + eval (dev is 0 here), for as long as the first one's best.
    assert result["refit"]["examples"] == result["data"]["train"] + result["data"]["eval"] == 60
    # As many epochs as the first training's best: its best step, scaled by the larger data's steps per epoch.
    from trainer.config import TrainConfig
    from trainer.methods.loop import steps_per_epoch

    cfg = TrainConfig(**result["config"])
    with_copies = lambda n: n + round(n * cfg.injection_augmentation)  # noqa: E731 - the injection copies
    first = steps_per_epoch(cfg, with_copies(result["data"]["train"]))
    every = steps_per_epoch(cfg, with_copies(60))
    assert result["refit"]["steps"] == round(result["training"]["best_step"] * every / first)
    assert result["refit"]["stop_reason"] == "max_steps"
    weights = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    assert any("query" in name for name in weights) and any("dense" in name for name in weights)
    assert all(t.abs().sum() > 0 for name, t in weights.items() if "lora_B" in name)
    head = load_file(str(run_dir / "adapter" / "head.safetensors"))
    assert head["weight"].shape == (3, 32)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    refit = [r for r in records if r.get("phase") == "refit"]
    assert refit and refit[-1]["step"] == result["refit"]["steps"] and not any(r["kind"] == "eval" for r in refit)
    assert "trained again on all 60 labelled examples" in (run_dir / "report.md").read_text()


def test_the_refitted_encoder_adapter_reloads_and_answers_like_the_saved_one(encoder_run, tiny_encoder_dir):
    import torch
    from peft import PeftModel

    from classifier.adapters import make_scorer
    from classifier.classify import read_adapter_meta
    from classifier.models import load_base_model, load_tokenizer

    run_dir, _ = encoder_run
    texts = ["broken refund angry late", "how when where can", "love great thanks nice"]
    classifier = toy_classifier(tiny_encoder_dir)
    classifier.use_adapter(run_dir / "adapter", version=1)
    assert classifier.method == "head" and classifier.merged
    served = classifier.classify_many(texts)
    # The same adapter, unmerged, through its own scorer: the same probabilities.
    base = load_base_model(tiny_encoder_dir, device="cpu").eval()
    model = PeftModel.from_pretrained(base, str(run_dir / "adapter")).eval()
    scorer = make_scorer(
        model, load_tokenizer(tiny_encoder_dir), read_adapter_meta(run_dir / "adapter"), run_dir / "adapter"
    )
    with torch.no_grad():
        direct = scorer.score([(t, None) for t in texts])
    for prediction, scores in zip(served, direct):
        probabilities = torch.tensor(scores.logprobs).exp().tolist()
        assert max(abs(prediction.scores[n] - p) for n, p in zip(TOY_WORDS, probabilities)) < 1e-4
    # The refit saw every example: the saved adapter is the trained one, not a fresh head.
    examples = toy_examples()
    fitted = classifier.classify_many([e["text"] for e in examples])
    assert sum(p.label == e["label"] for p, e in zip(fitted, examples)) >= 0.9 * len(examples)
    # ... and it is the refitted one, not the first training's (whose eval probabilities the run recorded).
    first = [json.loads(line) for line in (run_dir / "eval_predictions.jsonl").read_text().splitlines()]
    again = classifier.classify_many([e["text"] for e in first])
    assert max(abs(p.scores[n] - e["scores"][n]) for p, e in zip(again, first) for n in TOY_WORDS) > 1e-3


def test_an_encoder_cannot_answer_zero_shot_and_says_so(tiny_encoder_dir):
    classifier = toy_classifier(tiny_encoder_dir)
    assert classifier.encoder and classifier.method == "zero-shot"
    with pytest.raises(ModelError, match="sentence encoder"):
        classifier.classify("where is my refund")


def test_a_label_added_after_training_is_left_to_the_next_retrain(encoder_run, tiny_encoder_dir):
    run_dir, _ = encoder_run
    classifier = toy_classifier(tiny_encoder_dir)
    classifier.use_adapter(run_dir / "adapter", version=1)
    assert classifier.trained_labels == list(TOY_WORDS)
    assert all("billing" not in p.scores for p in classifier.classify_many(["billing invoice charge"]))


def test_the_recipe_must_fit_the_model(tiny_encoder_dir, tiny_model_dir, tmp_path):
    scoring = make_run_dir(tmp_path / "scoring", encoder_config(tiny_encoder_dir, method="scoring"), toy_examples())
    result = run(scoring)
    assert result["status"] == "failed" and result["bad_input"] and "sentence encoder" in result["error"]
    wrong = make_run_dir(tmp_path / "wrong", toy_config(tiny_model_dir, recipe="encoder"), toy_examples())
    result = run(wrong)
    assert result["status"] == "failed" and result["bad_input"] and "causal LM" in result["error"]


def test_the_encoder_recipe_fills_only_what_is_unset():
    cfg = TrainConfig(labels=[{"name": "a"}, {"name": "b"}])
    resolved = cfg.resolved(770, n_params=22_000_000, encoder=True)
    assert (resolved.recipe, resolved.learning_rate, resolved.epochs, resolved.refit) == ("encoder", 1e-3, 10, True)
    assert cfg.resolved(1000, n_params=22e6, encoder=True).epochs == 4
    # a base-sized encoder (all-mpnet-base-v2, 110M) gets fewer epochs: a 770-example retrain stays under 15 min
    assert cfg.resolved(616, n_params=109_486_464, encoder=True).epochs == 3
    assert cfg.resolved(1000, n_params=110e6, encoder=True).epochs == 1
    set_by_caller = TrainConfig(labels=[{"name": "a"}, {"name": "b"}], epochs=5)
    assert set_by_caller.resolved(616, n_params=110e6, encoder=True).epochs == 5
    mine = TrainConfig(labels=[{"name": "a"}, {"name": "b"}], refit=False, pooling="last", learning_rate=5e-4)
    kept = mine.resolved(770, encoder=True)
    assert (kept.refit, kept.pooling, kept.learning_rate) == (False, "last", 5e-4)
    decoder = cfg.resolved(770, n_params=135e6)
    assert (decoder.recipe, decoder.refit, decoder.pooling) == ("small-model", False, "last")
    # the layers LoRA targets are named by the encoder's family: MPNet calls BERT's query/key/value q/k/v
    assert cfg.resolved(770, 110e6, encoder=True, model_type="mpnet").target_modules == ["q", "k", "v", "o", "dense"]
    assert cfg.resolved(770, 22e6, encoder=True, model_type="bert").target_modules == ["query", "key", "value", "dense"]


def test_the_refit_progress_is_named_in_the_channel():
    from bot.slack.reports import progress_payload

    first = progress_payload(3, {"step": 5, "max_steps": 10, "epoch": 1.0}, 0.0, 0.5)
    second = progress_payload(3, {"step": 5, "max_steps": 10, "epoch": 1.0, "phase": "refit"}, 0.0, 0.5)
    text = lambda p: json.dumps(p["blocks"])  # noqa: E731
    assert "refitting on every labelled example" in text(second) and "refitting" not in text(first)
    assert "eval loss" in text(first) and "eval loss" not in text(second)


def test_config_rejects_unknown_pooling():
    from trainer.config import validate

    with pytest.raises(ConfigError, match="pooling"):
        validate(TrainConfig(labels=[{"name": "a"}, {"name": "b"}], pooling="max"))


def test_a_head_adapter_exports_with_its_head_and_no_text_generation_files(encoder_run, tiny_encoder_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    from classifier.head import features, head_prompt_ids, load_head
    from classifier.models import load_base_model, load_tokenizer
    from trainer.export import export_adapter

    run_dir, _ = encoder_run
    written = export_adapter(run_dir / "adapter", tiny_encoder_dir, tmp_path / "out", name="v1", merged=True)
    names = {p.name for p in written}
    assert names == {"adapter", "merged", "HOW-TO-LOAD.md"}  # no Modelfile, no vLLM line: a head generates nothing
    assert (tmp_path / "out" / "merged" / "head.safetensors").is_file()
    assert "Ollama and vLLM cannot serve it" in (tmp_path / "out" / "HOW-TO-LOAD.md").read_text()
    # The merged encoder and the head give the served probabilities.
    text = "broken refund angry terrible late"
    classifier = toy_classifier(tiny_encoder_dir)
    classifier.use_adapter(run_dir / "adapter", version=1)
    served = classifier.classify(text)
    merged = load_base_model(str(tmp_path / "out" / "merged"), device="cpu").eval()
    tokenizer = load_tokenizer(str(tmp_path / "out" / "merged"))
    head = load_head(tmp_path / "out" / "merged", "cpu")
    meta = json.loads((run_dir / "adapter" / "supportbot.json").read_text())
    from classifier.prompts import PromptSpec

    ids = head_prompt_ids(tokenizer, PromptSpec.from_dict(meta["prompt"]), text, None, 512, encoder=True)
    with torch.no_grad():
        probabilities = torch.softmax(head(features(merged, [ids], tokenizer.pad_token_id, "mean", 1)), -1)[0]
    assert max(abs(served.scores[n] - float(p)) for n, p in zip(TOY_WORDS, probabilities)) < 1e-4
    assert load_file(str(tmp_path / "out" / "merged" / "head.safetensors"))["weight"].shape == (3, 32)


def test_the_bot_answers_zero_shot_with_the_llm_then_with_an_adapter_on_the_encoder(
    encoder_run, env, tiny_encoder_dir, tiny_model_dir
):
    """Each base model loads once, on first use: the zero-shot LM, and the encoder the adapter was trained on."""
    from bot.serving import ServedClassifier
    from bot.settings import load_settings
    from storage import adapters, labels, open_db

    run_dir, result = encoder_run
    # The setting names another base model than the adapter's: the adapter must load on its own.
    settings = load_settings(
        {
            "SUPPORTBOT_DATA_DIR": str(env / "data"),
            "SUPPORTBOT_BASE_MODEL": tiny_model_dir,
            "SUPPORTBOT_ZERO_SHOT_MODEL": tiny_model_dir,
        },
        env_file=None,
    )
    db = open_db(settings.db_path)
    for name in TOY_WORDS:
        labels.add_label_def(db, name, f"{name} messages")
    served = ServedClassifier(settings, debounce_s=0.05)
    served.sync(db)
    first = served.classify("how when where can")
    assert first.model == "zero-shot" and served.state.kind == "zero-shot-lm"  # the setting names a language model
    adapter = adapters.register_adapter(
        db,
        path=str(run_dir / "adapter"),
        base_model=tiny_encoder_dir,
        labels=list(TOY_WORDS),
        metrics=result["metrics"],
    )
    adapters.promote(db, adapter.version)
    assert served.sync(db)
    answer = served.classify("how when where can which")
    assert answer.model == "adapter v1" and served.state.base_model == tiny_encoder_dir
    assert list(served._models) == [tiny_encoder_dir] and served._models[tiny_encoder_dir].encoder  # the LM let go
    served.close()


def test_a_failed_refit_keeps_the_adapter_the_gate_measured(tiny_encoder_dir, tmp_path, monkeypatch):
    from trainer.methods import head as head_module

    real, calls = head_module.fit_head, []

    def second_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError("out of memory in the refit")
        return real(*args, **kwargs)

    monkeypatch.setattr(head_module, "fit_head", second_fails)
    run_dir = make_run_dir(tmp_path / "run", encoder_config(tiny_encoder_dir, learning_rate=1e-2), toy_examples())
    result = run(run_dir)
    assert result["status"] == "succeeded" and "out of memory" in result["refit"]["error"]
    assert (run_dir / "adapter" / "head.safetensors").is_file()
    assert "failed (MemoryError" in (run_dir / "report.md").read_text()
    # The saved adapter is the first training's: it answers eval as the run recorded.
    first = [json.loads(line) for line in (run_dir / "eval_predictions.jsonl").read_text().splitlines()]
    classifier = toy_classifier(tiny_encoder_dir)
    classifier.use_adapter(run_dir / "adapter", version=1)
    again = classifier.classify_many([e["text"] for e in first])
    assert max(abs(p.scores[n] - e["scores"][n]) for p, e in zip(again, first) for n in TOY_WORDS) < 1e-3


def test_encoders_are_told_from_decoders_by_model_type(tiny_encoder_dir, tiny_model_dir):
    from transformers import AutoConfig, LlamaConfig, MistralConfig

    from classifier.models import is_encoder

    assert is_encoder(AutoConfig.from_pretrained(tiny_encoder_dir))
    assert not is_encoder(AutoConfig.from_pretrained(tiny_model_dir))
    assert not is_encoder(LlamaConfig()) and not is_encoder(MistralConfig(architectures=["MistralModel"]))
    # A large encoder does not get the small-encoder recipe.
    assert TrainConfig(labels=[{"name": "a"}, {"name": "b"}]).resolved(10, n_params=7e9, encoder=True).recipe == "seed"


def test_lora_targets_the_model_lacks_are_named_with_the_ones_it_has(tiny_encoder_dir, tmp_path):
    run_dir = make_run_dir(
        tmp_path / "run", encoder_config(tiny_encoder_dir, target_modules=["q_lin", "query"]), toy_examples()
    )
    result = run(run_dir)
    assert result["status"] == "failed" and result["bad_input"]
    assert "target_modules: q_lin not in this model" in result["error"] and "intermediate" not in result["error"]
    assert "query" in result["error"] and "dense" in result["error"]


def test_a_serving_adapter_on_another_base_model_is_named_as_not_scored(env, tiny_encoder_dir, monkeypatch):
    """An existing adapter on the old default (a decoder) cannot load on the new base: the report says so."""
    import numpy as np

    from bot.runs.execute import prepare_run
    from bot.settings import load_settings
    from storage import adapters, labels, messages, open_db, runs
    from trainer import candidates
    from trainer.config import load_config

    from .test_serving import fake_embed

    settings = load_settings(
        {"SUPPORTBOT_DATA_DIR": str(env / "data"), "SUPPORTBOT_BASE_MODEL": tiny_encoder_dir}, env_file=None
    )
    db = open_db(settings.db_path)
    for name in TOY_WORDS:
        labels.add_label_def(db, name, f"{name} messages")
    for i, example in enumerate(toy_examples(per_label=4)):
        m, _ = messages.add_message(
            db, source="slack_message", external_id=f"m{i}", raw_body=example["text"], clean_body=example["text"]
        )
        labels.add_label(db, m.id, example["label"], by="U1", method="cli")
    (env / "old").mkdir()
    old = adapters.register_adapter(
        db, path=str(env / "old"), base_model="gemma3-270m", labels=list(TOY_WORDS), metrics={}
    )
    adapters.promote(db, old.version)
    config = load_config(prepare_run(settings, db, runs.queue_run(db, requested_by="test")) / "config.json")
    assert config.compare_adapter == "" and "another base model, gemma3-270m" in config.serving_model["not_comparable"]
    monkeypatch.setattr(candidates, "embed_examples", lambda rows, encoder: fake_embed([r["text"] for r in rows]))
    rows = toy_examples(per_label=9)
    gate = candidates.evaluate_candidates(
        list(TOY_WORDS),
        rows[0::3],
        rows[1::3],
        rows[2::3],
        np.zeros((9, 3)),
        np.zeros((9, 3)),
        margin=0.01,
        serving=config.serving_model,
    )
    assert "was not scored: it was trained on another base model, gemma3-270m" in gate["reason"]


def test_with_a_refit_the_gate_compares_models_trained_on_the_same_examples(monkeypatch):
    """The adapter trained on train alone (dev only stopped it): so is the embedding candidate, when both refit."""
    import numpy as np

    from classifier import embeddings
    from trainer import candidates

    from .test_serving import fake_embed

    monkeypatch.setattr(candidates, "embed_examples", lambda rows, encoder: fake_embed([r["text"] for r in rows]))
    sizes, real = [], embeddings.EmbeddingClassifier.fit

    def recording(vectors, gold, names, *args, **kwargs):
        sizes.append(len(gold))
        return real(vectors, gold, names, *args, **kwargs)

    monkeypatch.setattr(embeddings.EmbeddingClassifier, "fit", staticmethod(recording))
    rows = toy_examples(per_label=12)
    train, dev, evaluation = rows[0::3], rows[1::3], rows[2::3]
    scores = np.zeros((12, 3))
    for same_data, expected in ((True, len(train)), (False, len(train) + len(dev))):
        sizes.clear()
        candidates.evaluate_candidates(
            list(TOY_WORDS), train, dev, evaluation, scores, scores, margin=0.01, same_data=same_data
        )
        assert sizes[0] == expected  # the embedding candidate scored on eval
