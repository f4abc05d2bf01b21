"""Label scoring: log-likelihood of each label's completion given the prompt.

The output can only ever be one of the labels. Three things keep it cheap:

1. The system prompt (instructions and label list) is the same for every
   message: its KV cache is computed once per model state and reused.
2. Each message's own tokens run once (pass 1); the next-token distribution at
   the end of the prompt scores every label's first token at no extra cost.
3. Labels are a token trie, searched level by level (greedily first, then with a
   wider beam for the messages that greedy search cannot certify). An open prefix
   feeds its last token, one forward pass per level on the cache of the parents; a
   prefix with at most SPLIT_LABELS labels below it has each of them fed to its end
   at once instead (passes grouped by length, see `_length_groups`), so most labels
   are finished in the first pass after the prompt. Shared prefixes ("card ...") are
   scored once. A prefix's log-likelihood bounds every label below it, so a message
   stops as soon as its best complete label beats every open or pruned prefix, and
   the result says whether the top label is thereby certified. A message greedy
   search cannot certify, with at most EXACT_RIVALS labels whose bound beats its
   best, gets those scored exactly in one pass (certified); with more, the beam.
   With `certify=True`, labels the beam could not rule out are then scored exactly,
   so the argmax is always exact (slower for an unsure model: it may score most
   labels). Labels never finished keep their prefix score as an upper bound
   (`exact` is False), so the reported confidence of the top label is a lower
   bound, never an overstatement.

Prompts run in batches of similar length (less padding). The label search runs over
a group of batches at once (as many as fit in GROUP_CACHE_BYTES of cache): its passes
carry few tokens, and every pass reads all the weights however few it carries, so
per batch it had cost more than the prompts. The cache lives in buffers sized for
the prompt plus the longest label, appended to in place (transformers' DynamicCache
copies the whole cache at every step). Output logits are computed only at the
positions whose tokens are scored.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from classifier.prompts import PromptSpec, label_ids, prompt_ids

from .models import decoder_and_head

BEAM_WIDTH = 4
SPLIT_LABELS = 3  # a prefix with at most this many labels below it is finished in one pass
EXACT_RIVALS = 8  # an uncertain message with at most this many rival labels gets them scored exactly
BATCH_LENGTH_SPREAD = 1.5  # a batch's longest message part, at most this times its shortest
LOGITS_BUDGET = 16_000_000  # floats of output logits held at once (~64 MB)
PASS_COST_TOKENS = 32  # a forward pass reads every weight: on CPU (135M model) that costs about 32 tokens
GROUP_CACHE_BYTES = 512 * 2**20  # prompt caches of one search group (the search's row copies add about as much)


@dataclass
class LabelScores:
    logprobs: list[float]  # per label, in spec order: exact, or an upper bound where exact is False
    exact: list[bool]
    certified: bool  # the top label is provably the most likely one


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

        def __init__(self, keys, values, length: int):  # torch tensors (torch is imported where needed)
            super().__init__()
            self.buffers, self.length = (keys, values), length
            self.device, self.is_initialized = keys.device, True
            self.keys, self.values = keys[:, :, :length], values[:, :, :length]

        def update(self, key_states, value_states, *args, **kwargs):
            end = self.length + key_states.shape[-2]
            keys, values = self.buffers
            if end > keys.shape[-2]:
                raise ValueError(f"label search cache holds {keys.shape[-2]} positions, {end} needed")
            keys[:, :, self.length : end] = key_states
            values[:, :, self.length : end] = value_states
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


def _kv_shape(config) -> tuple[int, int]:
    """Key/value heads and head size of one layer."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return heads, getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _position_bytes(config, like) -> int:
    """Bytes of keys and values that one cached position takes over all layers."""
    heads, head_dim = _kv_shape(config)
    return config.num_hidden_layers * 2 * heads * head_dim * like.element_size()


def _allocate(config, batch: int, capacity: int, like):
    """Empty (keys, values) buffers per layer for `batch` rows of `capacity` positions."""
    import torch

    heads, head_dim = _kv_shape(config)
    shape = (batch, heads, capacity, head_dim)
    return [
        (
            torch.empty(shape, dtype=like.dtype, device=like.device),
            torch.empty(shape, dtype=like.dtype, device=like.device),
        )
        for _ in range(config.num_hidden_layers)
    ]


def _rows(buffers, rows):
    return [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in buffers]


class LabelScorer:
    """Scores all labels of `spec` for prompts, with the model as it is when called.

    Not thread-safe by itself: `trainer.classify.Classifier` serializes calls and
    model changes. The system-prompt cache holds the weights of the first call: after the
    weights change, use a new scorer (`Classifier` makes one at every adapter swap) or `reset()`.
    """

    def __init__(
        self,
        model,
        tokenizer,
        spec: PromptSpec,
        *,
        use_prefix_cache: bool = True,
        beam_width: int = BEAM_WIDTH,
        certify: bool = False,
    ):

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
        n_prefix = len(self.prefix_ids)
        if not (n_prefix and all(p[:n_prefix] == self.prefix_ids for p in prompts)):
            n_prefix = 0
        results: list[LabelScores | None] = [None] * len(prompts)
        with torch.inference_mode():
            for group in self._groups(self._batches(prompts, batch_size), prompts, n_prefix):
                scored = self._score_group([[prompts[i] for i in batch] for batch in group], n_prefix)
                for row, result in zip((i for batch in group for i in batch), scored):
                    results[row] = result
        return results

    def _groups(self, batches: list[list[int]], prompts: list[list[int]], n_prefix: int) -> list[list[list[int]]]:
        """Consecutive batches whose label search runs as one, within GROUP_CACHE_BYTES of cache.

        Prompts run batch by batch (padding stays within a batch), but the label search runs
        over the whole group: its passes mostly carry a few rows, and a pass costs a read of
        all the weights however few rows it carries, so sharing them across batches saves
        most of that cost.
        """
        per_position = _position_bytes(self.model.config, self.model.get_input_embeddings().weight)
        groups: list[list[list[int]]] = []
        rows = width = 0
        for batch in batches:
            longest = max(len(prompts[i]) for i in batch) - n_prefix
            wider = max(width, longest)
            if groups and (rows + len(batch)) * (n_prefix + wider + self.room) * per_position <= GROUP_CACHE_BYTES:
                groups[-1].append(batch)
                rows, width = rows + len(batch), wider
            else:
                groups.append([batch])
                rows, width = len(batch), longest
        return groups

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
            if (
                not batches
                or len(batches[-1]) == batch_size
                or own > BATCH_LENGTH_SPREAD * max(1, len(prompts[batches[-1][0]]) - shared)
            ):
                batches.append([])
            batches[-1].append(i)
        return batches

    def _score_group(self, batches: list[list[list[int]]], n_prefix: int) -> list[LabelScores]:
        import torch

        prefix = self._prefix() if n_prefix else None
        suffixes = [[p[n_prefix:] for p in batch] for batch in batches]
        widths = [max(len(s) for s in batch) for batch in suffixes]
        width, total = max(widths), sum(len(batch) for batch in batches)
        # One buffer per layer holds, for every row of the group, the prefix, the prompt and the
        # longest label path: every later step writes into it instead of copying the cache.
        # Each batch's prompts end in the last prompt column (left padding); the columns
        # between the prefix and a narrower batch's prompts are a masked hole.
        config = self.model.config
        like = self.model.get_input_embeddings().weight  # compute dtype (4-bit layers hold uint8 weights)
        context = _allocate(config, total, n_prefix + width + self.room, prefix[0][0] if prefix else like)
        for (k, v), (pk, pv) in zip(context, prefix or []):
            k[:, :, :n_prefix], v[:, :, :n_prefix] = pk, pv
        mask = torch.zeros((total, n_prefix + width), dtype=torch.long, device=self.device)
        mask[:, :n_prefix] = 1
        logits, start = [], 0
        for batch, w in zip(suffixes, widths):
            end, hole = start + len(batch), n_prefix + width - w
            input_ids = torch.full((len(batch), w), self.pad_id, dtype=torch.long, device=self.device)
            for row, suffix in enumerate(batch):
                input_ids[row, w - len(suffix) :] = torch.tensor(suffix, device=self.device)
                mask[start + row, n_prefix + width - len(suffix) :] = 1
            for k, v in context:
                # Masked, but never uninitialised memory: a NaN there would poison the attention.
                k[start:end, :, n_prefix:hole], v[start:end, :, n_prefix:hole] = 0, 0
            positions = (mask[start:end].cumsum(-1) - 1).clamp(min=0)
            out = self.model(
                input_ids=input_ids,
                attention_mask=mask[start:end],
                position_ids=positions[:, hole:],
                cache=_make_cache([(k[start:end], v[start:end]) for k, v in context], hole, config),
                use_cache=True,
                logits_to_keep=1,
            )
            logits.append(out.logits[:, -1].float())
            start = end
        logits, last = torch.cat(logits), (mask.cumsum(-1) - 1)[:, -1]
        # Greedy first: a trained adapter's top label is usually certified by its own path. Only the
        # messages it cannot certify are searched again with the full beam width.
        results = self._search(logits, context, mask, last, width=1)
        # Few labels left that could beat the greedy one: score them exactly, all in one pass
        # (a beam search would take a forward pass per level for them). Many: the beam.
        first = torch.log_softmax(logits, dim=-1)
        rivals = {row: self._rivals(r) for row, r in enumerate(results) if not r.certified}
        wanted = [
            (row, j, 0, float(first[row, self.label_tokens[j][0]]))
            for row, labels in rivals.items()
            if len(labels) <= EXACT_RIVALS
            for j in labels
        ]
        for (row, j, _, _), value in zip(wanted, self._score_rest(wanted, context, mask, last)):
            results[row].logprobs[j], results[row].exact[j] = value, True
        for row in {row for row, _, _, _ in wanted}:
            results[row].certified = True  # every label whose bound beat the greedy label is now exact
        unsure = [row for row, r in enumerate(results) if not r.certified]
        if unsure and self.beam_width > 1:
            rows = torch.tensor(unsure, device=self.device)
            wider = self._search(logits[rows], _rows(context, rows), mask[rows], last[rows], width=self.beam_width)
            for row, result in zip(unsure, wider):
                results[row] = result
        return results

    @staticmethod
    def _rivals(result: LabelScores) -> list[int]:
        """Labels not scored exactly whose upper bound beats the best exact score."""
        best = max((x for x, e in zip(result.logprobs, result.exact) if e), default=float("-inf"))
        return [j for j, (x, e) in enumerate(zip(result.logprobs, result.exact)) if not e and x > best]

    def _search(self, last_logits, context, mask, last_position, width: int) -> list[LabelScores]:
        """Beam search over the label trie; with `certify`, then exact scoring of any label the beam could not
        rule out. Without it (serving) such labels keep their upper bound and the top label is not certified."""
        import torch

        batch = last_logits.shape[0]
        n_labels = len(self.label_tokens)
        first = torch.log_softmax(last_logits, dim=-1)
        scores = [[None] * n_labels for _ in range(batch)]  # exact log-likelihoods found
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
            # A prefix with few labels below it has each of them fed to its end, all in passes of their
            # own (their cache is not needed afterwards, so they can be grouped by length): those labels
            # are finished now, where stepping on would cost a forward pass per token. Every other open
            # prefix feeds its last token, in one pass whose cache the next level goes on from.
            finishing, owners = [], []
            for row, node, score, cache_row in frontier:
                if len(node.labels) <= SPLIT_LABELS:
                    finishing.extend((cache_row, j, node.depth, score) for j in node.labels)
                    owners.extend((row, j) for j in node.labels)
            for (row, j), value in zip(owners, self._score_rest(finishing, cache, cache_mask, position)):
                scores[row][j] = value
            frontier = [entry for entry in frontier if len(entry[1].labels) > SPLIT_LABELS]
            if not frontier:
                break
            parents = [cache_row for _, _, _, cache_row in frontier]
            if parents != list(range(cache_mask.shape[0])):
                # Gathering copies every open row's whole cache: only when rows finished or branched.
                rows = torch.tensor(parents, device=self.device)
                cache_mask, position, cache = cache_mask[rows], position[rows], _rows(cache, rows)
            ids = torch.tensor([[node.token] for _, node, _, _ in frontier], device=self.device)
            length = cache_mask.shape[1]
            cache_mask = torch.cat([cache_mask, torch.ones_like(cache_mask[:, :1])], dim=1)
            position = position + 1
            out = self.model(
                input_ids=ids,
                attention_mask=cache_mask,
                position_ids=position[:, None],
                cache=_make_cache(cache, length, self.model.config),
                use_cache=True,
            )
            logprobs = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
            grown = []
            for i, (row, node, score, _) in enumerate(frontier):
                for token, child in node.children.items():
                    self._extend(grown, scores, row, child, score + float(logprobs[i, token]), i)
            frontier = grown
        # A label whose bound beats the best exact score could still win: score it exactly
        # when asked to certify, else report the top label as not certified.
        wanted = []
        for row in range(batch if self.certify else 0):
            best = max((x for x in scores[row] if x is not None), default=float("-inf"))
            wanted.extend((row, j) for j in range(n_labels) if scores[row][j] is None and bounds[row][j] > best)
        if wanted:
            exact = self._score_rest(
                [(row, j, 0, float(first[row, self.label_tokens[j][0]])) for row, j in wanted],
                context,
                mask,
                last_position,
            )
            for (row, j), value in zip(wanted, exact):
                scores[row][j] = value
        results = []
        for row in range(batch):
            best = max((x for x in scores[row] if x is not None), default=float("-inf"))
            open_bound = max((b for x, b in zip(scores[row], bounds[row]) if x is None), default=float("-inf"))
            results.append(
                LabelScores(
                    [x if x is not None else b for x, b in zip(scores[row], bounds[row])],
                    [x is not None for x in scores[row]],
                    best >= open_bound,
                )
            )
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
        token sees them. Completions are grouped by length (see `_length_groups`) so that
        short ones are not padded to the longest.
        """
        import torch

        results = [0.0] * len(wanted)
        remaining = [len(self.label_tokens[j]) - 1 - depth for _, j, depth, _ in wanted]
        row_bytes = _position_bytes(self.model.config, context[0][0]) * context[0][0].shape[2]
        max_rows = max(1, GROUP_CACHE_BYTES // row_bytes)  # each row copies its whole cache
        for part in _length_groups(remaining, max_rows):
            rows = torch.tensor([wanted[i][0] for i in part], device=self.device)
            longest = max(remaining[i] for i in part)
            ids = torch.full((len(part), longest), self.pad_id, dtype=torch.long, device=self.device)
            own = torch.zeros((len(part), longest), dtype=torch.long, device=self.device)
            targets = []
            for row, i in enumerate(part):
                _, j, depth, _ = wanted[i]
                ids[row, : remaining[i]] = torch.tensor(self.label_tokens[j][depth:-1], device=self.device)
                own[row, : remaining[i]] = 1
                targets.extend(self.label_tokens[j][depth + 1 :])
            token_logprobs = self._token_logprobs(
                own.bool(),
                torch.tensor(targets, device=self.device),
                input_ids=ids,
                attention_mask=torch.cat([mask[rows], own], dim=1),
                position_ids=last_position[rows, None] + 1 + torch.arange(longest, device=self.device),
                cache=_make_cache(_rows(context, rows), mask.shape[1], self.model.config),
                use_cache=False,
            )
            owner = torch.repeat_interleave(torch.arange(len(part), device=self.device), own.sum(dim=1))
            sums = torch.zeros(len(part), dtype=token_logprobs.dtype, device=self.device).index_add_(
                0, owner, token_logprobs
            )
            for row, i in enumerate(part):
                results[i] = wanted[i][3] + float(sums[row])
        return results

    def _token_logprobs(self, selected, targets, **inputs):
        """log p(target) at the `selected` positions of a forward pass on `inputs`, in order.

        The output head runs on those positions only, a few hundred at a time: a pass over
        right-padded label completions would otherwise compute vocabulary-sized logits for
        every pad. Models that change their logits after the head (soft-capping, scaling)
        take the plain forward pass.
        """
        import torch

        parts = decoder_and_head(self.model)
        if parts is None:
            logits = self.model(**inputs).logits[selected].float()
            return logits.gather(1, targets[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)
        decoder, head = parts
        hidden = decoder(**inputs).last_hidden_state[selected]
        chunk = max(1, LOGITS_BUDGET // self.model.config.vocab_size)
        pieces = []
        for start in range(0, len(targets), chunk):
            logits = head(hidden[start : start + chunk]).float()
            picked = logits.gather(1, targets[start : start + chunk, None])[:, 0]
            pieces.append(picked - torch.logsumexp(logits, dim=-1))
        return torch.cat(pieces) if pieces else hidden.new_zeros(0)


def _length_groups(lengths: list[int], max_rows: int) -> list[list[int]]:
    """Indices in passes of similar length, each of at most `max_rows` rows.

    A pass costs about PASS_COST_TOKENS tokens' worth of time however small it is (all the
    weights are read), plus its rows times its longest length. Lengths are few (label token
    counts), so the split by length is chosen exactly over them.
    """
    by_length: dict[int, list[int]] = {}
    for index, length in enumerate(lengths):
        by_length.setdefault(length, []).append(index)
    values = sorted(by_length)
    # best[k]: cheapest cost of the passes for the k shortest lengths; cut[k]: where its last pass starts
    best, cut = [0.0] + [float("inf")] * len(values), [0] * (len(values) + 1)
    for end in range(1, len(values) + 1):
        count = 0
        for begin in range(end - 1, -1, -1):
            count += len(by_length[values[begin]])
            cost = best[begin] + -(-count // max_rows) * PASS_COST_TOKENS + count * values[end - 1]
            if cost < best[end]:
                best[end], cut[end] = cost, begin
    passes, end = [], len(values)
    while end:
        members = [i for value in values[cut[end] : end] for i in by_length[value]]
        passes.extend(members[start : start + max_rows] for start in range(0, len(members), max_rows))
        end = cut[end]
    return passes


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
