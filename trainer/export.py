"""Exporting an adapter for other runtimes: a merged model, an Ollama Modelfile, a vLLM command line
(label-scoring adapters); a head adapter gets its folder, the merged model with its head, and how to load them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from classifier.adapters import adapter_method
from classifier.classify import read_adapter_meta
from classifier.prompts import PromptSpec, prompt_messages


def system_prompt_of(adapter_dir: Path) -> str:
    spec = PromptSpec.from_dict(read_adapter_meta(adapter_dir)["prompt"])
    return prompt_messages(spec, "x")[0]["content"]


def export_adapter(
    adapter_dir: str | Path, base_model_path: str, out_dir: str | Path, *, name: str, merged: bool = False
) -> list[Path]:
    """Write `out_dir/adapter/`, `Modelfile`, `vllm.txt` and, with `merged`, `out_dir/merged/`. Returns the paths.

    Ollama reads the Modelfile's paths from the Modelfile's folder, not from where this runs: a local base
    model is written as an absolute path (a hub id stays as it is), the adapter as `./adapter` beside it.
    """
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if Path(base_model_path).exists():
        base_model_path = str(Path(base_model_path).resolve())
    out_dir.mkdir(parents=True, exist_ok=True)
    copied = out_dir / "adapter"
    shutil.rmtree(copied, ignore_errors=True)
    shutil.copytree(adapter_dir, copied)
    if adapter_method(read_adapter_meta(adapter_dir)) == "head":
        return [copied] + _export_head(adapter_dir, base_model_path, out_dir, merged)
    rank = json.loads((adapter_dir / "adapter_config.json").read_text())["r"]
    system = system_prompt_of(adapter_dir).replace('"""', "'''")
    written = [copied]
    modelfile = out_dir / "Modelfile"
    modelfile.write_text(
        f"# ollama create {name} -f Modelfile\nFROM {base_model_path}\nADAPTER ./adapter\n"
        f'PARAMETER temperature 0\nSYSTEM """{system}"""\n',
        encoding="utf-8",
    )
    vllm = out_dir / "vllm.txt"
    vllm.write_text(
        f"vllm serve {base_model_path} --enable-lora --max-lora-rank {rank} --lora-modules {name}={copied.resolve()}\n",
        encoding="utf-8",
    )
    written += [modelfile, vllm]
    if merged:
        written.append(_merge(adapter_dir, base_model_path, out_dir))
    return written


def _merge(adapter_dir: Path, base_model_path: str, out_dir: Path) -> Path:
    from peft import PeftModel

    from classifier.models import load_base_model, load_tokenizer

    # Merging needs full-precision base weights: never merge into a 4-bit base.
    base = load_base_model(base_model_path, quantization="none", dtype="fp32", device="cpu")
    model = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    target = out_dir / "merged"
    model.save_pretrained(target)
    load_tokenizer(base_model_path).save_pretrained(target)
    return target


def _export_head(adapter_dir: Path, base_model_path: str, out_dir: Path, merged: bool) -> list[Path]:
    """A head adapter answers through its head, not by generating text, so Ollama and vLLM cannot serve it:
    write how to load it instead, and with `merged` the model with the LoRA folded in beside the head."""
    from classifier.head import HEAD_FILE

    written = []
    if merged:
        target = _merge(adapter_dir, base_model_path, out_dir)
        shutil.copy(adapter_dir / HEAD_FILE, target / HEAD_FILE)
        written.append(target)
    how = out_dir / "HOW-TO-LOAD.md"
    how.write_text(HEAD_HOW.format(base=base_model_path), encoding="utf-8")
    return written + [how]


HEAD_HOW = """# Loading this head adapter

It classifies with a linear head (`adapter/head.safetensors`: weight [labels, hidden], bias [labels]; the
labels in row order are `head.labels` in `adapter/supportbot.json`) on the base model's pooled hidden states,
not by generating text, so Ollama and vLLM cannot serve it. In Python, with supportbot installed:

    from classifier.classify import Classifier
    from classifier.prompts import LabelInfo
    classifier = Classifier.load("{base}", [LabelInfo(name) for name in LABELS])
    classifier.use_adapter("adapter", version=1)
    classifier.classify("My card was charged twice")

Without supportbot: the input is the message as supportbot reads it (for a sentence encoder: the subject, a
newline and the body, at most 256 tokens with the tokenizer's own special tokens; for a decoder: the prompt
in trainer/head.py). Load the base model (AutoModel for a sentence encoder, else AutoModelForCausalLM), then
`peft.PeftModel.from_pretrained(base, "adapter")` (or load `merged/` when exported with --merged), pool the
last hidden state as `head.pooling` says (`mean`: the mean over the tokens, scaled to unit length for an
encoder; `last`: the last token after the cue "\\nCategory:"), and apply the head.
"""
