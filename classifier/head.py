"""A head adapter at inference: the tokens it reads, the pooled features, the head's weights and its scorer.

How a head adapter is trained is `trainer.methods.head`; this is what any process needs to answer with one.
"""

from __future__ import annotations

from pathlib import Path

from .prompts import PromptSpec, user_prompt
from .scoring import LabelScores

HEAD_FILE = "head.safetensors"

CUE = "\nCategory:"  # the last token then summarizes the message for the head

ENCODER_MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained on at most 256 tokens; all-mpnet-base-v2 reads 384


def head_prompt_ids(
    tokenizer, spec: PromptSpec, text: str, subject: str | None, max_length: int, encoder: bool = False
) -> list[int]:
    """The tokens the head reads: the message and the cue; a long one loses its middle, never the cue.

    For an encoder: the message with the encoder's own special tokens, and no cue (every token is pooled).
    """
    if encoder:
        from classifier.embeddings import message_text

        return list(
            tokenizer(
                message_text(text, subject)[: spec.max_body_chars],
                truncation=True,
                max_length=min(max_length, ENCODER_MAX_TOKENS),
            )["input_ids"]
        )
    ids = list(tokenizer(user_prompt(text, subject, spec.max_body_chars) + CUE)["input_ids"])
    if len(ids) > max_length:
        head = max_length * 2 // 3
        ids = ids[:head] + ids[len(ids) - (max_length - head) :]
    return ids


def body(model):
    """The decoder stack (embeddings, layers, final norm) of a causal LM, or the encoder itself, under a peft
    wrapper or not.

    LoRA layers live inside its modules, so it runs with the active adapter.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base if is_encoder_model(base) else base.get_decoder()


def is_encoder_model(model) -> bool:
    from classifier.models import is_encoder

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return is_encoder(base.config)


def pad_batch(rows: list[list[int]], pad_id: int, device):
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):  # right padding: the last real token is at mask.sum() - 1
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids.to(device), mask.to(device)


def pooled(model, ids, mask, pooling: str):
    """One vector per row (float32): the last real token's hidden state, or the mean over real tokens
    (scaled to unit length for an encoder, as its sentence embeddings are)."""
    import torch

    encoder = is_encoder_model(model)
    kwargs = {} if encoder else {"use_cache": False}  # an encoder keeps no cache
    hidden = body(model)(input_ids=ids, attention_mask=mask, **kwargs).last_hidden_state.float()
    if pooling == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        return torch.nn.functional.normalize(mean, dim=-1) if encoder else mean
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), mask.sum(1) - 1]


def features(model, rows: list[list[int]], pad_id: int, pooling: str, batch_size: int):
    import torch

    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths together: less padding
    out = [None] * len(rows)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            vectors = pooled(model, *pad_batch([rows[i] for i in chunk], pad_id, device), pooling)
            for i, vector in zip(chunk, vectors):
                out[i] = vector
    return torch.stack(out)


def save_head(head, folder: Path) -> None:
    from safetensors.torch import save_file

    save_file(
        {
            "weight": head.weight.detach().float().cpu().contiguous(),
            "bias": head.bias.detach().float().cpu().contiguous(),
        },
        str(folder / HEAD_FILE),
    )


def load_head(folder: str | Path, device):
    import torch
    from safetensors.torch import load_file

    tensors = load_file(str(Path(folder) / HEAD_FILE))
    head = torch.nn.Linear(tensors["weight"].shape[1], tensors["weight"].shape[0])
    with torch.no_grad():
        head.weight.copy_(tensors["weight"])
        head.bias.copy_(tensors["bias"])
    return head.to(device).eval()


class HeadScorer:
    """Scores messages with a head adapter: a log-probability for every label the head was trained on.

    Same interface as `trainer.scoring.LabelScorer` (`spec`, `score`), so serving and evaluation
    use either. Every score is exact, so every top label is certified.
    """

    def __init__(self, model, tokenizer, spec: PromptSpec, head, pooling: str, max_length: int):
        self.model, self.tokenizer, self.spec, self.head = model, tokenizer, spec, head
        self.pooling, self.max_length = pooling, max_length
        self.encoder = is_encoder_model(model)

    def score(self, items: list[tuple[str, str | None]], batch_size: int = 16) -> list[LabelScores]:
        import torch

        rows = [
            head_prompt_ids(self.tokenizer, self.spec, text, subject, self.max_length, self.encoder)
            for text, subject in items
        ]
        if not rows:
            return []
        with torch.no_grad():
            x = features(self.model, rows, self.tokenizer.pad_token_id, self.pooling, batch_size)
            logprobs = torch.log_softmax(self.head(x.to(self.head.weight.device)), dim=-1).tolist()
        n = len(self.spec.names)
        return [LabelScores(row, [True] * n, True) for row in logprobs]
