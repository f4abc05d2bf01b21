"""The head method's batch-contrastive term (contrastive_weight) on a tiny random BERT."""

import pytest

from trainer.config import ConfigError, TrainConfig, validate
from trainer.run import request_cancel, run

from .conftest import TOY_WORDS, make_run_dir, toy_examples
from .test_encoder import encoder_config


@pytest.fixture
def recorded(monkeypatch):
    """The real loss, recording the labels of every batch it sees and what it returned."""
    import trainer.methods.head as head

    seen = []
    real = head.contrastive_loss

    def recording():
        loss = real()
        compute = loss.compute_loss_from_embeddings

        def wrapped(embeddings, labels):
            value = compute(embeddings, labels)
            seen.append((labels.tolist(), float(value.detach())))
            return value

        loss.compute_loss_from_embeddings = wrapped
        return loss

    monkeypatch.setattr(head, "contrastive_loss", recording)
    return seen


def test_the_contrastive_term_trains_on_batches_grouped_by_label(tiny_encoder_dir, tmp_path, recorded, monkeypatch):
    from sentence_transformers.base.sampler import GroupByLabelBatchSampler

    epochs, set_epoch = [], GroupByLabelBatchSampler.set_epoch
    monkeypatch.setattr(GroupByLabelBatchSampler, "set_epoch", lambda self, n: (epochs.append(n), set_epoch(self, n)))
    config = encoder_config(tiny_encoder_dir, learning_rate=1e-2, contrastive_weight=1.0, refit=False, epochs=2)
    run_dir = make_run_dir(tmp_path / "run", config, toy_examples())
    result = run(run_dir)
    assert result["status"] == "succeeded", result.get("error")
    assert result["config"]["contrastive_weight"] == 1.0
    assert result["metrics"]["accuracy"] >= 0.9
    assert len(recorded) == result["training"]["global_step"]  # once per step (grad_accum 1), never in eval
    for labels, _ in recorded:  # each batch holds pairs: every label in it appears at least twice
        assert len(set(labels)) >= 2 and all(labels.count(label) >= 2 for label in labels)
    assert recorded[0][1] > 0  # a random encoder does not yet separate the labels by the margin
    assert {0, 1} <= set(epochs)  # the sampler is told each epoch, so it shuffles each one anew


def test_without_the_weight_no_contrastive_term_runs(tiny_encoder_dir, tmp_path, recorded):
    config = encoder_config(tiny_encoder_dir, refit=False, epochs=1)
    result = run(make_run_dir(tmp_path / "run", config, toy_examples()))
    assert result["status"] == "succeeded" and recorded == []


def test_a_contrastive_run_honours_cancel(tiny_encoder_dir, tmp_path):
    config = encoder_config(tiny_encoder_dir, contrastive_weight=1.0)
    run_dir = make_run_dir(tmp_path / "run", config, toy_examples())
    request_cancel(run_dir)  # asked before the first step: stops at the first step, as every method does
    result = run(run_dir)
    assert result["status"] == "cancelled" and result["training"]["global_step"] == 1
    assert not (run_dir / "adapter").exists()


def test_a_label_with_one_example_is_refused_not_dropped(tiny_encoder_dir, tmp_path):
    lonely = next(iter(TOY_WORDS))
    # two examples: one goes to eval, which leaves training one
    examples = [e for e in toy_examples() if e["label"] != lonely] + [
        {"text": "just one", "label": lonely},
        {"text": "and another", "label": lonely},
    ]
    # injection copies on (the default share): a copy of the one example is no second example
    config = encoder_config(tiny_encoder_dir, contrastive_weight=1.0, injection_augmentation=0.9)
    result = run(make_run_dir(tmp_path / "run", config, examples))
    assert result["status"] == "failed" and result["bad_input"] and "training" not in result  # before any model
    assert f"{lonely} has one" in result["error"] and "contrastive_weight 0" in result["error"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"contrastive_weight": -1}, "contrastive_weight: expected a number from 0 to 100"),
        ({"contrastive_weight": "lots"}, "contrastive_weight: expected a number from 0 to 100"),
        ({"contrastive_weight": 1.0, "batch_size": 2}, "batch_size must be even and at least 4, got 2"),
        ({"contrastive_weight": 1.0, "batch_size": 5}, "batch_size must be even and at least 4, got 5"),
    ],
)
def test_bad_contrastive_settings_are_refused_before_any_model_loads(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(TrainConfig(labels=[{"name": "a"}, {"name": "b"}], **overrides))
