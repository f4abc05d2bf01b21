"""Classifying messages with the current adapter (or zero-shot with the base model).

One model stays loaded. `use_adapter` swaps adapters in place under a lock:
a classification in flight finishes with the adapter it started with, the
next one uses the new adapter, and every prediction names the version that
made it. On full-precision weights the serving adapter is merged into them
(no LoRA matmuls per layer), and unmerged before every swap.
"""

from __future__ import annotations

import json
import math
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

from classifier.prompts import PromptSpec
from textprep.text import require_text

from .kinds import ADAPTER, ZERO_SHOT
from .models import ModelError, attend_grouped, is_encoder
from .prompts import MAX_BODY_CHARS, LabelInfo, instruction_like
from .scoring import LabelScorer

ADAPTER_META = "supportbot.json"


@dataclass
class Prediction:
    label: str
    confidence: float
    needs_review: bool
    adapter_version: int | None
    zero_shot: bool
    scores: dict  # per label; one left unfinished counts with its upper bound (serving does not certify)
    alternatives: list  # the next two: [[label, probability], ...]
    certified: bool  # the top label is provably the most likely label (see trainer.scoring)
    latency_ms: float
    model: str = ""  # what answered, as replies name it: "adapter v3", "embeddings", "zero-shot"...
    novel: bool = False  # unlike any labelled message (embeddings' nearest-neighbour check)

    def to_dict(self) -> dict:
        return asdict(self)


def to_probabilities(logprobs: list[float]) -> list[float]:
    top = max(logprobs)
    weights = [math.exp(x - top) for x in logprobs]
    total = sum(weights)
    return [w / total for w in weights]


def prediction_from(names: list[str], logprobs, *, threshold: float, flagged: bool = False, **fields) -> Prediction:
    """The prediction that log-scores `logprobs` (one per name) make: the top label, its probability as the
    confidence, the next two as alternatives, and needs-review below `threshold` or when `flagged`.
    `fields` are the rest of the Prediction (who answered, latency...). Every answering path ends here."""
    probs = to_probabilities(list(logprobs))
    order = sorted(range(len(names)), key=lambda i: -probs[i])
    top = order[0]
    return Prediction(
        label=names[top],
        confidence=probs[top],
        needs_review=probs[top] < threshold or flagged,
        scores={names[i]: probs[i] for i in order},
        alternatives=[[names[i], probs[i]] for i in order[1:3]],
        **fields,
    )


def read_adapter_meta(path: str | Path) -> dict:
    meta_path = Path(path) / ADAPTER_META
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path} is not a supportbot adapter (no {ADAPTER_META})")
    return json.loads(meta_path.read_text(encoding="utf-8"))


def zero_shot_spec(labels: list[LabelInfo], max_body_chars: int = MAX_BODY_CHARS) -> PromptSpec:
    """Without an adapter the model only knows the labels from the prompt: always list them, with descriptions."""
    return PromptSpec(tuple(labels), True, max_body_chars, verbalize=True)


def predict(
    scorer: LabelScorer,
    items: list[tuple[str, str | None]],
    *,
    threshold: float,
    adapter_version: int | None,
    zero_shot: bool,
    batch_size: int = 16,
) -> list[Prediction]:
    """Score items with `scorer` and turn the scores into predictions."""
    started = time.perf_counter()
    scored = scorer.score(items, batch_size=batch_size)
    per_item_ms = (time.perf_counter() - started) * 1000 / max(1, len(items))
    names = scorer.spec.names
    predictions = []
    for (text, subject), result in zip(items, scored):
        # Zero-shot, the model knows the labels only from the prompt, and a message that addresses the
        # model can talk it into one (3 of 3 crafted emails answered `feedback` at 75-81%): a person looks.
        steered = zero_shot and instruction_like(text, subject)
        predictions.append(
            prediction_from(
                names,
                result.logprobs,
                threshold=threshold,
                flagged=steered,
                adapter_version=adapter_version,
                zero_shot=zero_shot,
                certified=result.certified,
                latency_ms=per_item_ms,
                model=ZERO_SHOT.served_name() if zero_shot else ADAPTER.served_name(adapter_version),
            )
        )
    return predictions


@dataclass
class _State:
    version: int | None
    adapter_name: str | None
    scorer: LabelScorer  # or a trainer.head.HeadScorer (same interface)
    method: str = "scoring"

    @property
    def zero_shot(self) -> bool:
        return self.adapter_name is None


class Classifier:
    """The serving classifier: thread-safe, one model, hot-swappable adapters."""

    def __init__(
        self,
        model,
        tokenizer,
        labels: list[LabelInfo],
        *,
        threshold: float = 0.5,
        batch_size: int = 16,
        merge: bool = True,
    ):
        self.tokenizer = tokenizer
        self.merge = merge  # fold the serving adapter into full-precision weights (see _merge)
        self.threshold = threshold
        self.batch_size = batch_size
        self._model = model
        self.encoder = is_encoder(model.config)  # a sentence encoder: head adapters only, no zero-shot
        if not self.encoder:
            attend_grouped(model)  # on CPU: attention without a copy of the cache per query head
        self._lock = threading.Lock()  # the model: one batch at a time, adapter swaps between batches
        self._waiting_lock = threading.Lock()
        self._waiting: list[_Request] = []  # classify() calls not yet taken into a batch
        self._state = _State(None, None, self._zero_shot_scorer(labels))

    def _zero_shot_scorer(self, labels: list[LabelInfo]):
        if self.encoder:
            return NoZeroShot(zero_shot_spec(labels))
        return LabelScorer(self._model, self.tokenizer, zero_shot_spec(labels))

    @classmethod
    def load(cls, base_model_path: str, labels: list[LabelInfo], **kwargs) -> "Classifier":
        from .models import load_base_model, load_tokenizer

        model = load_base_model(base_model_path)
        model.eval()
        return cls(model, load_tokenizer(base_model_path), labels, **kwargs)

    @property
    def adapter_version(self) -> int | None:
        return self._state.version

    @property
    def labels(self) -> list[str]:
        return self._state.scorer.spec.names

    @property
    def trained_labels(self) -> list[str] | None:
        """The labels the serving adapter was trained on (None zero-shot). A head adapter predicts only
        these: a label added after its training gets no score until the next retrain."""
        return None if self._state.zero_shot else list(self._state.scorer.spec.names)

    @property
    def method(self) -> str:
        """`zero-shot`, or how the serving adapter classifies: `head` or `scoring` (trainer.adapters)."""
        return ZERO_SHOT.name if self._state.zero_shot else self._state.method

    def use_adapter(self, path: str | Path, version: int) -> None:
        """Serve the adapter at `path` from the next classification on (waits for one in flight)."""
        from peft import PeftModel

        from .adapters import adapter_method, make_scorer

        meta = read_adapter_meta(path)
        name = f"v{version}"
        with self._lock:
            self._unmerge()
            old = self._state.adapter_name
            if not isinstance(self._model, PeftModel):
                self._model = PeftModel.from_pretrained(self._model, str(path), adapter_name=name)
            else:
                if name in self._model.peft_config:
                    self._model.delete_adapter(name)  # reloading a version: take the files as they are now
                    old = None if old == name else old
                self._model.load_adapter(str(path), adapter_name=name)
                self._model.set_adapter(name)
            self._model.eval()
            if old and old != name and old in self._model.peft_config:
                self._model.delete_adapter(old)
            self._merge()
            self._state = _State(
                version, name, make_scorer(self._model, self.tokenizer, meta, path), adapter_method(meta)
            )

    def use_zero_shot(self, labels: list[LabelInfo]) -> None:
        """Serve the base model alone, prompted with the label descriptions (before any adapter exists)."""
        with self._lock:
            self._unmerge()
            self._state = _State(None, None, self._zero_shot_scorer(labels))

    @property
    def merged(self) -> bool:
        """Whether the serving adapter is folded into the base weights."""
        return any(getattr(module, "merged", False) for module in self._model.modules())

    def _merge(self) -> None:
        """Fold the adapter into the base weights: serving then skips the LoRA matmuls of every layer.

        Classification took about 10% less time merged (bench/README.md). Only on full-precision
        weights: merging into 4-bit weights would round the adapter away. `_unmerge` undoes it
        before every change of adapter.
        """
        if self.merge and all(p.dtype.is_floating_point for p in self._model.parameters()):
            self._model.merge_adapter()

    def _unmerge(self) -> None:
        if self.merged:
            self._model.unmerge_adapter()

    def classify(self, text: str | bytes, subject: str | None = None) -> Prediction:
        """One message. Calls made while the model is busy are classified together, in one batch.

        Whichever waiting call gets the model first takes every call waiting then, so a burst of
        emails (the bot answers each in its own job) is worked off at batched speed, and one
        message alone is not delayed. If a batch fails, its messages are retried one by one, so
        one bad message cannot fail the others.
        """
        request = _Request((require_text(text), subject))
        with self._waiting_lock:
            self._waiting.append(request)
        with self._lock:
            while not request.done:  # earlier callers' batches first, oldest first
                with self._waiting_lock:
                    batch, self._waiting = self._waiting[: self.batch_size], self._waiting[self.batch_size :]
                self._answer(batch)
        if request.error is not None:
            raise request.error
        return request.result

    def _answer(self, batch: list["_Request"]) -> None:
        """Classify waiting requests (holding the model lock); each gets its result or its error."""
        try:
            for request, result in zip(batch, self._classify_locked([r.item for r in batch])):
                request.result = result
        except Exception as exc:
            if len(batch) == 1:
                batch[0].error = exc
            else:
                for request in batch:
                    self._answer([request])
        finally:
            for request in batch:  # never leave a waiting caller without an answer
                if request.result is None and request.error is None:
                    request.error = RuntimeError("the classification was interrupted")
                request.done = True

    def classify_many(self, items: list) -> list[Prediction]:
        """Classify texts or (text, subject) pairs, batched. Empty texts raise EmptyText before any work."""
        pairs = [(item, None) if isinstance(item, (str, bytes)) else item for item in items]
        cleaned = [(require_text(text), subject) for text, subject in pairs]
        with self._lock:
            return self._classify_locked(cleaned)

    def _classify_locked(self, cleaned: list[tuple[str, str | None]]) -> list[Prediction]:
        state = self._state
        # Zero-shot after an adapter was loaded: run the base weights alone.
        peft_loaded = hasattr(self._model, "peft_config")
        context = self._model.disable_adapter() if state.zero_shot and peft_loaded else nullcontext()
        with context:
            return predict(
                state.scorer,
                cleaned,
                threshold=self.threshold,
                adapter_version=state.version,
                zero_shot=state.zero_shot,
                batch_size=self.batch_size,
            )


class NoZeroShot:
    """The zero-shot state of a sentence encoder: it has no language-model head to read label descriptions with."""

    def __init__(self, spec: PromptSpec):
        self.spec = spec

    def score(self, items, batch_size: int = 16):
        raise ModelError(
            "this base model is a sentence encoder: it classifies with a trained adapter only "
            "(zero-shot answers need a causal LM)"
        )


class _Request:
    """A `Classifier.classify` call waiting for the model."""

    __slots__ = ("item", "done", "result", "error")

    def __init__(self, item: tuple[str, str | None]):
        self.item, self.done, self.result, self.error = item, False, None, None
