"""Label scoring: log-likelihood of each label's completion given the prompt.

The output can only ever be one of the labels. Three things keep it cheap:

1. The system prompt (instructions and label list) is the same for every
   message: its KV cache is computed once per model state and reused.
2. Each message's own tokens run once (pass 1); the next-token distribution at
   the end of the prompt scores every label's first token at no extra cost.
3. Labels are a token trie, searched level by level (greedily first, then with a
   wider beam for the messages that greedy search cannot certify). Each level is
   one forward pass on the cache of the parents: an open prefix feeds its last
   token, and a prefix with at most SPLIT_LABELS labels below it feeds each of
   them to its end, so most labels are finished in the first pass after the
   prompt. Shared prefixes ("card ...") are scored once. A prefix's
   log-likelihood bounds every label below it, so a message stops as soon as its
   best complete label beats every open or pruned prefix, and the result says
   whether the top label is thereby certified. A message greedy search cannot
   certify, with at most EXACT_RIVALS labels whose bound beats its best, gets
   those scored exactly in one pass (certified); with more, the beam. With
   `certify=True`, labels the beam could not rule out are then scored exactly,
   so the argmax is always exact (slower for an unsure model: it may score most
   labels). Labels never finished keep their prefix score as an upper bound
   (`exact` is False), so the reported confidence of the top label is a lower
   bound, never an overstatement.

Batches are formed by prompt length (less padding), and each batch's KV cache lives
in buffers sized for the prompt plus the longest label, appended to in place
(transformers' DynamicCache copies the whole cache at every step).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from .data import PromptSpec, label_ids, prompt_ids

BEAM_WIDTH = 4
SPLIT_LABELS = 3  # a prefix with at most this many labels below it is finished in one pass
EXACT_RIVALS = 8  # an uncertain message with at most this many rival labels gets them scored exactly
BATCH_LENGTH_SPREAD = 1.5  # a batch's longest message part, at most this times its shortest
PASS2_LOGITS_BUDGET = 16_000_000  # floats of logits held at once in pass 2 (~64 MB)


@dataclass
class LabelScores:
    logprobs: list[float]   # per label, in spec order: exact, or an upper bound where exact is False
    exact: list[bool]
    certified: bool         # the top label is provably the most likely one


class TrieNode:
    """A label-token prefix. `label` is set on the leaf after a label's end-of-turn token."""

    __slots__ = ("token", "depth", "children", "label", "labels")

    def __init__(self, token: int | None, depth: int = -1):
        self.token, self.depth = token, depth  # depth: the token's index in its labels' token lists
        self.children: dict[int, "TrieNode"] = {}
        self.label: int | None = None
        self.labels: list[int] = []  # every label below this prefix


def build_trie(label_tokens: list[list[int]]) -> TrieNode:
    root = TrieNode(None)
    for index, tokens in enumerate(label_tokens):
        node = root
        node.labels.append(index)
        for depth, token in enumerate(tokens):
            node = node.children.setdefault(token, TrieNode(token, depth))
            node.labels.append(index)
        node.label = index
    return root


def _cache_pairs(cache):
    return [(layer.keys, layer.values) for layer in cache.layers]


@functools.cache
def _slot_layer_class():
    """Defined on first use, so importing this module does not import transformers."""
    from transformers.cache_utils import DynamicLayer

    class SlotLayer(DynamicLayer):
        """A layer's cache in preallocated buffers, appended to in place.

        DynamicLayer appends with torch.cat, copying the whole cache at every step: on CPU
        that copying took about a third of the label search's time. The buffers are
        sized for the prompt plus the longest label, so appending never reallocates.
        """

        def __init__(self, keys: "torch.Tensor", values: "torch.Tensor", length: int):
            super().__init__()
            self.buffers, self.length = (keys, values), length
            self.device, self.is_initialized = keys.device, True
            self.keys, self.values = keys[:, :, :length], values[:, :, :length]

        def update(self, key_states, value_states, *args, **kwargs):
            end = self.length + key_states.shape[-2]
            keys, values = self.buffers
            if end > keys.shape[-2]:
                raise ValueError(f"label search cache holds {keys.shape[-2]} positions, {end} needed")
            keys[:, :, self.length:end] = key_states
            values[:, :, self.length:end] = value_states
            self.length = end
            self.keys, self.values = keys[:, :, :end], values[:, :, :end]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length

    return SlotLayer


def _make_cache(buffers, length: int, config):
    """A cache over (keys, values) buffers whose first `length` positions hold the context."""
    from transformers import DynamicCache

    layer = _slot_layer_class()
    cache = DynamicCache(config=config)
    cache.layers = [layer(k, v, length) for k, v in buffers]
    return cache


def _allocate(config, batch: int, capacity: int, like):
    """Empty (keys, values) buffers per layer for `batch` rows of `capacity` positions."""
    import torch

    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    shape = (batch, heads, capacity, head_dim)
    return [(torch.empty(shape, dtype=like.dtype, device=like.device),
             torch.empty(shape, dtype=like.dtype, device=like.device)) for _ in range(config.num_hidden_layers)]


def _rows(buffers, rows):
    return [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in buffers]


class LabelScorer:
    """Scores all labels of `spec` for prompts, with the model as it is when called.

    Not thread-safe by itself: `trainer.classify.Classifier` serializes calls and
    model changes. Call `reset()` after the model's weights change (adapter swap).
    """

    def __init__(self, model, tokenizer, spec: PromptSpec, *, use_prefix_cache: bool = True,
                 beam_width: int = BEAM_WIDTH, certify: bool = False):
        import torch

        self.model, self.tokenizer, self.spec = model, tokenizer, spec
        self.device = next(model.parameters()).device
        self.beam_width = beam_width
        self.certify = certify  # also score exactly every label the beam could not rule out
        self.label_tokens = [label_ids(tokenizer, spec, name) for name in spec.names]
        self.trie = build_trie(self.label_tokens)
        self.room = max(len(t) for t in self.label_tokens)  # cache positions a label path can add
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

        prompts = [prompt_ids(self.tokenizer, self.spec, text, subject) for text, subject in items]
        results: list[LabelScores | None] = [None] * len(prompts)
        with torch.inference_mode():
            for rows in self._batches(prompts, batch_size):
                for row, result in zip(rows, self._score_batch([prompts[i] for i in rows])):
                    results[row] = result
        return results

    def _batches(self, prompts: list[list[int]], batch_size: int) -> list[list[int]]:
        """Indices in batches of similar length: every row is padded to its batch's longest prompt.

        In arrival order one long email makes a whole batch pay for its length. Sorted, a batch
        also ends where the message part grows past BATCH_LENGTH_SPREAD times its shortest, so
        the few long emails of a backlog are padded among themselves.
        """
        shared = len(self.prefix_ids)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        batches: list[list[int]] = []
        for i in order:
            own = len(prompts[i]) - shared
            if (not batches or len(batches[-1]) == batch_size
                    or own > BATCH_LENGTH_SPREAD * max(1, len(prompts[batches[-1][0]]) - shared)):
                batches.append([])
            batches[-1].append(i)
        return batches

    def _score_batch(self, prompts: list[list[int]]) -> list[LabelScores]:
        import torch

        n_prefix = len(self.prefix_ids)
        if n_prefix and all(p[:n_prefix] == self.prefix_ids for p in prompts):
            prefix = self._prefix()
            suffixes = [p[n_prefix:] for p in prompts]
        else:
            prefix, n_prefix, suffixes = None, 0, prompts
        batch = len(prompts)
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
        # One buffer per layer holds prefix, prompt and the longest label path: every later step
        # writes into it instead of copying the cache.
        config = self.model.config
        like = self.model.get_input_embeddings().weight  # compute dtype (4-bit layers hold uint8 weights)
        context = _allocate(config, batch, n_prefix + width + self.room, prefix[0][0] if prefix else like)
        for (k, v), (pk, pv) in zip(context, prefix or []):
            k[:, :, :n_prefix], v[:, :, :n_prefix] = pk, pv
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions[:, n_prefix:],
                         cache=_make_cache(context, n_prefix, config), use_cache=True, logits_to_keep=1)
        logits, last = out.logits[:, -1].float(), positions[:, -1]
        # Greedy first: a trained adapter's top label is usually certified by its own path. Only the
        # messages it cannot certify are searched again with the full beam width.
        results = self._search(logits, context, mask, last, width=1)
        # Few labels left that could beat the greedy one: score them exactly, all in one pass
        # (a beam search would take a forward pass per level for them). Many: the beam.
        first = torch.log_softmax(logits, dim=-1)
        rivals = {row: self._rivals(r) for row, r in enumerate(results) if not r.certified}
        wanted = [(row, j, 0, float(first[row, self.label_tokens[j][0]]))
                  for row, labels in rivals.items() if len(labels) <= EXACT_RIVALS for j in labels]
        for (row, j, _, _), value in zip(wanted, self._score_rest(wanted, context, mask, last)):
            results[row].logprobs[j], results[row].exact[j] = value, True
        for row in {row for row, _, _, _ in wanted}:
            results[row].certified = True  # every label whose bound beat the greedy label is now exact
        unsure = [row for row, r in enumerate(results) if not r.certified]
        if unsure and self.beam_width > 1:
            rows = torch.tensor(unsure, device=self.device)
            wider = self._search(logits[rows], _rows(context, rows), mask[rows], last[rows],
                                 width=self.beam_width)
            for row, result in zip(unsure, wider):
                results[row] = result
        return results

    @staticmethod
    def _rivals(result: LabelScores) -> list[int]:
        """Labels not scored exactly whose upper bound beats the best exact score."""
        best = max((x for x, e in zip(result.logprobs, result.exact) if e), default=float("-inf"))
        return [j for j, (x, e) in enumerate(zip(result.logprobs, result.exact)) if not e and x > best]

    def _search(self, last_logits, context, mask, last_position, width: int) -> list[LabelScores]:
        """Beam search over the label trie, then exact scoring of any label the beam could not rule out."""
        import torch

        batch = last_logits.shape[0]
        n_labels = len(self.label_tokens)
        first = torch.log_softmax(last_logits, dim=-1)
        scores = [[None] * n_labels for _ in range(batch)]   # exact log-likelihoods found
        bounds = [[float("-inf")] * n_labels for _ in range(batch)]  # upper bounds for the rest
        # Open prefixes: (row, node, score, cache row holding the prompt and the prefix before node.token)
        frontier = []
        for row in range(batch):
            for token, child in self.trie.children.items():
                self._extend(frontier, scores, row, child, float(first[row, token]), row)
        cache, cache_mask, position = context, mask, last_position
        while frontier:
            frontier = self._prune(frontier, scores, bounds, width)
            if not frontier:
                break
            # Each open prefix feeds its last token. A prefix with few labels below it feeds each of
            # them to its end instead (one row per label, padded on the right and masked): those labels
            # are finished in this pass, where stepping on would cost a forward pass per token.
            items = []  # (frontier index, label finished by this feed or None, tokens fed)
            for index, (_, node, _, _) in enumerate(frontier):
                if len(node.labels) <= SPLIT_LABELS:
                    items.extend((index, j, self.label_tokens[j][node.depth:-1]) for j in node.labels)
                else:
                    items.append((index, None, [node.token]))
            n = max(len(tokens) for _, _, tokens in items)
            parents = [frontier[index][3] for index, _, _ in items]
            if parents != list(range(cache_mask.shape[0])):
                # Gathering copies every open row's whole cache: only when rows finished or branched.
                rows = torch.tensor(parents, device=self.device)
                cache_mask, position, cache = cache_mask[rows], position[rows], _rows(cache, rows)
            # Columns after the last one an open row uses hold the padding of finished labels: no row
            # attends to them, so this pass writes over them (the cache never outgrows prompt + label).
            cache_mask = cache_mask[:, :int(cache_mask.any(dim=0).nonzero().max()) + 1]
            ids = torch.full((len(items), n), self.pad_id, dtype=torch.long, device=self.device)
            own = torch.zeros((len(items), n), dtype=cache_mask.dtype, device=self.device)
            for i, (_, _, tokens) in enumerate(items):
                ids[i, :len(tokens)] = torch.tensor(tokens, device=self.device)
                own[i, :len(tokens)] = 1
            length = cache_mask.shape[1]
            cache_mask = torch.cat([cache_mask, own], dim=1)
            out = self.model(input_ids=ids, attention_mask=cache_mask,
                             position_ids=position[:, None] + 1 + torch.arange(n, device=self.device),
                             cache=_make_cache(cache, length, self.model.config), use_cache=True)
            logits = out.logits.float()
            normalizer = torch.logsumexp(logits, dim=-1)  # log-probabilities without a vocabulary-sized copy
            position = position + 1  # rows that go on fed one real token
            grown = []
            for i, (index, j, tokens) in enumerate(items):
                row, node, score, _ = frontier[index]
                if j is not None:
                    targets = torch.tensor(self.label_tokens[j][node.depth + 1:], device=self.device)
                    steps = torch.arange(len(targets), device=self.device)
                    scores[row][j] = score + float((logits[i, steps, targets] - normalizer[i, steps]).sum())
                    continue
                for token, child in node.children.items():
                    self._extend(grown, scores, row, child, score + float(logits[i, 0, token] - normalizer[i, 0]), i)
            frontier = grown
        # A label whose bound beats the best exact score could still win: score it exactly
        # when asked to certify, else report the top label as not certified.
        wanted = []
        for row in range(batch if self.certify else 0):
            best = max((x for x in scores[row] if x is not None), default=float("-inf"))
            wanted.extend((row, j) for j in range(n_labels) if scores[row][j] is None and bounds[row][j] > best)
        if wanted:
            exact = self._score_rest([(row, j, 0, float(first[row, self.label_tokens[j][0]])) for row, j in wanted],
                                     context, mask, last_position)
            for (row, j), value in zip(wanted, exact):
                scores[row][j] = value
        results = []
        for row in range(batch):
            best = max((x for x in scores[row] if x is not None), default=float("-inf"))
            open_bound = max((b for x, b in zip(scores[row], bounds[row]) if x is None), default=float("-inf"))
            results.append(LabelScores([x if x is not None else b for x, b in zip(scores[row], bounds[row])],
                                       [x is not None for x in scores[row]], best >= open_bound))
        return results

    @staticmethod
    def _extend(frontier, scores, row, node, score, cache_row) -> None:
        if node.label is not None:
            scores[row][node.label] = score  # the end-of-turn token closed a label
        else:
            frontier.append((row, node, score, cache_row))

    def _prune(self, frontier, scores, bounds, width: int):
        """Keep each row's best `width` prefixes; stop a row once its best label beats every open prefix."""
        by_row: dict[int, list] = {}
        for entry in frontier:
            by_row.setdefault(entry[0], []).append(entry)
        kept = []
        for row, entries in by_row.items():
            entries.sort(key=lambda e: -e[2])
            best = max((x for x in scores[row] if x is not None), default=float("-inf"))
            finished = best >= entries[0][2]
            for position, (_, node, score, _) in enumerate(entries):
                if finished or position >= width:
                    for j in node.labels:  # a prefix's score bounds every label below it
                        bounds[row][j] = max(bounds[row][j], score)
            if not finished:
                kept.extend(entries[:width])
        return kept

    def _score_rest(self, wanted, context, mask, last_position) -> list[float]:
        """Exact log-likelihoods of label completions, each in one pass from a point on its path.

        `wanted`: (cache row, label, depth, score) where the label's tokens up to `depth` are
        scored (`score`) and all but the last of them are in the cache row. The remaining tokens
        run at once, padded on the right; the pads come after every real token, so no real
        token sees them.
        """
        import torch

        if not wanted:
            return []
        longest = max(len(self.label_tokens[j]) - 1 - depth for _, j, depth, _ in wanted)
        vocab = self.model.config.vocab_size
        chunk = max(1, PASS2_LOGITS_BUDGET // max(1, longest * vocab))
        results = []
        for start in range(0, len(wanted), chunk):
            part = wanted[start:start + chunk]
            rows = torch.tensor([r for r, _, _, _ in part], device=self.device)
            n = len(part)
            ids = torch.full((n, longest), self.pad_id, dtype=torch.long, device=self.device)
            own = torch.zeros((n, longest), dtype=torch.long, device=self.device)
            for i, (_, j, depth, _) in enumerate(part):
                tokens = self.label_tokens[j][depth:-1]  # inputs: from the prefix's last token to the end
                ids[i, :len(tokens)] = torch.tensor(tokens, device=self.device)
                own[i, :len(tokens)] = 1
            attention = torch.cat([mask[rows], own], dim=1)
            positions = last_position[rows, None] + 1 + torch.arange(longest, device=self.device)
            cache = _make_cache(_rows(context, rows), mask.shape[1], self.model.config)
            out = self.model(input_ids=ids, attention_mask=attention, position_ids=positions,
                             cache=cache, use_cache=False)
            logprobs = torch.log_softmax(out.logits.float(), dim=-1)
            for i, (_, j, depth, score) in enumerate(part):
                targets = torch.tensor(self.label_tokens[j][depth + 1:], device=self.device)
                rest = logprobs[i, torch.arange(len(targets), device=self.device), targets].sum()
                results.append(score + float(rest))
        return results


def score_reference(model, tokenizer, spec: PromptSpec, text: str, subject: str | None = None) -> list[float]:
    """Each label's log-likelihood from one plain full forward pass per label (slow; for tests and checks)."""
    import torch

    prompt = prompt_ids(tokenizer, spec, text, subject)
    device = next(model.parameters()).device
    result = []
    with torch.inference_mode():
        for name in spec.names:
            completion = label_ids(tokenizer, spec, name)
            ids = torch.tensor([prompt + completion], device=device)
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
            positions = torch.arange(len(prompt) - 1, len(prompt) + len(completion) - 1, device=device)
            result.append(float(logprobs[positions, torch.tensor(completion, device=device)].sum()))
    return result
