"""What an adapter folder says about itself, and the scorer that serves it.

`supportbot.json` records the method: `head` (trainer.head) or `scoring`
(trainer.scoring; adapters written before the field existed are scoring ones).
Both kinds are peft LoRA adapters of the same base model, so one loaded model
serves either, swapped in place.
"""

from __future__ import annotations

from pathlib import Path

from .data import PromptSpec


def adapter_method(meta: dict) -> str:
    return meta.get("method") or "scoring"


def make_scorer(model, tokenizer, meta: dict, folder: str | Path):
    """A scorer (`spec`, `score(items, batch_size)`) for the adapter in `folder`, active on `model`."""
    spec = PromptSpec.from_dict(meta["prompt"])
    if adapter_method(meta) == "head":
        from .head import HeadScorer, load_head

        info = meta["head"]
        head = load_head(folder, next(model.parameters()).device)
        return HeadScorer(model, tokenizer, spec, head, info["pooling"], int(info["max_length"]))
    from .scoring import LabelScorer

    return LabelScorer(model, tokenizer, spec)
