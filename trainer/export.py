"""Exporting an adapter for other runtimes: a merged model, an Ollama Modelfile, a vLLM command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .classify import read_adapter_meta
from .data import PromptSpec, prompt_messages


def system_prompt_of(adapter_dir: Path) -> str:
    spec = PromptSpec.from_dict(read_adapter_meta(adapter_dir)["prompt"])
    return prompt_messages(spec, "x")[0]["content"]


def export_adapter(adapter_dir: str | Path, base_model_path: str, out_dir: str | Path, *, name: str,
                   merged: bool = False) -> list[Path]:
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
    rank = json.loads((adapter_dir / "adapter_config.json").read_text())["r"]
    system = system_prompt_of(adapter_dir).replace('"""', "'''")
    written = [copied]
    modelfile = out_dir / "Modelfile"
    modelfile.write_text(f'# ollama create {name} -f Modelfile\nFROM {base_model_path}\nADAPTER ./adapter\n'
                         f'PARAMETER temperature 0\nSYSTEM """{system}"""\n', encoding="utf-8")
    vllm = out_dir / "vllm.txt"
    vllm.write_text(f"vllm serve {base_model_path} --enable-lora --max-lora-rank {rank} "
                    f"--lora-modules {name}={copied.resolve()}\n", encoding="utf-8")
    written += [modelfile, vllm]
    if merged:
        from peft import PeftModel

        from .models import load_base_model, load_tokenizer

        # Merging needs full-precision base weights: never merge into a 4-bit base.
        base = load_base_model(base_model_path, quantization="none", dtype="fp32", device="cpu")
        model = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
        target = out_dir / "merged"
        model.save_pretrained(target)
        load_tokenizer(base_model_path).save_pretrained(target)
        written.append(target)
    return written
