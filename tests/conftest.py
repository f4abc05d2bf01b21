import os
from pathlib import Path

import pytest

from storage import open_db

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
BANKING77 = SHARED / "data" / "banking77"


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "data" / "supportbot.db"


@pytest.fixture
def db(db_path):
    return open_db(db_path)


def supportbot(*args, check=True):
    """`supportbot ARGS` run in this process through click's CliRunner: returncode, stdout and stderr as a user
    sees them. Tests whose point is the process itself (its arguments' bytes, its umask, a fresh environment)
    start one instead."""
    from types import SimpleNamespace

    from click.testing import CliRunner

    from bot.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    ran = SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)
    if check and ran.returncode != 0:
        raise AssertionError(ran.stderr)
    return ran


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A clean settings environment pointing at a temporary data dir."""
    for key in list(os.environ):
        if key.startswith(("SUPPORTBOT_", "SLACK_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("SUPPORTBOT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


TINY_VERSION = "tiny-llama-v1"


@pytest.fixture(scope="session")
def tiny_model_dir(request):
    """A tiny randomly initialised Llama (hidden 64, 2 layers) with the real SmolLM2 tokenizer (see build_tiny_model)."""
    folder = Path(request.config.cache.mkdir(TINY_VERSION))
    if (folder / "config.json").exists() and (folder / "tokenizer.json").exists():
        return str(folder)
    return build_tiny_model(folder)


def build_tiny_model(folder: Path) -> str:
    """Write the tiny Llama into `folder`. The benchmarks use it too.

    The weights use a larger init range than Llama's default so that logits can
    move far enough for a LoRA to learn a toy task in seconds.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from classifier.models import embedded_gguf

    gguf = embedded_gguf()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


TOY_WORDS = {
    "complaint": ["broken", "refund", "angry", "terrible", "late", "damaged"],
    "question": ["how", "when", "where", "can", "what", "which"],
    "feedback": ["love", "great", "thanks", "nice", "awesome", "wonderful"],
}


def toy_examples(per_label=20, seed=1):
    """A learnable toy task: each label has its own vocabulary."""
    import random

    rng = random.Random(seed)
    return [
        {"text": " ".join(rng.choice(words) for _ in range(5)), "label": label}
        for label, words in TOY_WORDS.items()
        for _ in range(per_label)
    ]


def toy_config(base_model, **overrides):
    config = {
        "labels": [{"name": n, "description": f"{n} messages"} for n in TOY_WORDS],
        "base_model": base_model,
        "learning_rate": 1e-2,
        "epochs": 8,
        "grad_accum": 1,
        "lora_dropout": 0.0,
        "baseline": False,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "early_stopping_patience": 0,
        "method": "scoring",
    }
    config.update(overrides)
    return config


def make_run_dir(folder, config, examples, eval_examples=None):
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "train.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
    if eval_examples is not None:
        (folder / "eval.jsonl").write_text("".join(json.dumps(e) + "\n" for e in eval_examples))
    return folder


TINY_ENCODER_VERSION = "tiny-bert-v1"


@pytest.fixture(scope="session")
def tiny_encoder_dir(request):
    """A tiny randomly initialised BERT encoder (hidden 32, 2 layers) with all-MiniLM-L6-v2's tokenizer."""
    folder = Path(request.config.cache.mkdir(TINY_ENCODER_VERSION))
    if (folder / "config.json").exists() and (folder / "tokenizer.json").exists():
        return str(folder)
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from classifier.embeddings import model_path

    tokenizer = AutoTokenizer.from_pretrained(model_path())
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=512,
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def toy_classifier(path):
    """The serving classifier on the model at `path` (tiny Llama or tiny BERT), with the toy labels."""
    from classifier.classify import Classifier
    from classifier.models import load_base_model, load_tokenizer
    from classifier.prompts import LabelInfo

    model = load_base_model(path, device="cpu")
    model.eval()
    return Classifier(
        model, load_tokenizer(path), [LabelInfo(name, f"{name} messages") for name in TOY_WORDS], batch_size=8
    )
