"""Label scoring: log-likelihood of each label's completion given the prompt.

The output can only ever be one of the labels. Three things keep it cheap:

1. The system prompt (instructions and label list) is the same for every
   message: its KV cache is computed once per model state and reused.
2. Each message's own tokens run once (pass 1); the next-token distribution at
   the end of the prompt scores every label's first token at no extra cost.
3. Only labels whose first token ranks among the best are scored to the end
   (pass 2, reusing the pass-1 cache). A label's full log-likelihood can never
   exceed its first token's, so when the best fully scored label beats every
   first-token score left out, the argmax is exact; otherwise more first tokens
   are added. Labels left out keep their first-token score as an upper bound
   (`exact` is False for them), which makes the reported confidence of the top
   label a lower bound, never an overstatement.
"""

from __future__ import annotations

from dataclasses import dataclass

from .data import PromptSpec, label_ids, prompt_ids

FIRST_TOKENS_START = 4
PASS2_LOGITS_BUDGET = 16_000_000  # floats of logits held at once in pass 2 (~64 MB)


@dataclass
class LabelScores:
    logprobs: list[float]   # per label, in spec order: exact, or an upper bound where exact is False
    exact: list[bool]


def _cache_pairs(cache):
    return [(layer.keys, layer.values) for layer in cache.layers]


def _make_cache(pairs, config):
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=pairs, config=config)


class LabelScorer:
    """Scores all labels of `spec` for prompts, with the model as it is when called.

    Not thread-safe by itself: `trainer.classify.Classifier` serializes calls and
    model changes. Call `reset()` after the model's weights change (adapter swap).
    """

    def __init__(self, model, tokenizer, spec: PromptSpec, *, use_prefix_cache: bool = True,
                 first_tokens: int = FIRST_TOKENS_START):
        import torch

        self.model, self.tokenizer, self.spec = model, tokenizer, spec
        self.device = next(model.parameters()).device
        self.first_tokens = first_tokens
        self.label_tokens = [label_ids(tokenizer, name) for name in spec.names]
        self.first_ids = torch.tensor([t[0] for t in self.label_tokens], device=self.device)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.prefix_ids = self._shared_prefix() if use_prefix_cache else []
        self._prefix_pairs = None

    def _shared_prefix(self) -> list[int]:
        """Tokens every prompt of this spec starts with (system turn and user header)."""
        a = prompt_ids(self.tokenizer, self.spec, "a")
        b = prompt_ids(self.tokenizer, self.spec, "Z 9")
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return a[:n]

    def reset(self) -> None:
        """Forget the system-prompt cache (the weights changed)."""
        self._prefix_pairs = None

    def _prefix(self):
        import torch

        if self._prefix_pairs is None and self.prefix_ids:
            ids = torch.tensor([self.prefix_ids], device=self.device)
            out = self.model(input_ids=ids, use_cache=True)
            self._prefix_pairs = _cache_pairs(out.cache)
        return self._prefix_pairs

    def score(self, items: list[tuple[str, str | None]], batch_size: int = 16) -> list[LabelScores]:
        import torch

        results: list[LabelScores] = []
        with torch.inference_mode():
            for start in range(0, len(items), batch_size):
                results.extend(self._score_batch(items[start:start + batch_size]))
        return results

    def _score_batch(self, items) -> list[LabelScores]:
        import torch

        prompts = [prompt_ids(self.tokenizer, self.spec, text, subject) for text, subject in items]
        n_prefix = len(self.prefix_ids)
        if n_prefix and all(p[:n_prefix] == self.prefix_ids for p in prompts):
            prefix = self._prefix()
            suffixes = [p[n_prefix:] for p in prompts]
        else:
            prefix, n_prefix, suffixes = None, 0, prompts
        batch = len(items)
        width = max(len(s) for s in suffixes)
        # Left padding puts every prompt's last token in the last column; the holes
        # between the shared prefix and each suffix are masked out.
        input_ids = torch.full((batch, width), self.pad_id, dtype=torch.long, device=self.device)
        mask = torch.zeros((batch, n_prefix + width), dtype=torch.long, device=self.device)
        mask[:, :n_prefix] = 1
        for row, suffix in enumerate(suffixes):
            input_ids[row, width - len(suffix):] = torch.tensor(suffix, device=self.device)
            mask[row, n_prefix + width - len(suffix):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = None
        if prefix is not None:
            cache = _make_cache([(k.expand(batch, -1, -1, -1).contiguous(), v.expand(batch, -1, -1, -1).contiguous())
                                 for k, v in prefix], self.model.config)
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions[:, n_prefix:],
                         cache=cache, use_cache=True, logits_to_keep=1)
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)[:, self.first_ids]  # (batch, n_labels)
        context = _cache_pairs(out.cache)
        last_position = positions[:, -1]

        n_labels = len(self.label_tokens)
        scores = first.clone()
        exact = torch.zeros_like(first, dtype=torch.bool)
        # Rank distinct first tokens per row; grow the candidate set until the argmax is certified.
        k = self.first_tokens
        pending = list(range(batch))
        while pending:
            wanted = []
            for row in pending:
                order = torch.argsort(first[row], descending=True)
                chosen_first = []
                for j in order.tolist():
                    token = int(self.first_ids[j])
                    if token not in chosen_first:
                        if len(chosen_first) == k:
                            break
                        chosen_first.append(token)
                wanted.extend((row, j) for j in range(n_labels)
                              if not exact[row, j] and int(self.first_ids[j]) in chosen_first)
            self._score_rest(wanted, context, mask, last_position, first, scores, exact)
            still = []
            for row in pending:
                best = scores[row][exact[row]].max() if exact[row].any() else None
                left_out = first[row][~exact[row]]
                if best is None or (left_out.numel() and left_out.max() > best):
                    still.append(row)
            if k >= n_labels:
                break
            pending, k = still, k * 2
        return [LabelScores(scores[row].tolist(), exact[row].tolist()) for row in range(batch)]

    def _score_rest(self, wanted, context, mask, last_position, first, scores, exact) -> None:
        """Pass 2: the rest of each wanted (row, label) completion after its first token."""
        import torch

        if not wanted:
            return
        longest = max(len(self.label_tokens[j]) for _, j in wanted) - 1
        vocab = self.model.config.vocab_size
        chunk = max(1, PASS2_LOGITS_BUDGET // max(1, longest * vocab))
        for start in range(0, len(wanted), chunk):
            part = wanted[start:start + chunk]
            rows = torch.tensor([r for r, _ in part], device=self.device)
            n = len(part)
            ids = torch.full((n, longest), self.pad_id, dtype=torch.long, device=self.device)
            own = torch.zeros((n, longest), dtype=torch.long, device=self.device)
            for i, (_, j) in enumerate(part):
                tokens = self.label_tokens[j][:-1]  # inputs: all but the last token
                ids[i, :len(tokens)] = torch.tensor(tokens, device=self.device)
                own[i, :len(tokens)] = 1
            attention = torch.cat([mask[rows], own], dim=1)
            positions = last_position[rows, None] + 1 + torch.arange(longest, device=self.device)
            cache = _make_cache([(k[rows], v[rows]) for k, v in context], self.model.config)
            out = self.model(input_ids=ids, attention_mask=attention, position_ids=positions,
                             cache=cache, use_cache=False)
            logprobs = torch.log_softmax(out.logits.float(), dim=-1)
            for i, (row, j) in enumerate(part):
                targets = torch.tensor(self.label_tokens[j][1:], device=self.device)
                rest = logprobs[i, torch.arange(len(targets), device=self.device), targets].sum()
                scores[row, j] = first[row, j] + rest
                exact[row, j] = True


def score_reference(model, tokenizer, spec: PromptSpec, text: str, subject: str | None = None) -> list[float]:
    """Each label's log-likelihood from one plain full forward pass per label (slow; for tests and checks)."""
    import torch

    prompt = prompt_ids(tokenizer, spec, text, subject)
    device = next(model.parameters()).device
    result = []
    with torch.inference_mode():
        for name in spec.names:
            completion = label_ids(tokenizer, name)
            ids = torch.tensor([prompt + completion], device=device)
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
            positions = torch.arange(len(prompt) - 1, len(prompt) + len(completion) - 1, device=device)
            result.append(float(logprobs[positions, torch.tensor(completion, device=device)].sum()))
    return result
