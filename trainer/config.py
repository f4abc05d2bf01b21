"""Training configuration: one documented dataclass, checked before any model loads.

`RUN_DIR/config.json` holds these fields (unknown keys are an error, so a typo
cannot silently fall back to a default). Fields whose default is None (and
`epochs` = 0) are left to the recipe: `resolved()` fills them in, and a value
the caller sets is never replaced, because it is not None. Which recipe
applies depends on the base model: whether it is a sentence encoder, and its size:

- `seed`, for models of 1B parameters and more (a 7B-class model on a GPU
  host): LoRA r=16, alpha=32 on q/k/v/o, lr 2e-4, 4-bit NF4 with double
  quantization on CUDA (QLoRA), and a classification head on the last token.
- `small-model`, below 1B parameters (the packaged 135M/270M decoders on CPU):
  what measured best for them on Banking77 10-shot (bench/README.md): a head
  with LoRA on every linear layer of the top 6 layers, lr 1e-4, one epoch.
- `encoder`, for a sentence encoder (the default base model, all-mpnet-base-v2,
  or all-MiniLM-L6-v2): a head on the mean-pooled, unit-length embedding, started
  from the embedding classifier's own logistic regression, with LoRA on every
  linear layer at lr 1e-3; then refitted on every labelled example (`refit`).
  Epochs follow the encoder's size, so a 770-example retrain stays inside 15
  minutes on 2 cores: a small one (MiniLM, 22M) up to 10 under 1,000 examples
  (4 above; early stopping on dev), a base-sized one (mpnet, 110M) 3 (1 above).

Shared by all: cosine schedule, warmup 3%, batch 4 x accumulation 4.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from classifier.encoders import DEFAULT_ENCODER, ENCODERS
from classifier.kinds import KINDS
from classifier.models import DEFAULT_BASE_MODEL
from classifier.prompts import MAX_BODY_CHARS


class ConfigError(ValueError):
    """A config value the trainer cannot use. The message names the field."""


def _help(text: str, **kwargs):
    return field(metadata={"help": text}, **kwargs)


@dataclass
class TrainConfig:
    labels: list = _help(
        "The label set: a list of {name, description}. Every example's label must be in it.", default_factory=list
    )
    base_model: str = _help(
        "`minilm` (all-MiniLM-L6-v2, a sentence encoder), `gemma3-270m` (Gemma 3 270M), "
        "`smollm2-135m` or `embedded` (SmolLM2-135M-Instruct), a hub id or a local folder.",
        default=DEFAULT_BASE_MODEL,
    )
    model_cache_dir: str = _help("Where a packaged model is converted to once and loaded from afterwards.", default="")
    recipe: str = _help(
        "`auto` (encoder for a sentence encoder, small-model below 1B parameters, else seed), "
        "`seed` (7B-class models), `small-model` (what measured best for ~100M decoders on CPU) "
        "or `encoder`. A recipe fills only the fields left unset (None, or epochs 0); see RECIPES.",
        default="auto",
    )
    method: str | None = _help(
        "`head` (a linear head on the LM's hidden states, trained with LoRA on the body; its "
        "label set is fixed at training time), `scoring` (the label's likelihood as the "
        "answer to a chat prompt) or None / `auto`: the recipe decides (head).",
        default=None,
    )
    quantization: str = _help(
        "`auto` (4-bit on CUDA, none on CPU), `4bit` (NF4 + double quant) or `none`.", default="auto"
    )
    compute_dtype: str = _help(
        "`auto` (bf16 where supported, else fp16 on CUDA; fp32 on CPU), `bf16`, `fp16`, `fp32`.", default="auto"
    )
    lora_r: int = _help("LoRA rank.", default=16)
    lora_alpha: int = _help("LoRA alpha (scale = alpha / r).", default=32)
    lora_dropout: float = _help("Dropout on the LoRA path.", default=0.05)
    target_modules: list | None = _help(
        "Modules LoRA adapts; None: the recipe decides (seed: q/k/v/o; small-model: every linear layer).", default=None
    )
    learning_rate: float | None = _help("Peak learning rate; None: the recipe decides (seed 2e-4).", default=None)
    lr_scheduler: str = _help(
        "Learning-rate schedule (transformers' names: cosine, linear, constant...).", default="cosine"
    )
    warmup_ratio: float = _help("Fraction of steps spent warming up.", default=0.03)
    batch_size: int = _help("Examples per device step.", default=4)
    grad_accum: int = _help("Steps accumulated per optimizer update.", default=4)
    epochs: int = _help("Epochs; 0 = the recipe decides (seed: 4 under 1,000 examples, 2 above).", default=0)
    evals_per_epoch: int = _help("Evaluations (and early-stopping checks) per epoch.", default=2)
    early_stopping_patience: int = _help("Stop after this many evaluations without a better eval loss.", default=2)
    max_length: int = _help("Longest training sequence in tokens (prompt + label).", default=512)
    max_body_chars: int = _help(
        "Longer email bodies keep their start and end up to this many characters.", default=MAX_BODY_CHARS
    )
    label_list_in_prompt: str = _help(
        "`auto` (when at most 30 labels), `always` or `never`: name the labels in the system prompt.", default="auto"
    )
    label_verbalizer: str = _help(
        "`readable` (answer `card arrival` for label card_arrival) or `raw` (the name as is).", default="readable"
    )
    gradient_checkpointing: bool = _help("Trade compute for memory (helps 7B models on small GPUs).", default=False)
    seed: int = _help("Seed for the split, initialization and data order.", default=42)
    eval_fraction: float = _help("Share of examples held out when no eval.jsonl is given (stratified).", default=0.2)
    dev_fraction: float = _help(
        "Share of the training side held out from the adapter (stratified) for early "
        "stopping, calibration and the ensemble weight, so that the eval split is "
        "used only to compare candidates. 0: early stopping on eval, no ensemble.",
        default=0.125,
    )
    embedding_model: str = _help(
        "Sentence encoder of the gate's embeddings, adapter + embeddings and distilled candidates: mpnet or "
        "minilm (classifier/encoders.py). The bot passes the one it serves with (and the unlabelled messages' "
        "vectors only when the run's is that one).",
        default=DEFAULT_ENCODER,
    )
    serving_model: dict = _help(
        "What answers now, for the serving gate: {kind, name, details}; kind is "
        "embeddings, adapter, ensemble or distilled (the adapter's folder is compare_adapter); "
        "`not_comparable` says why an adapter that serves cannot be scored here.",
        default_factory=dict,
    )
    divergence_factor: float = _help(
        "Stop with an error when the training loss (the mean of the last 5 steps) exceeds this multiple of its first value.",
        default=4.0,
    )
    compare_adapter: str = _help(
        "Folder of the adapter now serving; evaluated on the same split for the promotion gate.", default=""
    )
    promotion_margin: float = _help(
        "First run only (nothing trained serves yet): candidates within this "
        "macro-F1 of the best count as just as good, and the cheapest serves.",
        default=0.01,
    )
    promotion_significance: float = _help(
        "What serves changes only when a candidate got more eval messages "
        "right than it, with a one-sided exact McNemar p-value below this.",
        default=0.05,
    )
    baseline: bool = _help(
        "Also score the embedding classifier and its ensemble with the adapter on the same "
        "split for the serving gate (false, or without the embedding model: the gate "
        "chooses among the adapters; a TF-IDF baseline is reported).",
        default=True,
    )
    injection_augmentation: float = _help(
        "Share of training examples copied with an appended instruction to "
        "answer another label (true label kept), so the adapter learns to "
        "ignore instructions inside emails.",
        default=0.3,
    )
    max_steps: int = _help("Stop after this many optimizer steps (0 = no limit; for smoke tests).", default=0)
    pooling: str | None = _help(
        "Head method: which hidden state the head reads, `last` (the last token of the "
        "prompt, which ends with a cue) or `mean` (the mean over the prompt's tokens; "
        "unit length for an encoder). None: the recipe decides (encoder: mean, else last).",
        default=None,
    )
    refit: bool | None = _help(
        "After the gate has measured the adapter on eval, train it again from the start on "
        "every labelled example (train, dev and eval) for as many epochs as early stopping "
        "chose, and save that one: with ten examples a label, the two held-out splits are "
        "a third of the data. The recorded metrics, temperature and ensemble weight stay "
        "those of the first training. If the refit fails, the first adapter is kept. None: "
        "the recipe decides (encoder: yes, since a retrain takes a minute or two; else no).",
        default=None,
    )
    head_init: str = _help(
        "Head method: `probe` (fit the head on the base model's frozen features first, then "
        "train it with LoRA) or `random`.",
        default="probe",
    )
    lora_layers: int | None = _help(
        "LoRA on the top N transformer layers only (0 = every layer). Backpropagation "
        "then stops at the lowest adapted layer, so a training step costs less. None: "
        "the recipe decides (seed: every layer; small-model: the top 6).",
        default=None,
    )
    label_smoothing: float = _help("Head method: label smoothing of the cross-entropy.", default=0.0)
    contrastive_weight: float = _help(
        "Head method: weight of a batch-contrastive term (sentence-transformers' BatchAllTripletLoss on the "
        "pooled embeddings, SetFit's signal) added to the cross-entropy; batches are grouped by label. "
        "0 = off; needs 2 training examples of every label and an even batch_size. The run keeps its optimizer "
        "steps, and the sampler takes labels in turns, so on imbalanced data the small labels are seen more "
        "often than their share.",
        default=0.0,
    )
    unlabelled_max: int = _help(
        "At most this many of the newest messages no one labelled (unlabelled.jsonl, with their stored vectors "
        "in unlabelled.npy, both written by the bot) are labelled by the new adapter to teach a student, the "
        "embedding classifier of the gate's `distilled` candidate (classifier/student.py); needs the embedding "
        "candidates (`baseline`) and at least 100 such messages. 0 = off, the default: on Banking77 the "
        "candidate (3,000 messages, labelled in 65 s) scored 88.12% against the adapter's 88.25%, no gain "
        "(bench/README.md). The gate serves it only when it is better beyond noise.",
        default=0,
    )

    def label_names(self) -> list[str]:
        return [label["name"] for label in self.labels]

    def resolved(
        self, n_train: int, n_params: int | None = None, encoder: bool = False, model_type: str | None = None
    ) -> "TrainConfig":
        """A copy with the unset fields filled in from the recipe for `n_train` examples and a model of `n_params`
        (`encoder`: a sentence encoder rather than a causal LM; `model_type`: its family, which names its layers).

        A field is unset when it is None (epochs: 0). Whatever the caller set stays as it is.
        """
        values = asdict(self)
        if self.recipe != "auto":
            recipe = self.recipe
        elif encoder and (n_params is None or n_params < SMALL_MODEL_PARAMS):
            recipe = "encoder"
        else:
            recipe = "small-model" if n_params is not None and n_params < SMALL_MODEL_PARAMS else "seed"
        values["recipe"] = recipe
        for name, value in RECIPES[recipe].items():
            if name == "epochs":
                if not values["epochs"]:
                    values["epochs"] = value(n_train, n_params)
            elif name == "target_modules" and callable(value):
                values[name] = values[name] or value(model_type)
            elif values[name] is None or (name == "method" and values[name] == "auto"):
                values[name] = value
        return TrainConfig(**values)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


SMALL_MODEL_PARAMS = 1_000_000_000
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
ALL_LINEAR = ATTENTION + ["gate_proj", "up_proj", "down_proj"]
# An encoder's attention, attention output and feed-forward layers, by model family: BERT's (all-MiniLM-L6-v2)
# are named query/key/value/dense, MPNet's (all-mpnet-base-v2) q/k/v/o/dense.
ENCODER_LINEAR = {"bert": ["query", "key", "value", "dense"], "mpnet": ["q", "k", "v", "o", "dense"]}

# What each recipe fills in for the fields left unset. `epochs` maps the number of training examples and the
# model's parameters (None when unknown) to epochs.
RECIPES = {
    # The project's seed recipe for 7B-class models on a GPU host (QLoRA through `quantization=auto`). A head on
    # the last token: on 7B models LoRA + a head beat generating the label and matched BERT-class encoders
    # (LS-LLaMA, arXiv 2310.01208; arXiv 2512.12677), and it is one forward pass per message.
    "seed": {
        "method": "head",
        "learning_rate": 2e-4,
        "target_modules": ATTENTION,
        "lora_layers": 0,
        "pooling": "last",
        "refit": False,
        "epochs": lambda n, params: 4 if n < 1000 else 2,
    },
    # What measured best for ~100-300M models on CPU, Banking77 10-shot (bench/README.md): from the probe-fitted
    # head, a gentle fine-tune (lr 1e-4, one epoch: 72.7%) beat lr 1e-3 for 3 epochs (68.3%), which moved the
    # features out from under the head. LoRA on the top 6 layers only: a step costs about half as much
    # (backpropagation stops there), so a 770-example retrain of Gemma 3 270M takes minutes on 2 cores.
    "small-model": {
        "method": "head",
        "learning_rate": 1e-4,
        "target_modules": ALL_LINEAR,
        "lora_layers": 6,
        "pooling": "last",
        "refit": False,
        "epochs": lambda n, params: 1,
    },
    # A sentence encoder (all-MiniLM-L6-v2, 22M parameters): what measured best on Banking77 10-shot
    # (bench/README.md). Its embeddings already separate intents well (logistic regression on them is
    # the embedding classifier), so the head starts from that fit and LoRA at lr 1e-3 moves the whole
    # encoder towards the team's labels. A step costs a tenth of a 135M decoder's, so ten epochs and a
    # refit on all the data still take minutes.
    "encoder": {
        "method": "head",
        "learning_rate": 1e-3,
        "target_modules": lambda model_type: ENCODER_LINEAR.get(model_type, ENCODER_LINEAR["bert"]),
        "lora_layers": 0,
        "pooling": "mean",
        "refit": True,
        "epochs": lambda n, params: _encoder_epochs(n, params),
    },
}

# A base-sized encoder (all-mpnet-base-v2, 110M) costs about 5x a small one's (all-MiniLM-L6-v2, 22M) per
# token. On Banking77 10-shot it was still improving after 3 epochs (88.25%, against 85.29% for MiniLM's 10
# with early stopping) in a 782 s retrain, refit included (bench/README.md): a fourth would pass 15 minutes.
BASE_ENCODER_PARAMS = 60_000_000


def _encoder_epochs(n_train: int, n_params: int | None) -> int:
    if n_params is not None and n_params >= BASE_ENCODER_PARAMS:
        return 3 if n_train < 1000 else 1
    return 10 if n_train < 1000 else 4


CHOICES = {
    "recipe": ("auto", "seed", "small-model", "encoder"),
    "method": (None, "auto", "head", "scoring"),
    "pooling": (None, "last", "mean"),
    "head_init": ("probe", "random"),
    "quantization": ("auto", "4bit", "none"),
    "compute_dtype": ("auto", "bf16", "fp16", "fp32"),
    "label_list_in_prompt": ("auto", "always", "never"),
    "label_verbalizer": ("readable", "raw"),
}
POSITIVE_INTS = ("lora_r", "lora_alpha", "batch_size", "grad_accum", "evals_per_epoch", "max_length", "max_body_chars")


def validate(config: TrainConfig) -> TrainConfig:
    """Raise ConfigError for the first value that cannot work."""
    for name, allowed in CHOICES.items():
        if getattr(config, name) not in allowed:
            raise ConfigError(
                f"{name}: expected one of {', '.join(str(a) for a in allowed if a is not None)}, "
                f"got {getattr(config, name)!r}"
            )
    for name in POSITIVE_INTS:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name}: expected a whole number of at least 1, got {value!r}")
    for name in ("epochs", "early_stopping_patience", "max_steps", "lora_layers", "unlabelled_max"):
        value = getattr(config, name)
        if name == "lora_layers" and value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{name}: expected a whole number of at least 0, got {value!r}")
    if config.learning_rate is not None and not (
        isinstance(config.learning_rate, (int, float)) and 0 < config.learning_rate < 1
    ):
        raise ConfigError(f"learning_rate: expected a number between 0 and 1, got {config.learning_rate!r}")
    for name in ("lora_dropout", "warmup_ratio", "promotion_margin", "injection_augmentation", "label_smoothing"):
        value = getattr(config, name)
        if not (isinstance(value, (int, float)) and 0 <= value < 1):
            raise ConfigError(f"{name}: expected a number in [0, 1), got {value!r}")
    if not (isinstance(config.contrastive_weight, (int, float)) and 0 <= config.contrastive_weight <= 100):
        raise ConfigError(f"contrastive_weight: expected a number from 0 to 100, got {config.contrastive_weight!r}")
    if config.contrastive_weight and (config.batch_size < 4 or config.batch_size % 2):
        raise ConfigError(
            f"contrastive_weight: batches grouped by label hold pairs: batch_size must be even and at least 4, "
            f"got {config.batch_size}"
        )
    if not (isinstance(config.promotion_significance, (int, float)) and 0 <= config.promotion_significance <= 1):
        raise ConfigError(f"promotion_significance: expected a number in [0, 1], got {config.promotion_significance!r}")
    if not (isinstance(config.dev_fraction, (int, float)) and 0 <= config.dev_fraction < 1):
        raise ConfigError(f"dev_fraction: expected a number in [0, 1), got {config.dev_fraction!r}")
    if config.refit is not None and not isinstance(config.refit, bool):
        raise ConfigError(f"refit: expected true, false or null, got {config.refit!r}")
    if not isinstance(config.serving_model, dict):
        raise ConfigError(f'serving_model: expected an object like {{"kind": "adapter"}}, got {config.serving_model!r}')
    if config.embedding_model not in ENCODERS:
        raise ConfigError(f"embedding_model: expected one of {', '.join(ENCODERS)}, got {config.embedding_model!r}")
    serving_kind = config.serving_model.get("kind")
    if serving_kind is not None and serving_kind not in KINDS:
        # checked here, before any model loads, not in the gate after an hour of training
        raise ConfigError(f"serving_model.kind: expected one of {', '.join(KINDS)}, got {serving_kind!r}")
    if not 0 < config.eval_fraction < 1:
        raise ConfigError(f"eval_fraction: expected a number between 0 and 1, got {config.eval_fraction!r}")
    if config.divergence_factor <= 1:
        raise ConfigError(f"divergence_factor: expected a number above 1, got {config.divergence_factor!r}")
    if config.target_modules is not None and (
        not isinstance(config.target_modules, list)
        or not config.target_modules
        or not all(isinstance(m, str) and m for m in config.target_modules)
    ):
        raise ConfigError("target_modules: expected a non-empty list of module names like q_proj")
    if not isinstance(config.labels, list) or not config.labels:
        raise ConfigError("labels: expected a non-empty list of {name, description}")
    names = []
    for label in config.labels:
        if not isinstance(label, dict) or not isinstance(label.get("name"), str) or not label["name"].strip():
            raise ConfigError(f"labels: each entry needs a non-empty name, got {label!r}")
        names.append(label["name"])
    if len(set(names)) != len(names):
        raise ConfigError(f"labels: duplicate names {sorted({n for n in names if names.count(n) > 1})}")
    if len(names) < 2:
        raise ConfigError(f"labels: a classifier needs at least 2 labels, got {len(names)} ({names[0]!r})")
    if not config.base_model:
        raise ConfigError(
            "base_model: expected `minilm`, `gemma3-270m`, `smollm2-135m` (`embedded`), a hub id or a local folder"
        )
    return config


def load_config(path: str | Path) -> TrainConfig:
    """Read and validate `config.json`."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    known = {f.name: f for f in fields(TrainConfig)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{path}: unknown field(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return validate(TrainConfig(**raw))
