"""What an adapter folder says about itself, and the scorer that serves it.

`supportbot.json` records the method: `head` (trainer.head) or `scoring`
(trainer.scoring; adapters written before the field existed are scoring ones).
Both kinds are peft LoRA adapters of the same base model, so one loaded model
serves either, swapped in place. `check_adapter` reads a folder through before
it is loaded into a serving model, so a cut, garbled or missing file is found
without touching the model that answers now.
"""

from __future__ import annotations

import json
from pathlib import Path

from classifier.prompts import PromptSpec

WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


class BrokenAdapter(ValueError):
    """An adapter folder that cannot serve: a file missing, cut short, garbled or of the wrong shape."""


def adapter_method(meta: dict) -> str:
    return meta.get("method") or "scoring"


def check_adapter(folder: str | Path) -> dict:
    """Read the adapter in `folder` through (metadata, LoRA weights, head) and return its metadata.

    Raises BrokenAdapter naming the first problem."""
    folder = Path(folder)
    meta = _json_file(folder / "supportbot.json")
    _json_file(folder / "adapter_config.json")
    if not isinstance(meta, dict) or not isinstance(meta.get("prompt"), dict):
        raise BrokenAdapter("supportbot.json has no prompt")
    try:
        spec = PromptSpec.from_dict(meta["prompt"])
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise BrokenAdapter(f"supportbot.json has a bad prompt ({exc!r})") from exc
    weights = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if weights is None:
        raise BrokenAdapter("the LoRA weights are missing")
    if weights.suffix == ".safetensors":
        _tensors(weights)
    if adapter_method(meta) == "head":
        from classifier.head import HEAD_FILE

        head = _tensors(folder / HEAD_FILE)
        rows = len(spec.names)
        weight, bias = head.get("weight"), head.get("bias")
        if (
            weight is None
            or bias is None
            or weight.dim() != 2
            or tuple(bias.shape) != (weight.shape[0],)
            or weight.shape[0] != rows
        ):
            raise BrokenAdapter(
                f"{HEAD_FILE} does not fit its {rows} labels (weight {None if weight is None else tuple(weight.shape)})"
            )
    return meta


def _json_file(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise BrokenAdapter(f"{path.name} is missing") from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BrokenAdapter(f"{path.name} cannot be read ({exc})") from exc


def _tensors(path: Path) -> dict:
    """Every tensor in a safetensors file (reading them all finds a file cut short)."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise BrokenAdapter(f"{path.name} is missing")
    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for every kind of damage
        raise BrokenAdapter(f"{path.name} cannot be read ({exc})") from exc


def make_scorer(model, tokenizer, meta: dict, folder: str | Path):
    """A scorer (`spec`, `score(items, batch_size)`) for the adapter in `folder`, active on `model`."""
    spec = PromptSpec.from_dict(meta["prompt"])
    if adapter_method(meta) == "head":
        from classifier.head import HeadScorer, load_head

        info = meta["head"]
        head = load_head(folder, next(model.parameters()).device)
        hidden = getattr(model.config, "hidden_size", head.in_features)
        if (head.out_features, head.in_features) != (len(spec.names), hidden):
            raise BrokenAdapter(
                f"the head is [{head.out_features}, {head.in_features}]; this model needs [{len(spec.names)}, {hidden}]"
            )
        return HeadScorer(model, tokenizer, spec, head, info["pooling"], int(info["max_length"]))
    from .scoring import LabelScorer

    return LabelScorer(model, tokenizer, spec)
